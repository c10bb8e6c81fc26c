import { isGood, isRestorePoint } from '../metrics.ts';
import { randomBytes } from 'node:crypto';
import type { Actor } from '../audit.ts';
import type { ControlPlane } from '../context.ts';
import { ConflictError, NotFoundError, ServiceUnavailableError, ValidationError } from '../errors.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import { newestFirst, requireFound } from './common.ts';
import { findConfig } from './config-service.ts';
import type { BackupRecord, BackupStatus, StoredSchedule } from '../records.ts';
import { artifactsOf, type DownloadLinks, type RunLauncher } from '../ports.ts';

/**
 * The backup catalog and the runs that fill it.
 *
 * - A run starts with a lock item per schedule (`RUN`/<schedule id>, created only if absent): runs of one
 *   schedule never overlap. The lock and the catalog entry carry a heartbeat the worker renews; a run whose
 *   heartbeat is older than `STALE_AFTER_MS` is taken as dead: its entry is marked FAILED and the lock removed.
 * - The catalog entry (`BACKUP`/<backup id>) is created RUNNING before the worker starts and is finished by it:
 *   SUCCESS when every target holds the backup, PARTIAL when some do, FAILED when none does.
 * - Every write after creation is conditional on the version read, so a worker declared dead cannot overwrite
 *   the FAILED its entry was given, and two writers never interleave.
 */
export const HEARTBEAT_MS = 30_000;
export const STALE_AFTER_MS = 5 * 60_000;

interface RunLock {
  readonly scheduleId: string;
  readonly backupId: string;
  readonly startedAt: string;
  readonly heartbeatAt: string;
}

export interface StartRunInput {
  readonly scheduleId: string;
  readonly trigger: BackupRecord['trigger'];
  readonly actor?: Actor;
}

/** POST /api/dr/schedules/{id}/execute, and the dispatcher: claims the schedule, records the run, launches it. */
export async function startRun(
  cp: ControlPlane,
  launcher: RunLauncher | undefined,
  input: StartRunInput,
): Promise<BackupRecord> {
  if (!launcher) throw new ServiceUnavailableError('no backup worker is configured in this deployment');
  const schedule = requireFound(
    (await cp.table.get<StoredSchedule>(Partition.schedule, input.scheduleId))?.data,
    `schedule ${input.scheduleId}`,
  );
  const config = await findConfig(cp);
  if (!config?.source?.database && !config?.source?.files)
    throw new ConflictError(
      'the DR config names no source to back up: set source.database or source.files first',
    );
  if (schedule.targets.length === 0) throw new ValidationError('the schedule has no targets');

  const now = cp.now();
  const id = newBackupId(now);
  const lock: RunLock = {
    scheduleId: schedule.id,
    backupId: id,
    startedAt: now.toISOString(),
    heartbeatAt: now.toISOString(),
  };
  if (!(await claim(cp, lock))) {
    const current = await cp.table.get<RunLock>(Partition.run, schedule.id);
    throw new ConflictError(
      current
        ? `schedule ${schedule.id} is already running (backup ${current.data.backupId}, started ${current.data.startedAt})`
        : `schedule ${schedule.id} is already running`,
    );
  }
  const record: BackupRecord = {
    id,
    scheduleId: schedule.id,
    scheduleName: schedule.name,
    requestedType: schedule.scheduleType,
    type: schedule.scheduleType,
    status: 'RUNNING',
    trigger: input.trigger,
    startedAt: now.toISOString(),
    heartbeatAt: now.toISOString(),
    targets: schedule.targets.map((targetId) => ({
      targetId,
      name: targetId,
      targetType: 'UNKNOWN',
      status: 'RUNNING' as const,
    })),
  };
  await cp.table.create(Partition.backup, id, record, now, `backup ${id} exists`);
  await cp.audit.append(input.actor ?? { principal: 'scheduler' }, {
    action: 'backup.start',
    resource: `backup/${id}`,
    details: { schedule: schedule.id, trigger: input.trigger.kind, type: schedule.scheduleType },
  });
  try {
    // A FULL schedule with several workers fans its tables out; INCREMENTALs run in one worker
    const workers = schedule.scheduleType === 'FULL' ? (schedule.workers ?? 1) : 1;
    await launcher.launch(id, workers > 1 ? { workers } : undefined);
  } catch (error) {
    await finishRecord(cp, id, {
      status: 'FAILED',
      error: `the worker could not be started: ${(error as Error).message}`,
    });
    await releaseRun(cp, schedule.id, id);
    throw error;
  }
  return record;
}

