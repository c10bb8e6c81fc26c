import {
  changeStreamReadiness,
  createSlot,
  lsnValue,
  readChanges,
  schemaFingerprint,
  SchemaChangedError,
  slotStatus,
  type ChangeStream,
  type ReadSummary,
} from './changes.ts';
import { CorruptDataError, EngineError, SourceError } from './errors.ts';
import { hardLinkGuard, readFileStream, walk } from './files.ts';
import {
  isBackupId,
  isFlagged,
  newBackupId,
  type BackupType,
  type ChangesManifest,
  type FileEntry,
  type Manifest,
  type PieceRecord,
  type StreamRecord,
} from './manifest.ts';
import {
  connect,
  dumpArchive,
  openSnapshot,
  readSequences,
  splitRanges,
  tocOf,
  withTool,
  type DatabaseConnection,
  type Snapshot,
  type Tool,
} from './postgres.ts';
import { describeLocks, type Lock } from './locks.ts';
import { addStats, ChunkSink, type IndexFile, type Repository, type WriteStats } from './repository.ts';
import type { ProgressEvent, ProgressListener } from './progress.ts';
import { readStream } from './restore.ts';
import { collectParts, planParts, type FanOut, type FanOutPlan } from './fanout.ts';
import { dumpPieces, piecesOf, tableRecords, tableName } from './table-dump.ts';
import { sealingThreads } from './seal-pool.ts';

/** Tables larger than this are read in key ranges by default. */
export const DEFAULT_SPLIT_BYTES = 1024 ** 3;

export interface BackupSource {
  readonly database?: DatabaseConnection;
  /** A directory tree to back up with the database. */
  readonly files?: string;
}

export interface BackupOptions {
  /** The backup's id, when the caller named it beforehand (a catalog entry); default a new one. */
  readonly id?: string;
  readonly type: BackupType;
  readonly source: BackupSource;
  /** For INCREMENTAL: the parent's id; default the newest good backup with the same `series` tag. */
  readonly parent?: string;
  readonly tags?: Readonly<Record<string, string>>;
  /** Flag the backup for review when its data is below this fraction of its parent's (default 0.5). */
  readonly reviewBelow?: number;
  /** Tables dumped at once (default 2: the machine's two cores, one for the server, one for us). */
  readonly tableConcurrency?: number;
  /**
   * Threads compressing and sealing new chunks (default: one per table read at once, leaving a core free).
   * 0: no threads at all — streams are cut in this thread and chunks sealed on zlib's pool; otherwise each
   * stream read at once is also cut on a thread of its own.
   */
  readonly threads?: number;
  readonly onProgress?: ProgressListener;
  readonly now?: () => Date;
  /** Target pack size in bytes (default 8 MiB). */
  readonly packSize?: number;
  /** Chunks compressed and sealed at once (default 4). */
  readonly chunkConcurrency?: number;
  /**
   * Change-stream mode: a FULL (re)creates this slot and dumps in its snapshot; an INCREMENTAL stores the
   * changes read from it since its parent. Where the database cannot do it, dump mode, with a notice.
   */
  readonly changeStream?: ChangeStream;
  /**
   * Directories no file of the source may be a hard link into (the data directory: a link made there would
   * back up the keys); the source is refused when one is.
   */
  readonly protectedDirectories?: readonly string[];
  /** How long to wait for an exclusive operation (gc, forget, rekey) to finish before starting (default 10 min). */
  readonly lockWaitMs?: number;
  /** A FULL's tables read by other workers, in this backup's snapshot (fanout.ts). */
  readonly fanOut?: FanOut;
  /**
   * Tables larger than this on disk (with a one-column key) are read in key ranges, several COPYs at once,
   * and restored the same way (default 1 GiB; 0: never).
   */
  readonly splitBytes?: number;
  /** Told which operations it waits for, while it waits. */
  readonly onLockWait?: (holders: string) => void;
}

export interface BackupResult {
  readonly manifest: Manifest;
  /** Why the type or mode differs from the one asked for (an INCREMENTAL with no parent becomes a FULL…). */
  readonly notice?: string;
  /** Set when an INCREMENTAL was taken as a FULL because the schema changed: what changed. */
  readonly schemaChanged?: string;
  /** Set when change-stream mode was asked for and the database cannot do it: why (dump mode was used). */
  readonly streamUnavailable?: string;
}

