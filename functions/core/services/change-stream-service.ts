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
import { findConfig, sourceForRun } from './config-service.ts';
import type { BackupRecord, Condition, StoredSchedule } from '../records.ts';
import { withTimeout } from './common.ts';

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
  /** When the worker measured it (where the source is reachable only from the worker). */
  readonly measuredAt?: string;
}

/**
 * What the source database allows, and where the slot stands (GET /api/dr/change-stream; schedule saves).
 * Where the source is reachable only from the worker, the worker's newest measurement, and a fresh one asked
 * for when it is older than a minute.
 */
export async function changeStreamReport(cp: ControlPlane): Promise<ChangeStreamReport | undefined> {
  const database = (await sourceForRun(cp))?.database;
  if (!database) return undefined;
  const { slot } = changeStreamFor(databaseName(database));
  if (cp.sourceFromWorker) {
    const current = await storedMeasurement(cp, slot);
    if (!current?.measuredAt || ageMs(cp, current.measuredAt) > REPORT_MAX_AGE_MS) await askWorker(cp);
    if (!current?.readiness)
      return {
        slot,
        error:
          current?.failure?.error ??
          'not measured yet: the worker measures the source database from its subnets; ask again in a minute',
      };
    const { readiness, status, measuredAt } = current;
    return { slot, readiness, ...(status ? { status } : {}), ...(measuredAt ? { measuredAt } : {}) };
  }
  try {
    const [readiness, status] = await withTimeout(
      'the source database',
      Promise.all([changeStreamReadiness(database), slotStatus(database, slot)]),
      REPORT_TIMEOUT_MS,
    );
    return { slot, readiness, ...(status ? { status } : {}) };
  } catch (error) {
    return { slot, error: (error as Error).message };
  }
}

/**
 * A schedule in `mode: change-stream` whose newest run could not use the stream (the source does not allow
 * it: it deduplicated a dump instead, larger and without point-in-time recovery) alerts until a run uses it.
 */
function fallbackConditions(users: readonly StoredSchedule[], backups: readonly BackupRecord[]): Condition[] {
  const schedules = users.filter((schedule) => modeOf(schedule) === 'change-stream');
  return schedules.flatMap((schedule): Condition[] => {
    const newest = backups
      .filter(
        (one) => one.scheduleId === schedule.id && (one.status === 'SUCCESS' || one.status === 'PARTIAL'),
      )
      .sort((a, b) => (a.id < b.id ? 1 : -1))[0];
    if (!newest) return [];
    return [
      {
        key: `stream-unavailable:${schedule.id}`,
        active: newest.streamUnavailable !== undefined,
        subject: `[DR] Change stream unavailable — schedule ${schedule.name} deduplicates dumps`,
        lines: [
          `Schedule ${schedule.name} (${schedule.id}) asks for change-stream INCREMENTALs, but backup ${newest.id}: ${newest.streamUnavailable ?? ''}.`,
          'It deduplicated a dump instead: nothing is lost, but it is larger and restores only to its own instant. GET /api/dr/change-stream says what to fix.',
        ],
        recoverySubject: `[DR] Recovered — schedule ${schedule.name} reads the change stream again`,
        recoveryLines: [`Backup ${newest.id} of schedule ${schedule.name} used the change stream.`],
      },
    ];
  });
}

/**
 * After a schedule is deleted: when no INCREMENTAL schedule reads the stream any more, its slot is dropped
 * (a slot nobody reads keeps WAL on the source forever). A slot that cannot be dropped here (the source is
 * reachable only from the worker, or the drop failed) is remembered; the watch drops it, and alerts while it
 * exists.
 */
export async function dropUnusedSlot(cp: ControlPlane, deleted: StoredSchedule): Promise<string | undefined> {
  if (deleted.scheduleType !== 'INCREMENTAL' || modeOf(deleted) === 'dump') return undefined;
  if ((await streamSchedules(cp, deleted.id)).length > 0) return undefined;
  const database = (await sourceForRun(cp))?.database;
  if (!database) return undefined;
  const stream = changeStreamFor(databaseName(database));
  const remember = async (reason: string) => {
    const orphan: Orphan = { slot: stream.slot, since: cp.now().toISOString(), reason };
    await put(cp, ORPHAN_KEY, orphan);
  };
  if (cp.sourceFromWorker) {
    await remember('the schedule was deleted; the worker drops the slot');
    await askWorker(cp);
    return `replication slot ${stream.slot} is dropped by the worker (it reaches the source) within minutes; alerted if it cannot be`;
  }
  try {
    await dropSlot(database, stream);
    cp.logger.info('replication slot dropped', { slot: stream.slot, schedule: deleted.id });
    return undefined;
  } catch (error) {
    const reason = (error as Error).message;
    cp.logger.warn('replication slot not dropped', { slot: stream.slot, error: reason });
    await remember(reason);
    return `replication slot ${stream.slot} could not be dropped yet (${reason}); it is retried every minute and alerted while it exists`;
  }
}