/** Takes the schedule's run lock; a lock whose run stopped beating is reaped first. */
async function claim(cp: ControlPlane, lock: RunLock): Promise<boolean> {
  const item = (data: RunLock) => ({
    pk: Partition.run,
    sk: data.scheduleId,
    version: 1,
    createdAt: data.startedAt,
    updatedAt: data.startedAt,
    data,
  });
  if (await cp.table.putIfAbsent(item(lock))) return true;
  const current = await cp.table.get<RunLock>(Partition.run, lock.scheduleId);
  if (current && !isStale(cp, current.data.heartbeatAt)) return false;
  if (current) await reap(cp, current);
  return cp.table.putIfAbsent(item(lock));
}

function isStale(cp: ControlPlane, heartbeatAt: string): boolean {
  return cp.now().getTime() - Date.parse(heartbeatAt) > STALE_AFTER_MS;
}

/** Marks the run of a dead worker FAILED and frees its schedule. */
async function reap(cp: ControlPlane, lock: StoredItem<RunLock>): Promise<void> {
  const { backupId, heartbeatAt } = lock.data;
  await finishRecord(cp, backupId, {
    status: 'FAILED',
    error: `the worker stopped responding (last heartbeat ${heartbeatAt}); the run was abandoned`,
  }).catch((error: unknown) => {
    if (!(error instanceof NotFoundError) && !(error instanceof ConflictError)) throw error;
  });
  await cp.table.delete(lock).catch((error: unknown) => {
    if (!(error instanceof ConflictError)) throw error;
  });
  cp.logger.warn('run abandoned: worker stopped responding', {
    backup: backupId,
    schedule: lock.data.scheduleId,
  });
}

/** Finds runs whose worker died (the dispatcher calls this on every tick). Returns the backups marked FAILED. */
export async function reapStaleRuns(cp: ControlPlane): Promise<string[]> {
  const reaped: string[] = [];
  for (const lock of await cp.table.queryAll<StoredItem<RunLock>>(Partition.run)) {
    if (isStale(cp, lock.data.heartbeatAt)) {
      await reap(cp, lock);
      reaped.push(lock.data.backupId);
    }
  }
  return reaped;
}

/** The worker's heartbeat (and progress): renews the lock and the entry; fails if the run was declared dead. */
export async function beat(
  cp: ControlPlane,
  backupId: string,
  progress?: BackupRecord['progress'],
): Promise<void> {
  const record = requireFound(
    await cp.table.get<BackupRecord>(Partition.backup, backupId),
    `backup ${backupId}`,
  );
  if (record.data.status !== 'RUNNING')
    throw new ConflictError(`backup ${backupId} is ${record.data.status}: this run was abandoned`);
  const now = cp.now();
  await cp.table.replace(
    record,
    { ...record.data, heartbeatAt: now.toISOString(), ...(progress ? { progress } : {}) },
    now,
  );
  const lock = await cp.table.get<RunLock>(Partition.run, record.data.scheduleId);
  if (lock?.data.backupId === backupId)
    await cp.table.replace(lock, { ...lock.data, heartbeatAt: now.toISOString() }, now);
}