/** A change-stream INCREMENTAL that found it cannot go on: the backup is taken again as a FULL. */
class RestartAsFull extends Error {
  readonly schemaChanged: boolean;
  constructor(message: string, schemaChanged: boolean) {
    super(message);
    this.schemaChanged = schemaChanged;
  }
}

/**
 * One backup: reads the source once, stores new chunks, then writes the index and, last, the manifest. Until
 * the manifest exists the backup does not exist: an interrupted run leaves only unreferenced packs, which
 * `gc` removes.
 */
export async function backup(repository: Repository, options: BackupOptions): Promise<BackupResult> {
  try {
    return await backupOnce(repository, options, []);
  } catch (error) {
    if (!(error instanceof RestartAsFull)) throw error;
    const result = await backupOnce(repository, { ...options, type: 'FULL' }, [
      `${error.message}: this INCREMENTAL was taken as a FULL`,
    ]);
    return error.schemaChanged ? { ...result, schemaChanged: error.message } : result;
  }
}

async function backupOnce(
  repository: Repository,
  options: BackupOptions,
  notices: string[],
): Promise<BackupResult> {
  const now = options.now ?? (() => new Date());
  const startedAt = now();
  if (options.id !== undefined && !isBackupId(options.id))
    throw new EngineError(`not a backup id: ${JSON.stringify(options.id.slice(0, 40))}`);
  const id = options.id ?? newBackupId(startedAt);
  const { source } = options;
  if (!source.database && !source.files)
    throw new SourceError('nothing to back up: give a database, a files root, or both');
  if (options.type === 'SCHEMA' && !source.database)
    throw new SourceError('a SCHEMA backup needs a database');

  // The shared lock comes before the parent is chosen: gc cannot then delete the data this backup builds on.
  const lock = await repository.lock(`backup ${id}`, {
    kind: 'shared',
    waitMs: options.lockWaitMs ?? 10 * 60_000,
    ...(options.onLockWait ? { onWait: (holders) => options.onLockWait!(describeLocks(holders)) } : {}),
    ...(options.now ? { now: options.now } : {}),
  });
  try {
    return await backupLocked(repository, options, notices, { id, startedAt, lock });
  } finally {
    await lock.release().catch(() => undefined);
  }
}

