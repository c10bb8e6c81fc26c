import {
  changeStreamFor,
  changeStreamReadiness,
  dropSlot,
  lsnValue,
  slotStatus,
  type ChangeStream,
  type Readiness,
  type SlotStatus,
} from '../../engine/changes.ts';
import { databaseName, type DatabaseConnection } from '../../engine/postgres.ts';
import type { ControlPlane } from '../context.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import type { Condition } from './alert-service.ts';
import { findConfig, sourceForRun } from './config-service.ts';
import type { StoredSchedule } from './schedule-service.ts';

/**
 * The deployment's change stream on the source database: which runs use it, what the database allows, and
 * the watch over the slot (retained WAL, stalled consumption, slots left behind by deleted schedules).
 */

/** Retained WAL that raises an alert when the server sets no max_slot_wal_keep_size. */
export const RETAINED_WAL_ALERT_BYTES = 4 * 1024 ** 3;
/** With max_slot_wal_keep_size: alert when less than this fraction of it is left. */
export const SAFE_WAL_ALERT_FRACTION = 0.25;
const REPORT_TIMEOUT_MS = 10_000;

export function modeOf(schedule: Pick<StoredSchedule, 'mode'>): 'auto' | 'change-stream' | 'dump' {
  return schedule.mode ?? 'auto';
}

/** The INCREMENTAL schedules that read the change stream. */
async function streamSchedules(cp: ControlPlane, except?: string): Promise<StoredSchedule[]> {
  const items = await cp.table.queryAll<StoredItem<StoredSchedule>>(Partition.schedule);
  return items
    .map((item) => item.data)
    .filter(
      (schedule) =>
        schedule.id !== except && schedule.scheduleType === 'INCREMENTAL' && modeOf(schedule) !== 'dump',
    );
}

/**
 * Whether a run uses the change stream: its schedule is not in dump mode, and either it is an INCREMENTAL or
 * an INCREMENTAL schedule will read the stream its FULL starts (a FULL alone starts no slot).
 */
export async function streamForRun(
  cp: ControlPlane,
  schedule: StoredSchedule,
  type: string,
  database: DatabaseConnection,
): Promise<ChangeStream | undefined> {
  if (modeOf(schedule) === 'dump' || type === 'SCHEMA') return undefined;
  if (type !== 'INCREMENTAL' && (await streamSchedules(cp)).length === 0) return undefined;
  return changeStreamFor(databaseName(database));
}

export interface ChangeStreamReport {
  readonly slot: string;
  readonly readiness?: Readiness;
  readonly status?: SlotStatus;
  readonly error?: string;
}

/** What the source database allows, and where the slot stands (GET /api/dr/change-stream; schedule saves). */
export async function changeStreamReport(cp: ControlPlane): Promise<ChangeStreamReport | undefined> {
  const database = (await sourceForRun(cp))?.database;
  if (!database) return undefined;
  const { slot } = changeStreamFor(databaseName(database));
  try {
    const [readiness, status] = await withTimeout(
      Promise.all([changeStreamReadiness(database), slotStatus(database, slot)]),
      REPORT_TIMEOUT_MS,
    );
    return { slot, readiness, ...(status ? { status } : {}) };
  } catch (error) {
    return { slot, error: (error as Error).message };
  }
}