/** Applies `changes` to a backup entry (conditional on the version read; the worker and the reaper race here). */
export async function finishRecord(
  cp: ControlPlane,
  backupId: string,
  changes: Partial<BackupRecord>,
): Promise<BackupRecord> {
  const current = requireFound(
    await cp.table.get<BackupRecord>(Partition.backup, backupId),
    `backup ${backupId}`,
  );
  if (current.data.status !== 'RUNNING' && changes.status !== undefined)
    throw new ConflictError(`backup ${backupId} already finished as ${current.data.status}`);
  const now = cp.now();
  const { progress: _progress, ...rest } = current.data;
  const data: BackupRecord = {
    ...rest,
    ...changes,
    ...(changes.status && changes.status !== 'RUNNING' ? { finishedAt: now.toISOString() } : {}),
  };
  const targets =
    data.status === 'FAILED'
      ? data.targets.map((target) =>
          target.status === 'RUNNING' ? { ...target, status: 'FAILED' as const } : target,
        )
      : data.targets;
  return (await cp.table.replace(current, { ...data, targets }, now)).data;
}

/** Frees the schedule after a run (only the lock of that run). */
export async function releaseRun(cp: ControlPlane, scheduleId: string, backupId: string): Promise<void> {
  const lock = await cp.table.get<RunLock>(Partition.run, scheduleId);
  if (lock?.data.backupId === backupId)
    await cp.table.delete(lock).catch((error: unknown) => {
      if (!(error instanceof ConflictError)) throw error;
    });
}

export async function getBackup(cp: ControlPlane, id: string): Promise<BackupRecord> {
  return requireFound(await cp.table.get<BackupRecord>(Partition.backup, id), `backup ${id}`).data;
}

/**
 * Confirms a backup flagged for review (the operator checked that the source really shrank): it becomes a
 * restore point in the catalog (RPO, latest, retention, restores). The repository's manifests keep their flag
 * (for drctl, `drctl confirm`).
 */
export async function confirmBackupReview(cp: ControlPlane, id: string, actor: Actor): Promise<BackupRecord> {
  const item = requireFound(await cp.table.get<BackupRecord>(Partition.backup, id), `backup ${id}`);
  const { review, ...rest } = item.data;
  if (review === undefined)
    throw new ConflictError(`backup ${id} is not flagged for review: nothing to confirm`);
  const at = cp.now();
  const data: BackupRecord = {
    ...rest,
    reviewConfirmed: { reason: review, at: at.toISOString(), by: actor.principal },
  };
  await cp.table.replace(item, data, at);
  await cp.audit.append(actor, {
    action: 'backup.confirm',
    resource: `backup/${id}`,
    details: { review },
  });
  return data;
}

export interface BackupFilter {
  readonly type?: BackupRecord['type'];
  readonly status?: BackupStatus;
  readonly scheduleId?: string;
  readonly targetId?: string;
  /** startedAt bounds (ISO 8601), inclusive. */
  readonly from?: string;
  readonly to?: string;
  /** Only the newest backup that matches and is a usable restore point (SUCCESS or PARTIAL, not under review). */
  readonly latest?: boolean;
  readonly limit?: number;
  readonly nextToken?: string;
}

/** GET /api/dr/backups: newest first, filtered, paged by an opaque token. */
export async function listBackups(
  cp: ControlPlane,
  filter: BackupFilter,
): Promise<{ items: BackupRecord[]; nextToken?: string }> {
  const limit = filter.latest ? 1 : (filter.limit ?? 50);
  const matches = (record: BackupRecord) =>
    (filter.type === undefined || record.type === filter.type) &&
    (filter.status === undefined || record.status === filter.status) &&
    (filter.scheduleId === undefined || record.scheduleId === filter.scheduleId) &&
    (filter.targetId === undefined || record.targets.some((target) => target.targetId === filter.targetId)) &&
    (filter.from === undefined || record.startedAt >= filter.from) &&
    (filter.to === undefined || record.startedAt <= filter.to) &&
    (!filter.latest || isRestorePoint(record));
  const after = filter.nextToken === undefined ? undefined : await decodeAfter(cp, filter.nextToken);
  const { items, last } = await newestFirst(cp, Partition.backup, matches, limit, after);
  return last === undefined || filter.latest
    ? { items }
    : { items, nextToken: await cp.table.sealToken(last) };
}