async function backupLocked(
  repository: Repository,
  options: BackupOptions,
  notices: string[],
  { id, startedAt, lock }: { id: string; startedAt: Date; lock: Lock },
): Promise<BackupResult> {
  const now = options.now ?? (() => new Date());
  const { source } = options;
  let type = options.type;
  let parent: Manifest | undefined;
  if (type === 'INCREMENTAL') {
    parent = await findParent(repository, options.parent, options.tags?.series);
    if (!parent) {
      type = 'FULL';
      notices.push('no earlier backup to build on: this INCREMENTAL was taken as a FULL');
    }
  }
  // Change-stream mode: go on from the parent's stream, or start one with this FULL, or say why not.
  let mode: 'dump' | 'slot' | 'changes' = 'dump';
  const stream = options.changeStream;
  let schemaChanged: string | undefined;
  let streamUnavailable: string | undefined;
  if (stream && source.database && type !== 'SCHEMA') {
    if (type === 'INCREMENTAL' && parent?.changes?.slot === stream.slot) {
      const stop = await continuationProblem(source.database, parent);
      if (stop === undefined) mode = 'changes';
      else {
        type = 'FULL';
        parent = undefined;
        notices.push(`${stop.reason}: this INCREMENTAL was taken as a FULL`);
        if (stop.schemaChanged) schemaChanged = stop.reason;
      }
    }
    if (mode === 'dump') {
      const readiness = await changeStreamReadiness(source.database);
      if (!readiness.available) {
        streamUnavailable = `changes cannot be captured from this database (${readiness.reasons.join('; ')})`;
        notices.push(
          `${streamUnavailable}: ${type === 'INCREMENTAL' ? 'this INCREMENTAL deduplicates a dump instead' : 'no change stream was started'}`,
        );
      } else {
        if (type === 'INCREMENTAL') {
          type = 'FULL';
          parent = undefined;
          notices.push('a change stream starts with a FULL: this INCREMENTAL was taken as a FULL');
        }
        mode = 'slot';
      }
    }
  }
  // A FULL is self-contained: it shares no chunk with earlier backups. An INCREMENTAL stores only chunks
  // that its parent does not reference (the parent's manifest lists every chunk it needs, so that is the chain).
  const known = parent ? referencedChunks(parent) : new Set<string>();
  const sink = new ChunkSink(
    repository,
    { has: (chunk) => known.has(chunk) },
    {
      ...(options.packSize === undefined ? {} : { packSize: options.packSize }),
      ...(options.chunkConcurrency === undefined ? {} : { inFlight: options.chunkConcurrency }),
      threads: options.threads ?? sealingThreads(options.tableConcurrency ?? 2),
      cutters: options.threads === 0 ? 0 : (options.tableConcurrency ?? 2),
    },
  );
  try {
    let bytes = 0;
    const progress = (phase: ProgressEvent['phase'], item?: string) => (size: number) => {
      bytes += size;
      options.onProgress?.({ phase, ...(item === undefined ? {} : { item }), bytes });
    };

    let database: Manifest['database'];
    let changes: ChangesManifest | undefined;
    let fromParts: WriteStats | undefined;
    let restorePoint = startedAt.toISOString();
    if (source.database && mode === 'changes') {
      ({ changes, restorePoint } = await backupChanges(
        sink,
        repository,
        source.database,
        id,
        parent!,
        progress('database', 'changes'),
      ));
      database = parent!.database;
    } else if (source.database) {
      let parts;
      ({ database, changes, parts } = await backupDatabase(sink, repository, source.database, {
        id,
        type,
        jobs: options.tableConcurrency ?? 2,
        progress,
        stream: mode === 'slot' ? stream : undefined,
        // A fan-out reads a FULL's tables elsewhere; an INCREMENTAL (deduplicated against its parent) here
        fanOut: type === 'FULL' ? options.fanOut : undefined,
        splitBytes: options.splitBytes ?? DEFAULT_SPLIT_BYTES,
      }));
      if (parts) {
        fromParts = parts.stats;
        repository.remember(parts.packs);
      }
      restorePoint = database.snapshotTime;
    }
    // A SCHEMA backup is the database's structure only: no rows, and no files.
    if (source.files && type === 'SCHEMA')
      notices.push('a SCHEMA backup holds the database structure only: the files were not backed up');
    const files =
      source.files && type !== 'SCHEMA'
        ? await backupFiles(sink, repository, source.files, parent, progress, options.protectedDirectories)
        : undefined;

    options.onProgress?.({ phase: 'finishing', bytes });
    const packs = await sink.flush();
    // Nothing is made visible unless the lock held throughout: a lost lock means gc may have taken packs.
    await lock.check();
    if (packs.length > 0) {
      await repository.writeIndexFile(id, { packs });
      repository.remember(packs);
    }
    if (database && mode !== 'changes') await checkArchives(repository, database);
    // A FULL is compared with the previous FULL of its series (an INCREMENTAL with its parent)
    const reference =
      parent ??
      (type === 'FULL'
        ? await newestOfSeries(repository, options.tags?.series, (manifest) => manifest.type === 'FULL')
        : undefined);
    const review = reviewReason(database, files, reference, options.reviewBelow ?? 0.5);
    const manifest: Manifest = {
      format: 'dr-backup',
      version: 1,
      id,
      type,
      ...(parent ? { parent: parent.id } : {}),
      startedAt: startedAt.toISOString(),
      finishedAt: now().toISOString(),
      restorePoint,
      ...(database ? { database } : {}),
      ...(files ? { files } : {}),
      ...(changes ? { changes } : {}),
      stats: fromParts ? addStats(sink.stats, fromParts) : { ...sink.stats },
      ...(review ? { review: { reason: review } } : {}),
      ...(options.tags ? { tags: options.tags } : {}),
    };
    await lock.check();
    await repository.writeManifest(manifest);
    return {
      manifest,
      ...(notices.length > 0 ? { notice: notices.join('; ') } : {}),
      ...(schemaChanged ? { schemaChanged } : {}),
      ...(streamUnavailable ? { streamUnavailable } : {}),
    };
  } finally {
    await sink.close();
  }
}

