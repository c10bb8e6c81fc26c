import { pathProblem } from '../paths.ts';
import type { Actor } from '../audit.ts';
import type { ControlPlane } from '../context.ts';
import { ForbiddenError, NotFoundError, ServiceUnavailableError, ValidationError } from '../errors.ts';
import type { RestoreInput } from '../schemas.ts';
import { Partition } from '../store/table.ts';
import { getBackup, isGood, newBackupId } from './backup-service.ts';
import { environmentConnection, environmentDatabaseName, findConfig } from './config-service.ts';
import { newestFirst, runnerOf, startRunWorkflow, updateItem } from './common.ts';
import { atLeast } from '../authz.ts';
import type { HookRun, RunProgress, StepRecord } from '../records.ts';

export type RestoreStatus = 'RUNNING' | 'PLANNED' | 'SUCCEEDED' | 'FAILED';

/** What a restore will do (the dry run's answer, and the first step of every restore). */
export interface RestorePlan {
  /** `backup`: from our repository; `rds`: the service's point-in-time restore to a new instance. */
  readonly method: 'backup' | 'rds';
  /** For `rds`: what is restored, to what, when. */
  readonly rds?: {
    readonly region?: string;
    readonly sourceInstance?: string;
    readonly sourceCluster?: string;
    readonly target: string;
    readonly restoreTime: string;
    readonly latestRestorableTime?: string;
  };
  readonly backupId?: string;
  readonly type?: string;
  readonly restorePoint: string;
  /** Asked time minus the restore point, when restoring to a point in time. */
  readonly gapSeconds?: number;
  /** Change-stream backups: the changes committed at or before this instant are applied. */
  readonly until?: string;
  /** The backups the restored one builds on (it restores on its own; shown for information). */
  readonly chain: readonly string[];
  /** Bytes read from the source when the backup was taken: about what the restore writes. */
  readonly bytes: number;
  readonly database: boolean;
  readonly files: boolean;
  readonly destination: {
    readonly environment: string;
    readonly database?: string;
    readonly filesTo?: string;
  };
}

export interface RestoreRecord {
  readonly id: string;
  readonly status: RestoreStatus;
  readonly request: RestoreInput;
  readonly actor: string;
  readonly startedAt: string;
  readonly finishedAt?: string;
  readonly executionArn?: string;
  readonly plan?: RestorePlan;
  readonly result?: {
    readonly database?: {
      readonly tables: number;
      readonly rows: number;
      readonly bytes: number;
      readonly consistent: boolean;
      /** Change-stream backups: the transactions applied on the FULL, and the last commit applied. */
      readonly changes?: {
        readonly transactions: number;
        readonly changes: number;
        readonly lastCommit?: { readonly lsn: string; readonly time: string; readonly xid: number };
      };
    };
    readonly files?: { readonly files: number; readonly bytes: number };
    /** The instance (or cluster) an RDS point-in-time restore created, and where it answers. */
    readonly rds?: { readonly identifier: string; readonly cluster?: boolean; readonly endpoint?: string };
    readonly seconds?: number;
  };
  readonly error?: string;
  /** While it runs: bytes restored, rate, time left. */
  readonly progress?: RunProgress;
  /** Its workflow's steps as they ran. */
  readonly steps?: readonly StepRecord[];
  /** The application hooks it ran around the database work. */
  readonly hooks?: HookRun;
  /** What went wrong without failing the restore (a start hook that failed: the application may be down). */
  readonly issues?: readonly string[];
}

/**
 * POST /api/dr/restore: checks what can be checked at once (the backup exists and can be restored, the
 * destination is configured), records the restore and starts its workflow. 202 with the id and execution.
 */
/**
 * A restore into PRODUCTION, or over existing data, takes an admin and a `confirm` field naming what it writes
 * into (the database; the directory for files alone). A dry run touches nothing and needs neither; an RDS
 * point-in-time restore makes a new instance and overwrites nothing. Every refusal is audited.
 */
async function checkDestructive(
  cp: ControlPlane,
  input: RestoreInput,
  actor: Actor,
  viaRds: boolean,
): Promise<void> {
  const production = input.destination.environment === 'PRODUCTION';
  if (input.dryRun || viaRds || (!production && !input.overwrite)) return;
  const what = production ? 'a restore into PRODUCTION' : 'a restore with overwrite';
  const refuse = async (error: Error) => {
    await cp.audit.append(actor, {
      action: 'restore.refused',
      resource: `restore/${input.destination.environment}`,
      details: { reason: error.message, overwrite: input.overwrite, role: actor.role ?? 'none' },
    });
    throw error;
  };
  if (!atLeast(actor.role ?? 'viewer', 'admin'))
    await refuse(
      new ForbiddenError(`${what} needs the admin role; this caller is a ${actor.role ?? 'viewer'}`),
    );
  const named = input.scope.database
    ? (input.destination.database ?? (await environmentDatabaseName(cp, input.destination.environment)))
    : input.destination.filesTo;
  if (named === undefined || input.confirm !== named)
    await refuse(
      ValidationError.forField(
        'confirm',
        named === undefined
          ? `${what} must name its destination: give destination.database`
          : `${what} writes into ${JSON.stringify(named)} on ${input.destination.environment}: give confirm: ${JSON.stringify(named)} to go ahead`,
      ),
    );
}