/**
 * The newest restore point (SUCCESS or PARTIAL, not under review) that `wanted` accepts, paging the catalog
 * newest first: only `scheduleId`'s if given, only older than the backup `before` if given, and giving up at
 * the first backup that `past` says is too old.
 */
export async function newestRestorePoint(
  cp: ControlPlane,
  wanted: (backup: BackupRecord) => boolean,
  options: {
    readonly scheduleId?: string | undefined;
    readonly before?: string;
    readonly past?: (backup: BackupRecord) => boolean;
  } = {},
): Promise<BackupRecord | undefined> {
  let after = options.before;
  for (;;) {
    const page = await cp.table.query<StoredItem<BackupRecord>>(Partition.backup, {
      descending: true,
      limit: 100,
      ...(after === undefined ? {} : { after }),
    });
    for (const { data } of page.items) {
      if (options.scheduleId !== undefined && data.scheduleId !== options.scheduleId) continue;
      if (options.past?.(data)) return undefined;
      if (isRestorePoint(data) && wanted(data)) return data;
    }
    if (page.items.length === 0 || page.nextToken === undefined) return undefined;
    after = page.items.at(-1)!.sk;
  }
}

export { isGood, isRestorePoint };

async function decodeAfter(cp: ControlPlane, token: string): Promise<string> {
  const id = await cp.table.openToken(token);
  if (!/^\d{8}T\d{9}Z-[0-9a-f]{6}$/.test(id))
    throw ValidationError.forField('nextToken', 'is not a token this API gave');
  return id;
}

/** The engine's id format (`20261124T215213123Z-a1b2c3`): the catalog names the backup before the engine runs. */
export function newBackupId(now: Date): string {
  return `${now.toISOString().replace(/[-:.]/g, '')}-${randomBytes(3).toString('hex')}`;
}

/**
 * GET /api/dr/backups/{id}/download: links to the database (SQL for psql, archive for pg_restore) and the
 * files (.tar.gz); 202 with `status: PREPARING` while they are being prepared. Every issue of links is
 * audited.
 */
export async function downloadLinks(
  cp: ControlPlane,
  links: DownloadLinks | undefined,
  id: string,
  actor: Actor,
): Promise<{ status: number; headers?: Record<string, string>; body: unknown }> {
  if (!links) throw new ServiceUnavailableError('downloads are not configured in this deployment');
  const record = await getBackup(cp, id);
  if (!isGood(record))
    throw new ConflictError(
      `backup ${id} is ${record.status}${record.review ? ' and flagged for review' : ''}: nothing to download`,
    );
  if (record.type === 'INCREMENTAL' && record.changes)
    throw new ConflictError(
      `backup ${id} holds the database as row changes since FULL ${record.changes.base}, which only a restore applies: restore it (POST /api/dr/restore), or download the FULL`,
    );
  const wanted = artifactsOf(record);
  const result = await links.links(id, wanted);
  if (!result.ready)
    return {
      status: 202,
      headers: { 'retry-after': String(result.retryAfterSeconds) },
      body: {
        backupId: id,
        status: 'PREPARING',
        retryAfterSeconds: result.retryAfterSeconds,
        message: 'the artifacts are being exported; ask again to get the links',
      },
    };
  await cp.audit.append(actor, {
    action: 'backup.download',
    resource: `backup/${id}`,
    details: { artifacts: wanted.map((item) => item.artifact).join(',') },
  });
  return {
    status: 200,
    body: {
      backupId: id,
      status: 'READY',
      artifacts: wanted.map((item, index) => ({ ...item, ...result.links[index]! })),
    },
  };
}