async function findParent(
  repository: Repository,
  parentId: string | undefined,
  series: string | undefined,
): Promise<Manifest | undefined> {
  if (parentId !== undefined) return repository.loadManifest(parentId);
  return newestOfSeries(repository, series, (manifest) => manifest.type !== 'SCHEMA');
}

/**
 * The newest backup of a series that is no flagged one and passes `wanted`; manifests that cannot be read
 * are passed over (verify names them).
 */
async function newestOfSeries(
  repository: Repository,
  series: string | undefined,
  wanted: (manifest: Manifest) => boolean,
): Promise<Manifest | undefined> {
  for (const candidate of (await repository.backupIds()).reverse()) {
    let manifest: Manifest;
    try {
      manifest = await repository.loadManifest(candidate);
    } catch (error) {
      if (error instanceof CorruptDataError) continue;
      throw error;
    }
    if (!isFlagged(manifest) && manifest.tags?.series === series && wanted(manifest)) return manifest;
  }
  return undefined;
}

export function referencedChunks(manifest: Manifest): Set<string> {
  const all = new Set<string>();
  const add = (record: { chunks?: readonly string[] } | undefined) =>
    record?.chunks?.forEach((chunk) => all.add(chunk));
  add(manifest.database?.preData);
  add(manifest.database?.postData);
  add(manifest.database?.schemaOnly);
  manifest.database?.tables.forEach(add);
  manifest.files?.entries.forEach(add);
  manifest.changes?.sets.forEach((set) => add(set.records));
  return all;
}

/** Why an INCREMENTAL cannot go on from its parent's change stream (undefined when it can). */
async function continuationProblem(
  connection: DatabaseConnection,
  parent: Manifest,
): Promise<{ reason: string; schemaChanged?: boolean } | undefined> {
  const changes = parent.changes!;
  const slot = await slotStatus(connection, changes.slot);
  if (!slot) return { reason: `replication slot ${changes.slot} no longer exists` };
  if (slot.walStatus === 'lost')
    return { reason: `replication slot ${changes.slot} lost WAL it needed (max_slot_wal_keep_size)` };
  if (lsnValue(slot.confirmedLsn) > lsnValue(changes.endLsn))
    return {
      reason: `replication slot ${changes.slot} has moved past backup ${parent.id} (${slot.confirmedLsn} > ${changes.endLsn})`,
    };
  const client = await connect(connection);
  try {
    if ((await schemaFingerprint(client)) !== changes.schema)
      return { reason: `the schema changed since backup ${changes.base}`, schemaChanged: true };
  } finally {
    await client.end();
  }
  return undefined;
}

/**
 * An INCREMENTAL in change-stream mode: the changes committed since the parent's `endLsn`, peeked from the
 * slot (which moves only when the caller confirms the committed backup), then the sequences. A schema change
 * seen in the stream, or by the fingerprint after reading, restarts the backup as a FULL.
 */
async function backupChanges(
  sink: ChunkSink,
  repository: Repository,
  connection: DatabaseConnection,
  id: string,
  parent: Manifest,
  onBytes: (size: number) => void,
): Promise<{ changes: ChangesManifest; restorePoint: string }> {
  const before = parent.changes!;
  const expected = new Map(
    (parent.database?.tables ?? []).map((table) => [`${table.schema}.${table.name}`, table.columns]),
  );
  const summary: ReadSummary = {
    transactions: 0,
    changes: 0,
    endLsn: before.endLsn,
    at: '',
    relations: new Map(),
  };
  let records: StreamRecord;
  try {
    ({ record: records } = await sink.store(
      readChanges(connection, before, before.endLsn, summary, expected),
      { onBytes },
    ));
  } catch (error) {
    if (error instanceof SchemaChangedError) throw new RestartAsFull(error.message, true);
    throw error;
  }
  const client = await connect(connection);
  let sequences;
  try {
    if ((await schemaFingerprint(client)) !== before.schema)
      throw new RestartAsFull(`the schema changed since backup ${before.base}`, true);
    sequences = await readSequences(client);
  } finally {
    await client.end();
  }
  return {
    restorePoint: summary.at,
    changes: {
      ...before,
      endLsn: summary.endLsn,
      sets: [
        ...before.sets,
        {
          backupId: id,
          startLsn: before.endLsn,
          endLsn: summary.endLsn,
          records,
          transactions: summary.transactions,
          changes: summary.changes,
          ...(summary.firstCommit ? { firstCommit: summary.firstCommit } : {}),
          ...(summary.lastCommit ? { lastCommit: summary.lastCommit } : {}),
          sequences,
        },
      ],
    },
  };
}

