import { availableParallelism } from 'node:os';
import { PROGRAM_DIR, pathProblem } from '../core/paths.ts';
import type { FanOut } from '../engine/fanout.ts';
import type { ControlPlane } from '../core/context.ts';
import { ConflictError } from '../core/errors.ts';
import {
  beat,
  finishRecord,
  getBackup,
  HEARTBEAT_MS,
  listBackups,
  newestRestorePoint,
  releaseRun,
} from '../core/services/backup-service.ts';
import { sourceForRun } from '../core/services/config-service.ts';
import { findSchedule } from '../core/services/schedule-service.ts';
import { findStoredTarget, openStoredTarget } from '../core/services/target-service.ts';
import { streamForRun } from '../core/services/change-stream-service.ts';
import { backup, type BackupSource } from '../engine/backup.ts';
import { confirmBackup } from '../engine/changes.ts';
import { protectedBytes, type ChangesManifest, type Manifest } from '../engine/manifest.ts';
import type { MasterKey } from '../engine/crypto.ts';
import { connectionFrom } from '../engine/postgres.ts';
import { Repository } from '../engine/repository.ts';
import { MirrorStorage, type MirrorMember, type MirrorMemberResult } from '../storage/mirror.ts';
import { publicReason } from '../storage/storage.ts';
import { prepareRepositories } from './repositories.ts';
import type { BackupRecord, BackupStatus, StoredSchedule, TargetResult } from '../core/records.ts';
import type { ProgressEvent } from '../engine/progress.ts';
import { progressWriter, progressOf } from '../core/progress.ts';

export interface WorkerOptions {
  /** The master key every target's repository is sealed under. */
  masterKey(): Promise<MasterKey>;
  readonly heartbeatMs?: number;
  /** How often progress is written to the entry while it changes (default 2 s; tests shorten it). */
  readonly progressMs?: number;
  /** Bytes queued per target before the backup waits for the slowest (default 64 MiB). */
  readonly queueBytes?: number;
  /**
   * A FULL's tables read by other workers (the fan-out's parts), given the run's mirror (a target a part
   * could not write to is left out) and a way to show the parts' progress.
   */
  readonly fanOut?: (mirror: MirrorStorage, report: (progress: ProgressEvent) => void) => FanOut;
}

/** Tables read at once when the schedule does not say: the cores there are, at most 8. */
export function defaultJobs(): number {
  return Math.max(1, Math.min(availableParallelism(), 8));
}

/**
 * The backup worker: one run of a schedule, from its catalog entry (RUNNING) to its outcome. The source is
 * read once into one repository mirrored to every target of the schedule; each target's result is recorded
 * (SUCCESS when it holds the whole backup, FAILED with the reason otherwise), and the backup is SUCCESS,
 * PARTIAL or FAILED accordingly. A duplicate launch of a finished run does nothing.
 */
