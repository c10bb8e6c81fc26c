import { createHash } from 'node:crypto';
import { isNotFound, StorageError } from '../storage/storage.ts';
import { referencedChunks } from './backup.ts';
import type { ProgressListener } from './progress.ts';
import { changeLines } from './change-applier.ts';
import type { MasterKey } from './crypto.ts';
import { CorruptDataError, EngineError, RepositoryLockedError } from './errors.ts';
import {
  conflicts,
  describeLocks,
  LOCK_STALE_MS,
  readLocks,
  staleReason,
  type Lock,
  type LockKind,
} from './locks.ts';
import { isFlagged, type BackupType, type Manifest } from './manifest.ts';
import { tocOf } from './postgres.ts';
import { keys, listKeys, parsePack, type BlobLocation, type Repository } from './repository.ts';
import { readStream } from './restore.ts';

export interface BackupSummary {
  readonly id: string;
  readonly type: BackupType;
  readonly parent?: string;
  readonly restorePoint: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly tables: number;
  readonly rows: number;
  readonly files: number;
  readonly bytesRead: number;
  readonly bytesStored: number;
  readonly review?: string;
  readonly tags?: Readonly<Record<string, string>>;
}

/**
 * Every backup's summary, oldest first. A manifest that cannot be read (damaged, or sealed under another
 * key's material) is skipped and named in `unreadable`: one bad object does not hide the others.
 */
export async function listBackups(
  repository: Repository,
  unreadable: Problem[] = [],
): Promise<BackupSummary[]> {
  const summaries: BackupSummary[] = [];
  for (const id of await repository.backupIds()) {
    const manifest = await readableManifest(repository, id, unreadable);
    if (manifest) summaries.push(summarize(manifest));
  }
  return summaries;
}

/** The manifest, or undefined (with the problem recorded) when it is damaged. */
export async function readableManifest(
  repository: Repository,
  id: string,
  unreadable: Problem[],
): Promise<Manifest | undefined> {
  try {
    return await repository.loadManifest(id);
  } catch (error) {
    if (!(error instanceof CorruptDataError) && !(error instanceof SyntaxError)) throw error;
    unreadable.push({ object: keys.manifest(id), message: error.message });
    return undefined;
  }
}

/** The newest backup to restore data from: not flagged for review, not SCHEMA (structure only). */
export async function newestRestorePoint(
  repository: Repository,
  unreadable: Problem[] = [],
): Promise<BackupSummary | undefined> {
  for (const id of (await repository.backupIds()).reverse()) {
    const manifest = await readableManifest(repository, id, unreadable);
    if (manifest && !isFlagged(manifest) && manifest.type !== 'SCHEMA') return summarize(manifest);
  }
  return undefined;
}

export function summarize(manifest: Manifest): BackupSummary {
  return {
    id: manifest.id,
    type: manifest.type,
    ...(manifest.parent ? { parent: manifest.parent } : {}),
    restorePoint: manifest.restorePoint,
    startedAt: manifest.startedAt,
    finishedAt: manifest.finishedAt,
    tables: manifest.database?.tables.length ?? 0,
    rows: manifest.database?.tables.reduce((sum, table) => sum + table.rows, 0) ?? 0,
    files: manifest.files?.entries.filter((entry) => entry.type === 'file').length ?? 0,
    bytesRead: manifest.stats.bytesRead,
    bytesStored: manifest.stats.bytesStored,
    ...(isFlagged(manifest) ? { review: manifest.review!.reason } : {}),
    ...(manifest.tags ? { tags: manifest.tags } : {}),
  };
}

export interface Problem {
  /** The stored object at fault: a key, or `chunk <id> in <pack>`. */
  readonly object: string;
  readonly message: string;
}