async function storeTool(
  sink: ChunkSink,
  tool: Tool,
  onBytes: (size: number) => void,
): Promise<StreamRecord> {
  const [{ record }] = await withTool(tool, Promise.all([sink.store(tool.stdout, { onBytes }), tool.done]));
  return record;
}

type ProgressFactory = (phase: ProgressEvent['phase'], item?: string) => (size: number) => void;

interface DatabaseDump {
  readonly id: string;
  readonly type: BackupType;
  /** Tables read at once. */
  readonly jobs: number;
  readonly progress: ProgressFactory;
  /** Change-stream mode: the slot to (re)create; the dump is its snapshot. */
  readonly stream?: ChangeStream | undefined;
  readonly fanOut?: FanOut | undefined;
  /** Tables larger than this are read in key ranges (0: never). */
  readonly splitBytes: number;
}

async function backupDatabase(
  sink: ChunkSink,
  repository: Repository,
  connection: DatabaseConnection,
  { id, type, jobs, progress, stream, fanOut, splitBytes }: DatabaseDump,
): Promise<{
  database: NonNullable<Manifest['database']>;
  changes?: ChangesManifest;
  /** What the parts of a fan-out stored. */
  parts?: { stats: WriteStats; packs: IndexFile['packs'] };
}> {
  let snapshot: Snapshot | undefined;
  let created: Awaited<ReturnType<typeof createSlot>> | undefined;
  try {
    if (stream) created = await createSlot(connection, stream);
    snapshot = await openSnapshot(connection, created?.snapshotId);
    const changes: ChangesManifest | undefined =
      stream && created
        ? {
            ...stream,
            base: id,
            startLsn: created.consistentPoint,
            endLsn: created.consistentPoint,
            schema: await snapshot.inSnapshot(schemaFingerprint),
            sets: [],
          }
        : undefined;
    const base = {
      serverVersion: snapshot.serverVersion,
      database: snapshot.database,
      snapshotTime: snapshot.time,
    };
    if (type === 'SCHEMA') {
      const schemaOnly = await storeTool(
        sink,
        dumpArchive(connection, 'schema-only', snapshot.id),
        progress('database', 'schema'),
      );
      return { database: { ...base, schemaOnly, tables: [], sequences: [] } };
    }
    const preData = await storeTool(
      sink,
      dumpArchive(connection, 'pre-data', snapshot.id),
      progress('database', 'pre-data'),
    );
    // Large tables are read in key ranges, several COPYs at once
    const tables =
      splitBytes > 0
        ? await snapshot.inSnapshot((client) => splitRanges(client, snapshot!.tables, splitBytes))
        : snapshot.tables;
    let pieces: PieceRecord[];
    let parts: Awaited<ReturnType<typeof collectParts>> | undefined;
    if (fanOut && fanOut.parts > 1) {
      // Other workers read the tables in this snapshot, which stays open (and the lock held) until they end
      const plan: FanOutPlan = {
        backupId: id,
        snapshotId: snapshot.id,
        parts: planParts(tables, fanOut.parts).map((group) => ({ pieces: group })),
      };
      await fanOut.run(plan);
      parts = await collectParts(repository, plan);
      pieces = parts.pieces;
    } else {
      pieces = await dumpPieces(sink, connection, snapshot.id, piecesOf(tables), jobs, (table) =>
        progress('database', tableName(table)),
      );
    }
    const postData = await storeTool(
      sink,
      dumpArchive(connection, 'post-data', snapshot.id),
      progress('database', 'post-data'),
    );
    return {
      database: {
        ...base,
        preData,
        postData,
        tables: tableRecords(tables, pieces),
        sequences: snapshot.sequences,
      },
      ...(changes ? { changes } : {}),
      ...(parts ? { parts: { stats: parts.stats, packs: parts.packs } } : {}),
    };
  } finally {
    await snapshot?.close();
    await created?.close();
  }
}