/** Items of the ALERT partition that are not episodes (listAlerts leaves `watch:` out). */
const ORPHAN_KEY = 'watch:slot-orphan';
const MEASUREMENT_KEY = 'watch:change-stream';
/** The worker is asked for a new measurement when the newest is older than this (alert checks)… */
const WATCH_PERIOD_MS = 4 * 60_000;
/** …or than this (an operator asking: GET /api/dr/change-stream, schedule saves). */
const REPORT_MAX_AGE_MS = 60_000;
/** A slot not measured for this long is alerted (it may be filling the source's disk unseen). */
export const UNWATCHED_ALERT_MS = 15 * 60_000;

interface Orphan {
  readonly slot: string;
  readonly since: string;
  readonly reason: string;
}

/** The source as last measured where it is reachable (here, or by the worker on AWS in the operator's subnets). */
interface SourceMeasurement {
  readonly slot: string;
  /** The last successful measurement. */
  readonly measuredAt?: string;
  readonly readiness?: Readiness;
  /** Absent: no slot on the source. */
  readonly status?: SlotStatus;
  /**
   * Since when the slot's confirmed position has stood still while the WAL moved on (from the first
   * measurement that saw it behind at that position; restarts when it moves).
   */
  readonly stalledSince?: string;
  /** Why an orphaned slot could not be dropped. */
  readonly dropError?: string;
  /** An RDS source instance's free storage (CloudWatch), when the config names the instance. */
  readonly freeStorageBytes?: number;
  /** The newest failed measurement, when it is newer than the last successful one. */
  readonly failure?: { readonly at: string; readonly error: string };
  /** When this record was first written (the unwatched alert counts from here when nothing was measured). */
  readonly since: string;
}

/**
 * Measures the source where it is reachable: drops a slot left by a deleted schedule, reads the slot's status
 * (and, when asked, what the database allows), and keeps the measurement for the alert checks and the API.
 * The worker's `watch` action on AWS; the alert checks themselves elsewhere.
 */
export async function measureSource(
  cp: ControlPlane,
  options: { readonly readiness: boolean },
): Promise<SourceMeasurement | undefined> {
  const watched = await watchedStream(cp);
  return watched && measure(cp, watched, options);
}

/** The source's stream as the watch sees it: the connection, the slot, who reads it, a slot left behind. */
interface WatchedStream {
  readonly database: DatabaseConnection;
  readonly stream: ChangeStream;
  readonly users: readonly StoredSchedule[];
  readonly orphan?: StoredItem<Orphan>;
}

async function watchedStream(cp: ControlPlane): Promise<WatchedStream | undefined> {
  const database = (await sourceForRun(cp))?.database;
  if (!database) return undefined;
  const stream = changeStreamFor(databaseName(database));
  const orphan = await cp.table.get<Orphan>(Partition.alert, ORPHAN_KEY);
  return {
    database,
    stream,
    users: await streamSchedules(cp),
    ...(orphan?.data.slot === stream.slot ? { orphan } : {}),
  };
}