async function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the source database did not answer within ${ms / 1000} s`)),
      ms,
    );
  });
  work.catch(() => undefined);
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * After a schedule is deleted: when no INCREMENTAL schedule reads the stream any more, its slot is dropped
 * (a slot nobody reads keeps WAL on the source forever). A slot that cannot be dropped now is remembered and
 * retried by the watch, which alerts while it exists.
 */
export async function dropUnusedSlot(cp: ControlPlane, deleted: StoredSchedule): Promise<string | undefined> {
  if (deleted.scheduleType !== 'INCREMENTAL' || modeOf(deleted) === 'dump') return undefined;
  if ((await streamSchedules(cp, deleted.id)).length > 0) return undefined;
  const database = (await sourceForRun(cp))?.database;
  if (!database) return undefined;
  const stream = changeStreamFor(databaseName(database));
  try {
    await dropSlot(database, stream);
    cp.logger.info('replication slot dropped', { slot: stream.slot, schedule: deleted.id });
    return undefined;
  } catch (error) {
    const reason = (error as Error).message;
    cp.logger.warn('replication slot not dropped', { slot: stream.slot, error: reason });
    await cp.table
      .create(
        Partition.alert,
        ORPHAN_KEY,
        { slot: stream.slot, since: cp.now().toISOString(), reason },
        cp.now(),
        'pending',
      )
      .catch(() => undefined);
    return `replication slot ${stream.slot} could not be dropped yet (${reason}); it is retried every minute and alerted while it exists`;
  }
}

/** Items of the ALERT partition that are not episodes (listAlerts leaves `watch:` out). */
const ORPHAN_KEY = 'watch:slot-orphan';
const WATCH_KEY = 'watch:slot';

interface SlotWatch {
  readonly confirmedLsn: string;
  readonly currentLsn: string;
  /** Since when the slot's confirmed position has not moved while the WAL did. */
  readonly stalledSince?: string;
}

/** The watch's conditions (run with the alert checks, every minute). */
export async function slotConditions(cp: ControlPlane): Promise<Condition[]> {
  const database = (await sourceForRun(cp))?.database;
  if (!database) return [];
  const stream = changeStreamFor(databaseName(database));
  const conditions: Condition[] = [];
  const orphan = await cp.table.get<{ slot: string; since: string; reason: string }>(
    Partition.alert,
    ORPHAN_KEY,
  );
  const users = await streamSchedules(cp);
  if (orphan && users.length === 0) {
    const dropped = await dropSlot(database, stream).then(
      () => true,
      () => false,
    );
    if (dropped) await cp.table.delete(orphan).catch(() => undefined);
    conditions.push({
      key: `slot-orphan:${stream.slot}`,
      active: !dropped,
      subject: `[DR] Replication slot ${stream.slot} left on the source`,
      lines: [
        `No schedule reads replication slot ${stream.slot} any more, but it could not be dropped (${orphan.data.reason}).`,
        'A slot nobody reads keeps WAL on the source until its disk fills. It is retried every minute; or drop it yourself:',
        `SELECT pg_drop_replication_slot('${stream.slot}');`,
      ],
      recoverySubject: `[DR] Recovered — replication slot ${stream.slot} dropped`,
      recoveryLines: [`Replication slot ${stream.slot} is gone.`],
    });
  }
  if (users.length === 0) return conditions;

  let status: SlotStatus | undefined;
  try {
    status = await withTimeout(slotStatus(database, stream.slot), REPORT_TIMEOUT_MS);
  } catch (error) {
    cp.logger.warn('replication slot not measured', { slot: stream.slot, error: (error as Error).message });
    return conditions;
  }
  if (!status) return conditions;
  const maxKeep = status.maxKeepBytes;

  const low =
    status.walStatus === 'lost' ||
    (status.safeBytes !== undefined &&
      maxKeep !== undefined &&
      status.safeBytes < maxKeep * SAFE_WAL_ALERT_FRACTION) ||
    (maxKeep === undefined && status.retainedBytes > RETAINED_WAL_ALERT_BYTES);
  conditions.push({
    key: `slot-wal:${stream.slot}`,
    active: low,
    subject: `[DR] Replication slot ${stream.slot} holds ${gib(status.retainedBytes)} of WAL on the source`,
    lines: [
      `Replication slot ${stream.slot} keeps ${gib(status.retainedBytes)} of WAL on the source (WAL status ${status.walStatus}${
        status.safeBytes === undefined
          ? ''
          : `, ${gib(status.safeBytes)} left before max_slot_wal_keep_size invalidates it`
      }).`,
      status.walStatus === 'lost'
        ? 'The slot lost WAL it needed: the next INCREMENTAL is taken as a FULL.'
        : 'Check that the change-stream INCREMENTAL schedule runs and succeeds (GET /api/dr/backups?type=INCREMENTAL); a paused schedule keeps the slot.',
    ],
    recoverySubject: `[DR] Recovered — replication slot ${stream.slot} is back within bounds`,
    recoveryLines: [`Replication slot ${stream.slot} keeps ${gib(status.retainedBytes)} of WAL.`],
  });

  // Stalled: the slot's position has not moved for longer than the RPO while the WAL did.
  const rpoMs = ((await findConfig(cp))?.rpo ?? 1) * 3_600_000;
  const watched = await cp.table.get<SlotWatch>(Partition.alert, WATCH_KEY);
  // The clock starts when the slot is first seen behind the WAL at a position, and restarts when it moves.
  const moved = !watched || watched.data.confirmedLsn !== status.confirmedLsn;
  const behind = lsnValue(status.currentLsn) > lsnValue(status.confirmedLsn);
  const stalledSince = !behind
    ? undefined
    : moved
      ? cp.now().toISOString()
      : (watched.data.stalledSince ?? cp.now().toISOString());
  const next: SlotWatch = {
    confirmedLsn: status.confirmedLsn,
    currentLsn: status.currentLsn,
    ...(stalledSince ? { stalledSince } : {}),
  };
  if (watched) await cp.table.replace(watched, next, cp.now()).catch(() => undefined);
  else await cp.table.create(Partition.alert, WATCH_KEY, next, cp.now(), 'watched').catch(() => undefined);
  const stalled = stalledSince !== undefined && cp.now().getTime() - Date.parse(stalledSince) > rpoMs;
  conditions.push({
    key: `slot-stalled:${stream.slot}`,
    active: stalled,
    subject: `[DR] Change stream stalled — replication slot ${stream.slot} not read since ${stalledSince ?? '?'}`,
    lines: [
      `Replication slot ${stream.slot} has stayed at ${status.confirmedLsn} since ${stalledSince ?? '?'} while the source wrote on to ${status.currentLsn}: no INCREMENTAL has committed changes for longer than the RPO.`,
      `Schedules reading it: ${users.map((schedule) => `${schedule.name} (${schedule.id}${schedule.active ? '' : ', paused'})`).join(', ')}.`,
    ],
    recoverySubject: `[DR] Recovered — replication slot ${stream.slot} is read again`,
    recoveryLines: [`Replication slot ${stream.slot} is at ${status.confirmedLsn}.`],
  });
  return conditions;
}

function gib(bytes: number): string {
  return bytes >= 1024 ** 3
    ? `${(bytes / 1024 ** 3).toFixed(1)} GiB`
    : `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}