async function backupFiles(
  sink: ChunkSink,
  repository: Repository,
  root: string,
  parent: Manifest | undefined,
  progress: ProgressFactory,
  protectedDirectories: readonly string[] = [],
): Promise<NonNullable<Manifest['files']>> {
  const previous = new Map((parent?.files?.entries ?? []).map((entry) => [entry.path, entry]));
  const entries: FileEntry[] = [];
  const checkLink = hardLinkGuard(protectedDirectories);
  for await (const found of walk(root)) {
    await checkLink(found);
    const { absolute: _absolute, linked: _linked, ...entry } = found;
    if (found.type !== 'file') {
      entries.push(entry);
      continue;
    }
    // INCREMENTAL: a file whose size and mtime are unchanged since the parent is not read again.
    const before = previous.get(found.path);
    if (
      before?.type === 'file' &&
      before.size === found.size &&
      before.mtimeMs === found.mtimeMs &&
      before.chunks
    ) {
      entries.push({
        ...entry,
        chunks: before.chunks,
        ...(before.sha256 === undefined ? {} : { sha256: before.sha256 }),
      });
      continue;
    }
    const { record } = await sink.store(readFileStream(found), { onBytes: progress('files', found.path) });
    entries.push({ ...entry, size: record.size, chunks: record.chunks, sha256: record.sha256 });
  }
  return { root, entries };
}

/**
 * pg_dump can exit 0 having written nothing usable (a wrapper script, a full disk, a killed pipe): each
 * schema archive is read back from the repository and listed by `pg_restore --list`, so that such a run
 * fails now instead of making a backup that only verify rejects.
 */
async function checkArchives(
  repository: Repository,
  database: NonNullable<Manifest['database']>,
): Promise<void> {
  for (const [label, record] of [
    ['pre-data', database.preData],
    ['post-data', database.postData],
    ['schema', database.schemaOnly],
  ] as const) {
    if (!record) continue;
    if (record.size === 0)
      throw new SourceError(
        `pg_dump exited 0 but wrote an empty ${label} archive: nothing usable was backed up`,
      );
    try {
      await tocOf(readStream(repository, record, `${label} archive`));
    } catch (error) {
      throw new SourceError(
        `pg_dump exited 0 but its ${label} archive is not readable (truncated?): ${(error as Error).message}`,
      );
    }
  }
}

/**
 * An empty or shrunken backup is kept but flagged, never silently taken as the newest good restore point:
 * compared with `reference` (an INCREMENTAL's parent; a FULL's previous FULL of the same series), by data
 * bytes and by rows.
 */
function reviewReason(
  database: Manifest['database'],
  files: Manifest['files'],
  reference: Manifest | undefined,
  below: number,
): string | undefined {
  const what = reference ? `${reference.type} ${reference.id}` : '';
  if (database && !database.schemaOnly) {
    const size = database.tables.reduce((sum, table) => sum + table.size, 0);
    const rows = database.tables.reduce((sum, table) => sum + table.rows, 0);
    if (database.tables.length === 0 || rows === 0) return 'the database dump holds no rows';
    const before = reference?.database;
    if (before && !before.schemaOnly) {
      const beforeSize = before.tables.reduce((sum, table) => sum + table.size, 0);
      const beforeRows = before.tables.reduce((sum, table) => sum + table.rows, 0);
      if (beforeSize > 0 && size < beforeSize * below)
        return `the database data is ${size} bytes, under ${Math.round(below * 100)}% of the ${beforeSize} of ${what}`;
      if (beforeRows > 0 && rows < beforeRows * below)
        return `the database holds ${rows} rows, under ${Math.round(below * 100)}% of the ${beforeRows} of ${what}`;
    }
  }
  if (files) {
    const size = files.entries.reduce((sum, entry) => sum + entry.size, 0);
    const beforeFiles = reference?.files?.entries.reduce((sum, entry) => sum + entry.size, 0);
    if (beforeFiles !== undefined && beforeFiles > 0 && size < beforeFiles * below) {
      return `the files total ${size} bytes, under ${Math.round(below * 100)}% of the ${beforeFiles} of ${what}`;
    }
  }
  return undefined;
}