async function measure(
  cp: ControlPlane,
  { database, stream, users, orphan }: WatchedStream,
  options: { readonly readiness: boolean },
): Promise<SourceMeasurement> {
  // The record of another slot (the source changed) is replaced, its figures not kept.
  const previous = await cp.table.get<SourceMeasurement>(Partition.alert, MEASUREMENT_KEY);
  const kept = previous?.data.slot === stream.slot ? previous.data : undefined;
  const now = cp.now().toISOString();
  let next: SourceMeasurement;
  try {
    let dropError: string | undefined;
    if (orphan && users.length === 0)
      dropError = await withTimeout(
        'the source database',
        dropSlot(database, stream),
        REPORT_TIMEOUT_MS,
      ).then(
        () => undefined,
        (error: unknown) => (error as Error).message,
      );
    const [readiness, status] = await withTimeout(
      'the source database',
      Promise.all([
        options.readiness ? changeStreamReadiness(database) : Promise.resolve(kept?.readiness),
        slotStatus(database, stream.slot),
      ]),
      REPORT_TIMEOUT_MS,
    );
    const freeStorageBytes = status ? await freeStorageOf(cp) : undefined;
    // The stall clock starts when the slot is first seen behind the WAL at a position, restarts when it moves.
    const moved = kept?.status?.confirmedLsn !== status?.confirmedLsn;
    const behind = status !== undefined && lsnValue(status.currentLsn) > lsnValue(status.confirmedLsn);
    const stalledSince = !behind ? undefined : moved ? now : (kept?.stalledSince ?? now);
    next = {
      slot: stream.slot,
      measuredAt: now,
      ...(readiness ? { readiness } : {}),
      ...(status ? { status } : {}),
      ...(stalledSince ? { stalledSince } : {}),
      ...(dropError ? { dropError } : {}),
      ...(freeStorageBytes === undefined ? {} : { freeStorageBytes }),
      since: kept?.since ?? now,
    };
  } catch (error) {
    const message = (error as Error).message;
    cp.logger.warn('replication slot not measured', { slot: stream.slot, error: message });
    const { failure: _, ...rest } = kept ?? { slot: stream.slot, since: now };
    next = { ...rest, failure: { at: now, error: message } };
  }
  await put(cp, MEASUREMENT_KEY, next, previous ?? null);
  return next;
}

/** The stored measurement of this slot (one of another slot — the source changed — is not its). */
async function storedMeasurement(cp: ControlPlane, slot: string): Promise<SourceMeasurement | undefined> {
  const stored = await cp.table.get<SourceMeasurement>(Partition.alert, MEASUREMENT_KEY);
  return stored?.data.slot === slot ? stored.data : undefined;
}

/** The RDS source instance's free storage, when the config names one (an unanswered question is no figure). */
async function freeStorageOf(cp: ControlPlane): Promise<number | undefined> {
  const rds = (await findConfig(cp))?.source?.rds;
  if (!cp.freeStorage || !rds?.instanceIdentifier) return undefined;
  const instance = {
    instanceIdentifier: rds.instanceIdentifier,
    ...(rds.region ? { region: rds.region } : {}),
  };
  return cp.freeStorage(instance, cp.now()).catch((error: unknown) => {
    cp.logger.warn('free storage not read', {
      instance: rds.instanceIdentifier,
      error: (error as Error).message,
    });
    return undefined;
  });
}

/** Asks the worker for a new measurement (it reaches the source; this process does not). */
async function askWorker(cp: ControlPlane): Promise<void> {
  if (!cp.runs?.watch) return;
  await cp.runs
    .watch()
    .catch((error: unknown) =>
      cp.logger.warn('the worker was not asked to measure the source', { error: (error as Error).message }),
    );
}

/**
 * The change stream's conditions (run with the alert checks, every minute): a `mode: change-stream` schedule
 * that fell back to dumps, and the watch over the slot.
 */
export async function changeStreamConditions(
  cp: ControlPlane,
  backups: readonly BackupRecord[],
): Promise<Condition[]> {
  const watched = await watchedStream(cp);
  if (!watched) return [];
  return [...fallbackConditions(watched.users, backups), ...(await slotConditions(cp, watched))];
}