export interface VerifyReport {
  readonly backupId: string;
  /** No problem in anything the backup uses. */
  readonly ok: boolean;
  /**
   * Every chunk the backup needs has a good copy and its schema archives are accepted: it restores, even
   * where `ok` is false because a copy it did not need was found damaged on the way.
   */
  readonly restorable: boolean;
  readonly packs: number;
  readonly chunks: number;
  readonly bytes: number;
  /** In the order found: the first is the first corrupt object. */
  readonly problems: readonly Problem[];
  /** What the problems break: `table public.users`, `file uploads/a.png`, `pre-data archive`… */
  readonly brokenItems: readonly string[];
}

/** What reading one pack found. */
interface PackVerdict {
  readonly problems: readonly Problem[];
  readonly bytes: number;
  /** Chunks whose copy in this pack does not open (all of them when the pack is missing). */
  readonly bad: ReadonlySet<string>;
}

/**
 * The packs read so far and what each held, so that verifying every backup of a repository reads each pack
 * once. Keeps verdicts, not pack bodies.
 */
export class VerifySession {
  readonly repository: Repository;
  private readonly verdicts = new Map<string, PackVerdict>();
  private loaded: Promise<Map<string, readonly BlobLocation[]>> | undefined;
  bytes = 0;

  constructor(repository: Repository) {
    this.repository = repository;
  }

  index(): Promise<Map<string, readonly BlobLocation[]>> {
    this.loaded ??= this.repository.loadIndex(true);
    return this.loaded;
  }

  /** Reads a pack whole: its SHA-256 against its name, its header, and every blob the index places in it. */
  async check(pack: string, onProgress?: ProgressListener): Promise<PackVerdict> {
    const known = this.verdicts.get(pack);
    if (known) return known;
    const key = keys.pack(pack);
    const blobs = await this.repository.blobsOf(pack);
    const problems: Problem[] = [];
    const bad = new Set<string>();
    let body: Buffer;
    try {
      body = await this.repository.storage.read(key);
    } catch (error) {
      if (!(error instanceof StorageError)) throw error;
      const verdict = {
        problems: [{ object: key, message: isNotFound(error) ? `${key} is missing` : error.message }],
        bytes: 0,
        bad: new Set(blobs.map((blob) => blob.id)),
      };
      this.verdicts.set(pack, verdict);
      return verdict;
    }
    this.bytes += body.length;
    onProgress?.({ phase: 'verify', item: key, bytes: this.bytes });
    if (createHash('sha256').update(body).digest('hex') !== pack)
      problems.push({ object: key, message: `${key} does not match its SHA-256 name (altered or damaged)` });
    try {
      parsePack(this.repository, key, body);
    } catch (error) {
      problems.push({ object: key, message: (error as Error).message });
    }
    for (const blob of blobs) {
      try {
        if (blob.offset + blob.length > body.length)
          throw new CorruptDataError(
            `chunk ${blob.id} lies past the end of ${key}`,
            `chunk ${blob.id} in ${key}`,
          );
        this.repository.openBlob(blob.id, body.subarray(blob.offset, blob.offset + blob.length), pack);
      } catch (error) {
        if (!(error instanceof CorruptDataError)) throw error;
        problems.push({ object: error.object, message: error.message });
        bad.add(blob.id);
      }
    }
    const verdict = { problems, bytes: body.length, bad };
    this.verdicts.set(pack, verdict);
    return verdict;
  }
}

/**
 * Reads every pack the backup uses, whole: checks the pack's SHA-256 against its name, authenticates every
 * chunk in it and checks it against its id, and has `pg_restore --list` accept the reassembled schema
 * archives. A chunk whose copy is damaged or missing is looked for in the other packs that hold it (an older
 * FULL stores its own copy). Corruption anywhere in a pack, in the manifest or in an index is found and named.
 */