export async function executeRun(
  cp: ControlPlane,
  backupId: string,
  options: WorkerOptions,
): Promise<BackupRecord> {
  const record = await getBackup(cp, backupId);
  if (record.status !== 'RUNNING') return record;

  let progress: BackupRecord['progress'];
  let abandoned = false;
  const beatFailed = (error: unknown) => {
    if (error instanceof ConflictError) abandoned = true;
    cp.logger.warn('heartbeat failed', { backup: backupId, error: (error as Error).message });
  };
  const heartbeat = setInterval(() => {
    beat(cp, backupId, progress).catch(beatFailed);
  }, options.heartbeatMs ?? HEARTBEAT_MS);
  // Progress is written as it goes (every few seconds), not only with the heartbeat
  const shown = progressWriter((value) => beat(cp, backupId, value), beatFailed, options.progressMs);
  const started = Date.now();
  const estimate = await estimatedBytes(cp, record);
  const onProgress = (event: ProgressEvent) => {
    progress = progressOf(event, started, Date.now(), estimate);
    shown.report(progress);
  };
  let mirror: MirrorStorage | undefined;
  const results = new Map<string, TargetResult>();
  try {
    const schedule = await findSchedule(cp, record.scheduleId);
    if (!schedule)
      return await fail(cp, record, `schedule ${record.scheduleId} was deleted before the run started`);
    const source = await sourceOfRun(cp);
    if (typeof source === 'string') return await fail(cp, record, source);
    const { engineSource, notices } = source;

    const members = await openTargets(cp, schedule, results);
    if (members.length === 0)
      return await fail(cp, record, 'no target of the schedule could be opened', [...results.values()]);

    const key = await options.masterKey();
    mirror = new MirrorStorage(
      members,
      options.queueBytes === undefined ? {} : { queueBytes: options.queueBytes },
    );
    for (const [id, error] of await prepareRepositories(members, key)) mirror.exclude(id, error);
    const repository = await Repository.open(mirror, key);

    const { type, parent } = await typeAndParent(cp, record, mirror, notices);
    const changeStream = engineSource.database
      ? await streamForRun(cp, schedule, type, engineSource.database)
      : undefined;
    const { manifest, notice, schemaChanged, streamUnavailable } = await backup(repository, {
      id: backupId,
      type,
      source: engineSource,
      ...(parent ? { parent } : {}),
      ...(changeStream ? { changeStream } : {}),
      tags: { schedule: schedule.id, series: 'dr' },
      tableConcurrency: schedule.jobs ?? defaultJobs(),
      ...(options.fanOut
        ? {
            fanOut: options.fanOut(mirror, onProgress),
          }
        : {}),
      // The program's own files are public; the data directory's are keys
      protectedDirectories: (cp.paths?.forbidden ?? []).filter((directory) => directory !== PROGRAM_DIR),
      onProgress,
    });
    await shown.flush(); // a progress write under way would make the entry's last write conflict
    for (const member of await mirror.flush()) recordMember(cp, backupId, results, member, member.ok);
    if (notice) notices.push(notice);
    const targets = schedule.targets.map((id) => results.get(id)!);
    const succeeded = targets.filter((target) => target.status === 'SUCCESS').length;
    const status: BackupStatus =
      succeeded === targets.length ? 'SUCCESS' : succeeded > 0 ? 'PARTIAL' : 'FAILED';
    const finished = await finishRecord(cp, backupId, {
      ...outcomeOf(manifest, { schemaChanged, streamUnavailable }),
      status,
      targets,
      ...(notices.length > 0 ? { notice: notices.join('; ') } : {}),
      ...(status === 'FAILED' ? { error: 'no target holds the backup' } : {}),
    });
    // The slot moves only now that the backup is committed (in the catalog, on at least one target).
    if (status !== 'FAILED' && engineSource.database)
      await confirmBackup(engineSource.database, manifest).catch((error: unknown) =>
        cp.logger.warn('replication slot not advanced: the next INCREMENTAL skips what this one holds', {
          backup: backupId,
          error: (error as Error).message,
        }),
      );
    await cp.audit.append(
      { principal: 'backup-worker' },
      {
        action: 'backup.finish',
        resource: `backup/${backupId}`,
        details: {
          status,
          type: manifest.type,
          targets: targets.map((t) => `${t.targetId}:${t.status}`).join(','),
        },
      },
    );
    return finished;
  } catch (error) {
    await shown.flush();
    // Each target's own failure is kept (the catalog's answer), not only the run's
    const members = await mirror?.flush().catch(() => undefined);
    for (const member of members ?? []) recordMember(cp, backupId, results, member, false);
    if (abandoned) return getBackup(cp, backupId);
    return await fail(
      cp,
      record,
      (error as Error).message,
      members ? [...results.values()] : undefined,
    ).catch(() => getBackup(cp, backupId));
  } finally {
    clearInterval(heartbeat);
    await mirror?.close();
    await releaseRun(cp, record.scheduleId, backupId);
  }
}

/** What to back up: the DR config's source, checked again now; a reason when there is nothing to run. */
export async function sourceOfRun(
  cp: ControlPlane,
): Promise<{ engineSource: BackupSource; notices: string[] } | string> {
  const source = await sourceForRun(cp);
  const engineSource: BackupSource = {
    ...(source?.database ? { database: connectionFrom(source.database.url, source.database.password) } : {}),
    ...(source?.files?.type === 'directory' ? { files: source.files.path } : {}),
  };
  const notices: string[] = [];
  if (source?.files?.type === 's3')
    notices.push('files in an S3 bucket are not backed up yet: only the database was');
  if (!engineSource.database && !engineSource.files) return 'the DR config names no source to back up';
  // Checked again at every run: a link may have been put in the path since the config was saved
  if (engineSource.files !== undefined) {
    const problem = await pathProblem(engineSource.files, cp.paths);
    if (problem !== undefined) return `the files source ${engineSource.files} ${problem}`;
  }
  return { engineSource, notices };
}

/**
 * Every target of the schedule, opened; one that cannot be opened is recorded as failed (in the API's words,
 * the full reason in the log) and the others go on.
 */
export async function openTargets(
  cp: ControlPlane,
  schedule: StoredSchedule,
  results: Map<string, TargetResult>,
): Promise<MirrorMember[]> {
  const members: MirrorMember[] = [];
  for (const targetId of schedule.targets) {
    const target = await findStoredTarget(cp, targetId);
    if (!target) {
      results.set(
        targetId,
        failed(targetId, targetId, 'UNKNOWN', 'not-found', 'the target no longer exists'),
      );
      continue;
    }
    try {
      members.push({ id: targetId, storage: await openStoredTarget(cp, target) });
      results.set(targetId, {
        targetId,
        name: target.name,
        targetType: target.targetType,
        status: 'RUNNING',
      });
    } catch (error) {
      const reason = publicReason(error);
      cp.logger.warn('target not opened', { target: targetId, error: (error as Error).message });
      results.set(targetId, failed(targetId, target.name, target.targetType, reason.kind, reason.message));
    }
  }
  return members;
}