async function slotConditions(cp: ControlPlane, watched: WatchedStream): Promise<Condition[]> {
  const { stream, users } = watched;
  const orphan = watched.orphan?.data;
  if (users.length === 0 && !orphan) return [];

  let measured: SourceMeasurement;
  if (cp.sourceFromWorker) {
    const stored = await storedMeasurement(cp, stream.slot);
    measured = stored ?? { slot: stream.slot, since: cp.now().toISOString() };
    // Nothing measured yet: the unwatched alert counts from now.
    if (!stored) await put(cp, MEASUREMENT_KEY, measured);
    const due =
      !measured.measuredAt ||
      ageMs(cp, measured.measuredAt) > WATCH_PERIOD_MS ||
      (orphan !== undefined && measured.measuredAt < orphan.since);
    if (due) await askWorker(cp);
  } else measured = await measure(cp, watched, { readiness: false });
  const conditions: Condition[] = [];
  const fresh = measured.measuredAt !== undefined && ageMs(cp, measured.measuredAt) <= UNWATCHED_ALERT_MS;

  if (orphan && users.length === 0) {
    // Only a measurement taken after the schedule was deleted tells whether the slot is gone.
    const after = measured.measuredAt !== undefined && measured.measuredAt >= orphan.since;
    if (after && !measured.status) await cp.table.delete(watched.orphan).catch(() => undefined);
    if (after || ageMs(cp, orphan.since) > UNWATCHED_ALERT_MS)
      conditions.push({
        key: `slot-orphan:${stream.slot}`,
        active: !after || measured.status !== undefined,
        subject: `[DR] Replication slot ${stream.slot} left on the source`,
        lines: [
          `No schedule reads replication slot ${stream.slot} any more, but it could not be dropped (${
            measured.dropError ?? measured.failure?.error ?? orphan.reason
          }).`,
          'A slot nobody reads keeps WAL on the source until its disk fills. It is retried every few minutes; or drop it yourself:',
          `SELECT pg_drop_replication_slot('${stream.slot}');`,
        ],
        recoverySubject: `[DR] Recovered — replication slot ${stream.slot} dropped`,
        recoveryLines: [`Replication slot ${stream.slot} is gone.`],
      });
  }
  if (users.length === 0) return conditions;

  const lastSeen = measured.measuredAt ?? measured.since;
  conditions.push({
    key: `slot-unwatched:${stream.slot}`,
    active: ageMs(cp, lastSeen) > UNWATCHED_ALERT_MS,
    subject: `[DR] Replication slot ${stream.slot} not measured since ${lastSeen}`,
    lines: [
      `The source database could not be measured since ${lastSeen}${
        measured.failure ? ` (${measured.failure.error})` : ''
      }: the WAL replication slot ${stream.slot} keeps on the source is not watched.`,
      cp.sourceFromWorker
        ? 'The worker measures it from its subnets every few minutes: check its logs, and that it reaches the database.'
        : 'Check that the source database is reachable from the control plane.',
    ],
    recoverySubject: `[DR] Recovered — replication slot ${stream.slot} is measured again`,
    recoveryLines: [`Replication slot ${stream.slot} was measured at ${measured.measuredAt ?? '?'}.`],
  });
  // An old measurement says nothing about now: the slot's episodes stay as they are.
  const status = fresh ? measured.status : undefined;
  if (!status) return conditions;
  const maxKeep = status.maxKeepBytes;
  const low =
    status.walStatus === 'lost' ||
    (status.safeBytes !== undefined &&
      maxKeep !== undefined &&
      status.safeBytes < maxKeep * SAFE_WAL_ALERT_FRACTION) ||
    (maxKeep === undefined && status.retainedBytes > RETAINED_WAL_ALERT_BYTES) ||
    // The disk holds less than the slot keeps: as much WAL again, and it is full.
    (measured.freeStorageBytes !== undefined && measured.freeStorageBytes < status.retainedBytes);
  conditions.push({
    key: `slot-wal:${stream.slot}`,
    active: low,
    subject: `[DR] Replication slot ${stream.slot} holds ${gib(status.retainedBytes)} of WAL on the source`,
    lines: [
      `Replication slot ${stream.slot} keeps ${gib(status.retainedBytes)} of WAL on the source (WAL status ${status.walStatus}${
        status.safeBytes === undefined
          ? ''
          : `, ${gib(status.safeBytes)} left before max_slot_wal_keep_size invalidates it`
      }${
        measured.freeStorageBytes === undefined
          ? ''
          : `; the instance has ${gib(measured.freeStorageBytes)} of storage free`
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
  const { stalledSince } = measured;
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

function ageMs(cp: ControlPlane, since: string): number {
  return cp.now().getTime() - Date.parse(since);
}

/**
 * Writes a watch record of the ALERT partition (a lost race with another check changes nothing). `current`:
 * the item as just read (null: there is none), when the caller has it.
 */
async function put<T>(
  cp: ControlPlane,
  key: string,
  data: T,
  current?: StoredItem<unknown> | null,
): Promise<void> {
  if (current === undefined) current = (await cp.table.get(Partition.alert, key)) ?? null;
  const written = current
    ? cp.table.replace(current, data, cp.now())
    : cp.table.create(Partition.alert, key, data, cp.now(), 'watched');
  await written.catch(() => undefined);
}