export async function startRestore(
  cp: ControlPlane,
  input: RestoreInput,
  actor: Actor,
): Promise<RestoreRecord> {
  if (!cp.workflows) throw new ServiceUnavailableError('restores are not deployed here (no workflows)');
  const rdsSource = (await findConfig(cp))?.source?.rds;
  if (input.method === 'rds' && (input.pointInTime === undefined || !rdsSource))
    throw ValidationError.forField(
      'method',
      input.pointInTime === undefined
        ? 'rds restores a point in time: give pointInTime'
        : 'rds needs source.rds (instanceIdentifier or clusterIdentifier) in the DR config',
    );
  const viaRds = input.pointInTime !== undefined && input.method !== 'backup' && rdsSource !== undefined;
  if (input.destination.filesTo !== undefined) {
    const problem = await pathProblem(input.destination.filesTo, cp.paths);
    if (problem !== undefined) throw ValidationError.forField('destination.filesTo', problem);
  }
  if (input.backupId !== undefined) {
    const backup = await getBackup(cp, input.backupId);
    if (!isGood(backup))
      throw ValidationError.forField(
        'backupId',
        `backup ${input.backupId} is ${backup.status}${backup.review ? ' and flagged for review' : ''}: it cannot be restored`,
      );
  }
  if (input.pointInTime !== undefined && Date.parse(input.pointInTime) > cp.now().getTime())
    throw ValidationError.forField('pointInTime', 'is in the future');
  const wantsDatabase = input.scope.database && !input.dryRun && !viaRds;
  if (wantsDatabase && !(await environmentConnection(cp, input.destination.environment)))
    throw ValidationError.forField(
      'destination.environment',
      input.destination.environment === 'STAGING'
        ? 'has no database: set environments.STAGING.database in the DR config (POST /api/dr/config)'
        : 'has no database: set source.database in the DR config',
    );
  if (!input.scope.database && !input.scope.files)
    throw ValidationError.forField('scope', 'restores neither the database nor the files');
  if (
    input.scope.files &&
    input.destination.filesTo === undefined &&
    !input.dryRun &&
    (await findConfig(cp))?.source?.files
  )
    throw ValidationError.forField(
      'destination.filesTo',
      'is required to restore files (or set scope.files to false)',
    );

  await checkDestructive(cp, input, actor, viaRds);

  const now = cp.now();
  const id = newBackupId(now);
  const record: RestoreRecord = {
    id,
    status: 'RUNNING',
    request: input,
    actor: actor.principal,
    startedAt: now.toISOString(),
  };
  const item = await cp.table.create(Partition.restore, id, record, now, `restore ${id} exists`);
  await cp.audit.append(actor, {
    action: 'restore.start',
    resource: `restore/${id}`,
    details: {
      ...(input.backupId ? { backupId: input.backupId } : { pointInTime: input.pointInTime ?? '' }),
      environment: input.destination.environment,
      dryRun: input.dryRun,
      overwrite: input.overwrite,
    },
  });
  return startRunWorkflow(
    cp,
    item,
    'restore',
    { restoreId: id, runner: runnerOf(cp), request: input },
    (reason) => ({
      ...record,
      status: 'FAILED',
      error: reason,
      finishedAt: cp.now().toISOString(),
    }),
  );
}

export async function getRestore(cp: ControlPlane, id: string): Promise<RestoreRecord> {
  const item = await cp.table.get<RestoreRecord>(Partition.restore, id);
  if (!item) throw new NotFoundError(`restore ${id} not found`);
  return item.data;
}

/** GET /api/dr/restore: restores, newest first (`status` to filter), paged. */
export async function listRestores(
  cp: ControlPlane,
  filter: { limit?: number; nextToken?: string | undefined; status?: RestoreStatus | undefined },
): Promise<{ items: RestoreRecord[]; nextToken?: string }> {
  const after = filter.nextToken === undefined ? undefined : await cp.table.openToken(filter.nextToken);
  const { items, last } = await newestFirst<RestoreRecord>(
    cp,
    Partition.restore,
    (record) => filter.status === undefined || record.status === filter.status,
    filter.limit ?? 50,
    after,
  );
  return last === undefined ? { items } : { items, nextToken: await cp.table.sealToken(last) };
}

/** Changes a restore's entry (the workflow's steps), re-reading on a concurrent change. */
export async function updateRestore(
  cp: ControlPlane,
  id: string,
  change: (record: RestoreRecord) => RestoreRecord,
): Promise<RestoreRecord> {
  return updateItem<RestoreRecord>(cp, Partition.restore, id, `restore ${id}`, change);
}
