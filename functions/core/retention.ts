import { isGood, isRestorePoint } from './metrics.ts';

/**
 * Retention: which backups of the catalog to delete, as a pure function of the catalog, the schedules'
 * retention and the clock (so that it can be shown as a dry run and tested on random histories).
 *
 * Kept, whatever their age:
 * - backups still RUNNING;
 * - per schedule and per target, the newest good backup that target holds (SUCCESS or PARTIAL, written to
 *   that target, not flagged for review): a PARTIAL run counts only on the targets it reached, so the last
 *   copy on a target that later runs missed is kept. For a schedule of data backups that is its newest
 *   restore point there; a SCHEMA backup (structure only) never stands in for one;
 * - the newest restore point (not SCHEMA) that passed a verification or restore test;
 * - every backup within its schedule's retention (`retentionDays`, at most the config's);
 * - and, for every kept backup, the chain it builds on (its parent, the parent's parent, … to the FULL).
 * Everything else — older than its retention and needed by nothing kept — is deleted.
 */
export interface RetentionBackup {
  readonly id: string;
  readonly scheduleId: string;
  readonly type: 'FULL' | 'INCREMENTAL' | 'SCHEMA';
  readonly status: 'RUNNING' | 'SUCCESS' | 'PARTIAL' | 'FAILED';
  readonly startedAt: string;
  readonly parent?: string;
  readonly review?: string;
  readonly verifiedAt?: string;
  /** Where it was written; a target counts as holding it when its status there is SUCCESS. */
  readonly targets?: readonly { readonly targetId: string; readonly status: string }[];
}

export interface RetentionPolicy {
  /** Days to keep each schedule's backups (schedules deleted since: `defaultDays`). */
  readonly retentionDays: Readonly<Record<string, number>>;
  /** The config's backupRetentionDays: the ceiling, and the default for unknown schedules. */
  readonly defaultDays: number;
}

export type KeepReason =
  | 'running'
  | 'within retention'
  | 'newest restore point'
  | 'newest structure backup'
  | 'newest verified'
  | 'needed by a kept backup';

/** The targets that hold a backup (no target list: one unnamed target, as in catalogs of one target). */
export function holders(backup: RetentionBackup): string[] {
  if (backup.targets === undefined) return [''];
  return backup.targets.filter((target) => target.status === 'SUCCESS').map((target) => target.targetId);
}

export interface RetentionPlan {
  readonly keep: readonly { readonly id: string; readonly reason: KeepReason }[];
  readonly delete: readonly { readonly id: string; readonly scheduleId: string; readonly ageDays: number }[];
}

const DAY_MS = 24 * 60 * 60 * 1000;

export function planRetention(
  backups: readonly RetentionBackup[],
  policy: RetentionPolicy,
  now: Date,
): RetentionPlan {
  const byId = new Map(backups.map((backup) => [backup.id, backup]));
  const reasons = new Map<string, KeepReason>();
  const keep = (id: string, reason: KeepReason) => {
    if (!reasons.has(id)) reasons.set(id, reason);
  };
  const ageDays = (backup: RetentionBackup) => (now.getTime() - Date.parse(backup.startedAt)) / DAY_MS;
  const days = (scheduleId: string) =>
    Math.min(policy.retentionDays[scheduleId] ?? policy.defaultDays, policy.defaultDays);

  // Newest first: ids sort by start time.
  const newestFirst = [...backups].sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  const seen = new Set<string>();
  let verifiedKept = false;
  for (const backup of newestFirst) {
    if (backup.status === 'RUNNING') keep(backup.id, 'running');
    if (isGood(backup))
      for (const target of holders(backup)) {
        const slot = JSON.stringify([backup.scheduleId, target, backup.type === 'SCHEMA']);
        if (seen.has(slot)) continue;
        seen.add(slot);
        keep(backup.id, backup.type === 'SCHEMA' ? 'newest structure backup' : 'newest restore point');
      }
    if (!verifiedKept && backup.verifiedAt !== undefined && isRestorePoint(backup)) {
      verifiedKept = true;
      keep(backup.id, 'newest verified');
    }
    if (ageDays(backup) <= days(backup.scheduleId)) keep(backup.id, 'within retention');
  }
  // The chains the kept backups build on.
  for (const id of [...reasons.keys()]) {
    let parent = byId.get(id)?.parent;
    while (parent !== undefined && byId.has(parent)) {
      keep(parent, 'needed by a kept backup');
      parent = byId.get(parent)!.parent;
    }
  }
  return {
    keep: newestFirst.filter((b) => reasons.has(b.id)).map((b) => ({ id: b.id, reason: reasons.get(b.id)! })),
    delete: newestFirst
      .filter((b) => !reasons.has(b.id))
      .map((b) => ({ id: b.id, scheduleId: b.scheduleId, ageDays: Math.floor(ageDays(b) * 10) / 10 })),
  };
}
