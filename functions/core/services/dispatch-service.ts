import type { ControlPlane } from '../context.ts';
import { firingsBetween } from '../cron.ts';
import { ConflictError } from '../errors.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import { reapStaleRuns, startRun } from './backup-service.ts';
import type { StoredSchedule } from '../records.ts';
import type { RunLauncher } from '../ports.ts';

/**
 * The dispatcher: what makes schedules fire. On AWS one EventBridge rule invokes it every minute; the local
 * runtime calls it on a timer; both run this function, with the same guarantees:
 *
 * - each schedule keeps a cursor (the last time it was evaluated up to); every firing of its cron expression
 *   between the cursor and now is due;
 * - a firing is claimed by a conditional write (`FIRING`/<schedule>#<time>) before its run starts, so the same
 *   firing delivered twice (EventBridge delivers at least once; two dispatchers may overlap) starts one run;
 * - firings more than `graceMs` late (the system was down) are recorded as MISSED, for the RPO logic; the
 *   newest of them still runs, late, so that protection resumes at once;
 * - a firing that finds the schedule's previous run still going is recorded as SKIPPED (runs never overlap);
 * - a paused schedule (`active: false`) accrues nothing: its cursor moves with the clock.
 */
export const DISPATCH_GRACE_MS = 5 * 60_000;

export type FiringStatus = 'STARTED' | 'MISSED' | 'SKIPPED' | 'FAILED';

export interface FiringRecord {
  readonly scheduleId: string;
  readonly firingTime: string;
  readonly status: FiringStatus;
  readonly recordedAt: string;
  readonly backupId?: string;
  readonly reason?: string;
}

interface Cursor {
  readonly scheduleId: string;
  readonly evaluatedUntil: string;
}

export interface DispatchResult {
  readonly started: { scheduleId: string; firingTime: string; backupId: string }[];
  readonly missed: { scheduleId: string; firingTime: string }[];
  readonly skipped: { scheduleId: string; firingTime: string; reason: string }[];
  readonly reaped: string[];
}

export async function dispatch(
  cp: ControlPlane,
  launcher: RunLauncher | undefined,
  options: { graceMs?: number } = {},
): Promise<DispatchResult> {
  const now = cp.now();
  const grace = options.graceMs ?? DISPATCH_GRACE_MS;
  const result: DispatchResult = { started: [], missed: [], skipped: [], reaped: await reapStaleRuns(cp) };
  const schedules = await cp.table.queryAll<StoredItem<StoredSchedule>>(Partition.schedule);
  for (const item of schedules) {
    const schedule = item.data;
    const cursor = await cp.table.get<Cursor>(Partition.cursor, schedule.id);
    // A new schedule is evaluated from its creation; a resumed one from when it was last seen active.
    const from = new Date(cursor?.data.evaluatedUntil ?? item.createdAt);
    if (schedule.active && from < now) {
      const due = firingsBetween(schedule.cronExpression, schedule.timezone, from, now);
      for (const [index, firing] of due.entries()) {
        const late = now.getTime() - firing.getTime() > grace;
        const newest = index === due.length - 1;
        if (late && !newest) {
          if (
            await record(cp, { scheduleId: schedule.id, firingTime: firing.toISOString(), status: 'MISSED' })
          )
            result.missed.push({ scheduleId: schedule.id, firingTime: firing.toISOString() });
          continue;
        }
        if (late) result.missed.push({ scheduleId: schedule.id, firingTime: firing.toISOString() });
        await fire(cp, launcher, schedule, firing, late, result);
      }
    }
    await advance(cp, cursor, schedule.id, now);
  }
  return result;
}

async function fire(
  cp: ControlPlane,
  launcher: RunLauncher | undefined,
  schedule: StoredSchedule,
  firing: Date,
  late: boolean,
  result: DispatchResult,
): Promise<void> {
  const firingTime = firing.toISOString();
  const claim = { scheduleId: schedule.id, firingTime, status: 'STARTED' as const };
  if (!(await record(cp, claim))) return; // delivered before: that delivery started (or recorded) it
  try {
    const backup = await startRun(cp, launcher, {
      scheduleId: schedule.id,
      trigger: { kind: 'schedule', firingTime, ...(late ? { late: true } : {}) },
    });
    await update(cp, schedule.id, firingTime, {
      backupId: backup.id,
      ...(late ? { status: 'MISSED', reason: 'fired late (the dispatcher was not running); run now' } : {}),
    });
    result.started.push({ scheduleId: schedule.id, firingTime, backupId: backup.id });
  } catch (error) {
    const reason = (error as Error).message;
    const status: FiringStatus = error instanceof ConflictError ? 'SKIPPED' : 'FAILED';
    await update(cp, schedule.id, firingTime, { status, reason });
    result.skipped.push({ scheduleId: schedule.id, firingTime, reason });
    cp.logger.warn('scheduled run not started', { schedule: schedule.id, firingTime, reason });
  }
}

/** Creates a firing record unless one exists; true when this call created it (the claim). */
async function record(cp: ControlPlane, firing: Omit<FiringRecord, 'recordedAt'>): Promise<boolean> {
  const at = cp.now().toISOString();
  return cp.table.putIfAbsent({
    pk: Partition.firing,
    sk: `${firing.scheduleId}#${firing.firingTime}`,
    version: 1,
    createdAt: at,
    updatedAt: at,
    data: { ...firing, recordedAt: at },
  });
}

async function update(
  cp: ControlPlane,
  scheduleId: string,
  firingTime: string,
  changes: Partial<FiringRecord>,
): Promise<void> {
  const current = await cp.table.get<FiringRecord>(Partition.firing, `${scheduleId}#${firingTime}`);
  if (current) await cp.table.replace(current, { ...current.data, ...changes }, cp.now());
}

async function advance(
  cp: ControlPlane,
  cursor: StoredItem<Cursor> | undefined,
  scheduleId: string,
  now: Date,
): Promise<void> {
  const data: Cursor = { scheduleId, evaluatedUntil: now.toISOString() };
  try {
    if (cursor) {
      if (cursor.data.evaluatedUntil < data.evaluatedUntil) await cp.table.replace(cursor, data, now);
    } else await cp.table.create(Partition.cursor, scheduleId, data, now, 'cursor exists');
  } catch (error) {
    // Another dispatcher moved it meanwhile: its view is as good as ours.
    if (!(error instanceof ConflictError)) throw error;
  }
}

/** A schedule's recorded firings, newest first (GET /api/dr/schedules/{id}/firings). */
export async function listFirings(cp: ControlPlane, scheduleId: string, limit = 50): Promise<FiringRecord[]> {
  const page = await cp.table.query<StoredItem<FiringRecord>>(Partition.firing, {
    descending: true,
    limit,
    prefix: `${scheduleId}#`,
  });
  return page.items.map((item) => item.data);
}