export async function verify(
  repository: Repository,
  backupId: string,
  onProgress?: ProgressListener,
  session = new VerifySession(repository),
): Promise<VerifyReport> {
  const problems: Problem[] = [];
  const seen = new Set<string>();
  const report = (found: readonly Problem[]) => {
    for (const problem of found) {
      const id = `${problem.object}\n${problem.message}`;
      if (seen.has(id)) continue;
      seen.add(id);
      problems.push(problem);
    }
  };
  const manifest = await repository.loadManifest(backupId);
  const index = await session.index();
  report(repository.indexProblems.map((error) => ({ object: error.object, message: error.message })));
  const bad = new Set<string>();
  // The copies in the packs this backup wrote are tried first: each backup is judged by its own data.
  const own = new Set(await repository.packsWrittenBy(backupId));
  const copiesOf = (chunk: string) => {
    const copies = index.get(chunk) ?? [];
    return copies.some((copy) => own.has(copy.pack))
      ? [...copies.filter((copy) => own.has(copy.pack)), ...copies.filter((copy) => !own.has(copy.pack))]
      : copies;
  };
  let pending: string[] = [];
  for (const chunk of referencedChunks(manifest)) {
    if ((index.get(chunk) ?? []).length > 0) pending.push(chunk);
    else {
      report([
        {
          object: `chunk ${chunk}`,
          message: `chunk ${chunk} is in no index: its pack or index file is missing`,
        },
      ]);
      bad.add(chunk);
    }
  }
  const chunks = pending.length;
  const packs = new Set<string>();
  let bytes = 0;
  // The first copy of every chunk; then, for the chunks whose copy failed, the next copy; and so on.
  for (let copy = 0; pending.length > 0; copy++) {
    const byPack = new Map<string, string[]>();
    for (const chunk of pending) {
      const where = copiesOf(chunk)[copy];
      if (!where) bad.add(chunk);
      else byPack.set(where.pack, [...(byPack.get(where.pack) ?? []), chunk]);
    }
    pending = [];
    for (const [pack, wanted] of [...byPack].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const verdict = await session.check(pack, onProgress);
      if (!packs.has(pack)) bytes += verdict.bytes;
      packs.add(pack);
      report(verdict.problems);
      pending.push(...wanted.filter((chunk) => verdict.bad.has(chunk)));
    }
  }
  // The packs this backup wrote, also where other copies served: their damage is reported (not counted
  // against restoring this backup) so that no stored byte goes unchecked.
  for (const pack of own) {
    if (packs.has(pack)) continue;
    const verdict = await session.check(pack, onProgress);
    bytes += verdict.bytes;
    packs.add(pack);
    report(verdict.problems);
  }
  const broken = brokenItems(manifest, bad);
  const database = manifest.database;
  for (const [label, record] of [
    ['pre-data archive', database?.preData],
    ['post-data archive', database?.postData],
    ['schema archive', database?.schemaOnly],
  ] as const) {
    if (!record || broken.includes(label)) continue;
    try {
      await tocOf(readStream(repository, record, label));
    } catch (error) {
      report([
        { object: label, message: `pg_restore --list refused the ${label}: ${(error as Error).message}` },
      ]);
      broken.push(label);
    }
  }
  // Change-stream backups: every change set reads back as the transactions it recorded.
  for (const set of manifest.changes?.sets ?? []) {
    const label = `changes of backup ${set.backupId}`;
    if (set.records.chunks.some((chunk) => bad.has(chunk))) {
      broken.push(label);
      continue;
    }
    try {
      let transactions = 0;
      for await (const line of changeLines(readStream(repository, set.records, label)))
        if ('b' in line) transactions++;
      if (transactions !== set.transactions)
        throw new CorruptDataError(
          `holds ${transactions} transactions, not the ${set.transactions} recorded`,
          label,
        );
    } catch (error) {
      report([{ object: label, message: `the ${label} do not read back: ${(error as Error).message}` }]);
      broken.push(label);
    }
  }
  return {
    backupId,
    ok: problems.length === 0,
    restorable: broken.length === 0 && bad.size === 0,
    packs: packs.size,
    chunks,
    bytes,
    problems,
    brokenItems: broken,
  };
}