/** An INCREMENTAL builds on the newest restore point every target still in the run holds; without one, a FULL. */
async function typeAndParent(
  cp: ControlPlane,
  record: BackupRecord,
  mirror: MirrorStorage,
  notices: string[],
): Promise<{ type: BackupRecord['type']; parent?: string }> {
  if (record.requestedType !== 'INCREMENTAL') return { type: record.requestedType };
  const live = (await mirror.flush()).filter((member) => member.ok).map((member) => member.id);
  const parent = await parentFor(cp, record.id, live);
  if (parent) return { type: 'INCREMENTAL', parent };
  notices.push('no earlier backup held by every target of this run: this INCREMENTAL was taken as a FULL');
  return { type: 'FULL' };
}

/**
 * What this run will read, for its progress: what the schedule's newest successful backup of the same type
 * read (none yet: unknown, and the progress shows bytes and rate only).
 */
async function estimatedBytes(cp: ControlPlane, record: BackupRecord): Promise<number | undefined> {
  const { items } = await listBackups(cp, {
    scheduleId: record.scheduleId,
    status: 'SUCCESS',
    type: record.requestedType,
    limit: 1,
  });
  return items[0]?.sizes?.sourceBytes;
}

/** What the catalog shows of a finished backup, from its manifest. */
function outcomeOf(
  manifest: Manifest,
  flags: { schemaChanged?: string | undefined; streamUnavailable?: string | undefined },
): Partial<BackupRecord> {
  const { stats } = manifest;
  return {
    type: manifest.type,
    ...(manifest.parent ? { parent: manifest.parent } : {}),
    restorePoint: manifest.restorePoint,
    ...(manifest.database
      ? {
          database: {
            name: manifest.database.database,
            serverVersion: manifest.database.serverVersion,
            tables: manifest.database.tables.length,
          },
        }
      : {}),
    ...(manifest.files ? { files: { entries: manifest.files.entries.length } } : {}),
    ...(manifest.changes ? { changes: changeSummary(manifest.changes) } : {}),
    ...(flags.schemaChanged ? { schemaChanged: flags.schemaChanged } : {}),
    ...(flags.streamUnavailable ? { streamUnavailable: flags.streamUnavailable } : {}),
    sizes: {
      sourceBytes: stats.bytesRead,
      protectedBytes: protectedBytes(manifest),
      storedBytes: stats.bytesStored,
      newBytes: stats.bytesNew,
      chunks: stats.chunks,
      newChunks: stats.newChunks,
      ...(stats.bytesStored > 0
        ? { dedupRatio: Math.round((stats.bytesRead / stats.bytesStored) * 100) / 100 }
        : {}),
    },
    ...(manifest.review ? { review: manifest.review.reason } : {}),
  };
}

function changeSummary(changes: ChangesManifest): NonNullable<BackupRecord['changes']> {
  const set = changes.sets.at(-1);
  return {
    base: changes.base,
    endLsn: changes.endLsn,
    transactions: set?.transactions ?? 0,
    changes: set?.changes ?? 0,
    ...(set?.lastCommit ? { lastCommit: set.lastCommit } : {}),
  };
}

async function fail(
  cp: ControlPlane,
  record: BackupRecord,
  reason: string,
  targets?: readonly TargetResult[],
): Promise<BackupRecord> {
  cp.logger.error('backup failed', { backup: record.id, reason });
  const finished = await finishRecord(cp, record.id, {
    status: 'FAILED',
    error: reason,
    ...(targets ? { targets } : {}),
  });
  await cp.audit.append(
    { principal: 'backup-worker' },
    {
      action: 'backup.finish',
      resource: `backup/${record.id}`,
      details: { status: 'FAILED' },
    },
  );
  return finished;
}

/** A target's part of the run, from the mirror's report; its failure in full goes to the log. */
function recordMember(
  cp: ControlPlane,
  backupId: string,
  results: Map<string, TargetResult>,
  member: MirrorMemberResult,
  succeeded: boolean,
): void {
  const before = results.get(member.id)!;
  results.set(member.id, {
    ...before,
    status: succeeded ? 'SUCCESS' : 'FAILED',
    bytesWritten: member.bytesWritten,
    ...(member.finishedAt ? { finishedAt: member.finishedAt.toISOString() } : {}),
    ...(member.error ? { error: member.error } : {}),
  });
  if (member.failure)
    cp.logger.warn('target failed', { backup: backupId, target: member.id, error: member.failure.message });
}

function failed(
  targetId: string,
  name: string,
  targetType: string,
  kind: string,
  message: string,
): TargetResult {
  return { targetId, name, targetType, status: 'FAILED', error: { kind, message } };
}

/** The newest restore point (not SCHEMA) older than `backupId` that every one of `targets` holds. */
function parentFor(
  cp: ControlPlane,
  backupId: string,
  targets: readonly string[],
): Promise<string | undefined> {
  const holds = (backup: BackupRecord) =>
    targets.every((id) => backup.targets.some((t) => t.targetId === id && t.status === 'SUCCESS'));
  return newestRestorePoint(cp, (backup) => backup.type !== 'SCHEMA' && holds(backup), {
    before: backupId,
  }).then((found) => found?.id);
}
