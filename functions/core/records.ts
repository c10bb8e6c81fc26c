import type { ScheduleInput } from './schemas.ts';

/**
 * The records the control plane keeps (schedules, the backup catalog) and the conditions alerts are about:
 * shapes only. Services read and write them; the worker, the workflows and the API pass them around.
 */
export interface StoredSchedule {
  readonly id: string;
  readonly name: string;
  readonly scheduleType: ScheduleInput['scheduleType'];
  readonly frequency?: ScheduleInput['frequency'];
  readonly cronExpression: string;
  readonly timezone: string;
  readonly active: boolean;
  readonly retentionDays: number;
  readonly targets: readonly string[];
  /** Absent on schedules saved before change-stream mode existed: `auto`. */
  readonly mode?: ScheduleInput['mode'];
  /** Tables read at once (absent: the worker's cores, at most 8). */
  readonly jobs?: number;
  /** Workers a FULL's tables are fanned out to (absent: 1). */
  readonly workers?: number;
}

export type BackupStatus = 'RUNNING' | 'SUCCESS' | 'PARTIAL' | 'FAILED';
export type TargetRunStatus = 'RUNNING' | 'SUCCESS' | 'FAILED';

export interface TargetResult {
  readonly targetId: string;
  readonly name: string;
  readonly targetType: string;
  readonly status: TargetRunStatus;
  readonly bytesWritten?: number;
  readonly finishedAt?: string;
  readonly error?: { readonly kind: string; readonly message: string };
}

export interface BackupRecord {
  readonly id: string;
  readonly scheduleId: string;
  readonly scheduleName: string;
  /** The type asked for; `type` is what was taken (an INCREMENTAL with no usable parent becomes a FULL). */
  readonly requestedType: StoredSchedule['scheduleType'];
  readonly type: StoredSchedule['scheduleType'];
  readonly status: BackupStatus;
  readonly trigger: {
    readonly kind: 'manual' | 'schedule';
    readonly firingTime?: string;
    readonly actor?: string;
  };
  readonly startedAt: string;
  readonly heartbeatAt: string;
  readonly finishedAt?: string;
  readonly targets: readonly TargetResult[];
  readonly parent?: string;
  /** The point in time the backup restores to (the database snapshot). */
  readonly restorePoint?: string;
  readonly database?: { readonly name: string; readonly serverVersion: string; readonly tables: number };
  readonly files?: { readonly entries: number };
  /** Change-stream mode: the FULL the stream starts from, and (INCREMENTAL) the changes this backup holds. */
  readonly changes?: {
    readonly base: string;
    readonly endLsn: string;
    readonly transactions: number;
    readonly changes: number;
    readonly lastCommit?: { readonly lsn: string; readonly time: string; readonly xid: number };
  };
  /** Set when a schema change made this backup a FULL instead of an INCREMENTAL: what changed. */
  readonly schemaChanged?: string;
  /** Set when the run asked for the change stream and the source cannot do it (it deduplicated a dump): why. */
  readonly streamUnavailable?: string;
  readonly sizes?: {
    /** Bytes read from the source. */
    readonly sourceBytes: number;
    /** Bytes the backup restores (database dump and changes, files), however little it read to make them. */
    readonly protectedBytes?: number;
    /** Bytes this backup added to the repository (after deduplication, compression and encryption). */
    readonly storedBytes: number;
    /** Bytes of the chunks this backup added, before compression and encryption (after deduplication). */
    readonly newBytes?: number;
    readonly chunks: number;
    readonly newChunks: number;
    /** sourceBytes / storedBytes (higher is better), when anything was stored. */
    readonly dedupRatio?: number;
  };
  readonly progress?: RunProgress;
  /** Why this backup is not used as a restore point or parent until someone looks at it. */
  readonly review?: string;
  /** A flag an operator confirmed (POST /api/dr/backups/{id}/confirm): what it was, when, by whom. */
  readonly reviewConfirmed?: { readonly reason: string; readonly at: string; readonly by: string };
  readonly notice?: string;
  readonly error?: string;
  /** Verification and restore tests that passed (retention keeps the newest such backup). */
  readonly verifiedAt?: string;
}

/** A running backup's, restore's or test's progress (core/progress.ts makes it). */
export interface RunProgress {
  readonly phase: string;
  readonly item?: string;
  /** Bytes read (a backup: from the source; a restore: from the repository) so far. */
  readonly bytes: number;
  /** What `bytes` will be when done: known (a restore) or estimated from the last such backup. */
  readonly totalBytes?: number;
  readonly estimated?: boolean;
  readonly percent?: number;
  /** Since the run started. */
  readonly bytesPerSecond: number;
  /** At that rate, for what is left of `totalBytes`. */
  readonly etaSeconds?: number;
  readonly updatedAt: string;
}

/** A workflow step of a restore or a DR test, as its execution ran it. */
export interface StepRecord {
  readonly task: string;
  readonly status: 'RUNNING' | 'SUCCEEDED' | 'FAILED';
  readonly startedAt: string;
  readonly finishedAt?: string;
  readonly seconds?: number;
  readonly error?: string;
}

/** One application hook called by a workflow (hooks.ts). */
export interface HookOutcome {
  readonly name: string;
  readonly type: string;
  readonly event: 'stop' | 'start' | 'switch';
  readonly ok: boolean;
  readonly seconds: number;
  readonly attempts?: number;
  readonly error?: string;
  /** ECS: the service's desired count before `stop` (what `start` scales back to). */
  readonly previousCount?: number;
}

/** The application hooks a restore, failover or DR test ran around the database work. */
export interface HookRun {
  readonly environment: 'PRODUCTION' | 'STAGING';
  readonly stop: readonly HookOutcome[];
  /** Present once the start hooks ran (every path, once a stop hook ran). */
  readonly start?: readonly HookOutcome[];
}

export interface Condition {
  /** The episode's identity: `backup-failed:<schedule>`, `rpo`, `rto:<test>`, `test-overdue:<type>`. */
  readonly key: string;
  readonly active: boolean;
  /** Events have no end (and no recovery email). */
  readonly event?: boolean;
  readonly subject: string;
  readonly lines: readonly string[];
  readonly recoverySubject?: string;
  readonly recoveryLines?: readonly string[];
}