/**
 * Verifies every backup of the repository, each pack read once: which backups a damaged or lost pack breaks,
 * and which still restore (from other copies). Unreadable manifests are named in `unreadable`.
 */
export async function verifyAll(
  repository: Repository,
  onProgress?: ProgressListener,
): Promise<{ reports: VerifyReport[]; unreadable: Problem[] }> {
  const unreadable: Problem[] = [];
  const session = new VerifySession(repository);
  const reports: VerifyReport[] = [];
  for (const summary of await listBackups(repository, unreadable))
    reports.push(await verify(repository, summary.id, onProgress, session));
  return { reports, unreadable };
}

function brokenItems(manifest: Manifest, bad: Set<string>): string[] {
  if (bad.size === 0) return [];
  const hit = (chunks: readonly string[] | undefined) => (chunks ?? []).some((chunk) => bad.has(chunk));
  const items: string[] = [];
  const database = manifest.database;
  if (hit(database?.preData?.chunks)) items.push('pre-data archive');
  if (hit(database?.postData?.chunks)) items.push('post-data archive');
  if (hit(database?.schemaOnly?.chunks)) items.push('schema archive');
  for (const table of database?.tables ?? [])
    if (hit(table.chunks)) items.push(`table ${table.schema}.${table.name}`);
  for (const entry of manifest.files?.entries ?? []) if (hit(entry.chunks)) items.push(`file ${entry.path}`);
  return items;
}

export interface ExclusiveOptions {
  /** How long to wait for running operations (backups) to finish (default 0: refuse at once). */
  readonly lockWaitMs?: number;
  /** A lock from another machine not refreshed for this long is stale (default 30 min, locks.ts). */
  readonly staleLockMs?: number;
  readonly now?: () => Date;
}

/** Runs `work` under an exclusive lock (nothing else runs on the repository meanwhile). */
async function exclusively<T>(
  repository: Repository,
  operation: string,
  options: ExclusiveOptions & { readonly kind?: LockKind },
  work: (lock: Lock) => Promise<T>,
): Promise<T> {
  const lock = await repository.lock(operation, {
    kind: options.kind ?? 'exclusive',
    ...(options.lockWaitMs === undefined ? {} : { waitMs: options.lockWaitMs }),
    ...(options.staleLockMs === undefined ? {} : { staleMs: options.staleLockMs }),
    ...(options.now ? { now: options.now } : {}),
  });
  try {
    return await work(lock);
  } finally {
    await lock.release().catch(() => undefined);
  }
}

/**
 * Confirms a backup flagged for review (an operator checked that the database really shrank): its manifest
 * is rewritten with who confirmed it and when, and it becomes a restore point. Under an exclusive lock.
 */
export async function confirmReview(
  repository: Repository,
  backupId: string,
  by: string,
  options: ExclusiveOptions = {},
): Promise<Manifest> {
  return exclusively(repository, 'confirm', options, async (lock) => {
    const manifest = await repository.loadManifest(backupId);
    if (!isFlagged(manifest))
      throw new EngineError(`backup ${backupId} is not flagged for review: nothing to confirm`);
    const confirmed: Manifest = {
      ...manifest,
      review: { ...manifest.review!, confirmed: { at: (options.now?.() ?? new Date()).toISOString(), by } },
    };
    await lock.check();
    await repository.writeManifest(confirmed);
    return confirmed;
  });
}

/** Removes backups from the repository (their manifests); `gc` then frees the data no other backup uses. */
export async function forget(
  repository: Repository,
  backupIds: readonly string[],
  options: ExclusiveOptions = {},
): Promise<void> {
  for (const id of backupIds) await repository.loadManifest(id);
  await exclusively(repository, 'forget', options, async (lock) => {
    await lock.check();
    await repository.storage.delete(backupIds.map((id) => keys.manifest(id)));
  });
}

export interface GcOptions extends ExclusiveOptions {
  readonly dryRun?: boolean;
}

export interface GcReport {
  readonly deletedPacks: number;
  readonly deletedIndexes: number;
  readonly rewrittenIndexes: number;
  readonly bytesFreed: number;
  readonly keptPacks: number;
  readonly staleLocks: number;
  readonly leftovers: number;
}

/**
 * Deletes packs that no backup references — the leftovers of interrupted runs, and data of forgotten
 * backups — and the index entries for them, under an exclusive lock: it refuses (or waits, `lockWaitMs`) while
 * a backup holds its shared lock, since that backup's packs are not referenced yet, and no backup starts
 * while it runs. The locks are checked again before anything is deleted. Stale locks are removed.
 */
export async function gc(repository: Repository, options: GcOptions = {}): Promise<GcReport> {
  // A dry run deletes nothing: a shared lock keeps it from racing a real gc without holding up backups.
  return exclusively(
    repository,
    'gc',
    { ...options, kind: options.dryRun ? 'shared' : 'exclusive' },
    (lock) => collect(repository, options, lock),
  );
}

async function collect(repository: Repository, options: GcOptions, lock: Lock): Promise<GcReport> {
  const now = (options.now ?? (() => new Date()))();
  const staleMs = options.staleLockMs ?? LOCK_STALE_MS;
  const referenced = new Set<string>();
  for (const id of await repository.backupIds())
    for (const chunk of referencedChunks(await repository.loadManifest(id))) referenced.add(chunk);

  const livePacks = new Set<string>();
  let deletedIndexes = 0;
  let rewrittenIndexes = 0;
  for (const key of await listKeys(repository.storage, 'index/')) {
    const file = await repository.readIndexFile(key);
    const kept = file.packs.filter((pack) => pack.blobs.some((blob) => referenced.has(blob.id)));
    kept.forEach((pack) => livePacks.add(pack.id));
    if (options.dryRun || kept.length === file.packs.length) continue;
    if (kept.length === 0) {
      await repository.storage.delete([key]);
      deletedIndexes++;
    } else {
      await repository.writeIndexFile(key.slice('index/'.length), { packs: kept });
      rewrittenIndexes++;
    }
  }
  let deletedPacks = 0;
  let keptPacks = 0;
  let bytesFreed = 0;
  const dead: string[] = [];
  for await (const object of repository.storage.list('data/')) {
    const id = object.key.split('/').pop()!;
    if (livePacks.has(id)) {
      keptPacks++;
      continue;
    }
    dead.push(object.key);
    deletedPacks++;
    bytesFreed += object.size;
  }
  let leftovers = 0;
  const stale = (await readLocks(repository.storage)).filter(
    (other) => other.key !== lock.key && staleReason(other, now, staleMs) !== undefined,
  );
  if (!options.dryRun) {
    // Checked again before anything is deleted: this lock still holds and no one else's is live.
    await lock.check();
    const live = conflicts(await readLocks(repository.storage), 'exclusive', lock.key, now, staleMs);
    if (live.length > 0)
      throw new RepositoryLockedError(
        `the repository is in use (${describeLocks(live)}); retry when it finishes`,
      );
    await repository.storage.delete(dead);
    await repository.storage.delete(stale.map((other) => other.key));
    leftovers = (await repository.storage.removeLeftovers?.(new Date(now.getTime() - staleMs))) ?? 0;
    await repository.loadIndex(true);
  }
  return {
    deletedPacks,
    deletedIndexes,
    rewrittenIndexes,
    bytesFreed,
    keptPacks,
    staleLocks: stale.length,
    leftovers,
  };
}

export async function rekey(
  repository: Repository,
  newMaster: MasterKey,
  options: ExclusiveOptions = {},
): Promise<{ keyId: string; removed: readonly string[] }> {
  return exclusively(repository, 'rekey', options, () => repository.rekey(newMaster));
}
