import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import type pg from 'pg';
import { RestoreError } from './errors.ts';
import { finishEntries, globFilter, makeEntry, writeFile } from './files.ts';
import { ChangeApplier, changeLines } from './change-applier.ts';
import { isoToMicros } from './changes.ts';
import {
  isFlagged,
  rangeStreams,
  type Manifest,
  type SequenceRecord,
  type StreamRecord,
  type TableRecord,
} from './manifest.ts';
import {
  connect,
  digestTable,
  loadTable,
  qualified,
  restoreArchive,
  StagedArchive,
  userRelationCount,
  type DatabaseConnection,
} from './postgres.ts';
import type { ProgressListener } from './progress.ts';
import type { Repository } from './repository.ts';
import { rangesDigest } from './table-dump.ts';

/**
 * A stream's chunks in order (`Repository.readChunks`: neighbours read together, a few reads in flight). Every
 * chunk is authenticated and checked against its id (HMAC) before it is yielded, so corrupt data fails the
 * read and is never loaded. The whole stream is also checked against its recorded SHA-256 unless `digest` is
 * false — table loads skip that second pass: the chunk list comes from the authenticated manifest, and the
 * restore check reads the tables back.
 */
export async function* readStream(
  repository: Repository,
  record: Pick<StreamRecord, 'chunks' | 'sha256'>,
  what: string,
  options: { digest?: boolean } = {},
): AsyncGenerator<Buffer> {
  const hash = options.digest === false ? undefined : createHash('sha256');
  for await (const data of repository.readChunks(record.chunks)) {
    hash?.update(data);
    yield data;
  }
  if (hash && hash.digest('hex') !== record.sha256)
    throw new RestoreError(`${what}: the restored stream does not match its recorded SHA-256`);
}

/**
 * A table's rows as one COPY stream: its chunks, or, for a table stored in key ranges, each range in key
 * order, each checked against its own SHA-256 (a ranged table's `sha256` is of theirs).
 */
export async function* tableStream(
  repository: Repository,
  table: TableRecord,
  what: string,
): AsyncGenerator<Buffer> {
  if (!table.ranges) {
    yield* readStream(repository, table, what);
    return;
  }
  if (rangesDigest(table.ranges) !== table.sha256)
    throw new RestoreError(`${what}: its key ranges do not match its recorded SHA-256`);
  const streams = rangeStreams(table);
  for (const [index, stream] of streams.entries())
    yield* readStream(repository, stream, `${what} (key range ${index + 1} of ${streams.length})`);
}

export interface DatabaseRestoreOptions {
  readonly target: DatabaseConnection;
  /** Restore into a database that already has tables, replacing the objects the backup defines. */
  readonly clean?: boolean;
  /** Only these tables (`schema.table` or `table`) and/or schemas. */
  readonly tables?: readonly string[];
  readonly schemas?: readonly string[];
  /** Compare every restored table with the row count and checksum recorded at backup time (default true). */
  readonly check?: boolean;
  readonly noOwner?: boolean;
  readonly jobs?: number;
  readonly onProgress?: ProgressListener;
  /**
   * Change-stream backups: apply the changes committed at or before this instant only (ISO 8601, to the
   * microsecond); default all the backup holds.
   */
  readonly until?: string;
}

export interface TableCheck {
  readonly table: string;
  readonly rows: number;
  readonly expectedRows: number;
  readonly ok: boolean;
}

export interface DatabaseRestoreResult {
  readonly tables: number;
  readonly rows: number;
  readonly bytes: number;
  readonly checks: readonly TableCheck[];
  readonly consistent: boolean;
  /** A SCHEMA backup: the structure was restored, with no rows (tables empty). */
  readonly structureOnly?: true;
  /** Change-stream backups: what was applied on top of the FULL, and the last commit applied. */
  readonly changes?: {
    readonly transactions: number;
    readonly changes: number;
    readonly lastCommit?: { readonly lsn: string; readonly time: string; readonly xid: number };
  };
}

/**
 * Refuses an instant the backup cannot restore to: a backup without a change stream restores only to its own
 * restore point, and a change-stream backup not to an instant before the FULL its changes start from.
 */
function untilProblem(manifest: Manifest, until: string): void {
  const at = isoToMicros(until);
  if (!manifest.changes)
    throw new RestoreError(
      `backup ${manifest.id} holds no change stream: it restores only to its restore point ${manifest.restorePoint}`,
    );
  const from = manifest.database!.snapshotTime;
  if (at < isoToMicros(from))
    throw new RestoreError(
      `${until} is before ${from}, when FULL ${manifest.changes.base} (the start of backup ${manifest.id}'s changes) was taken`,
    );
}

/**
 * The backup that restores a repository's database to an instant: the newest good backup taken at or before
 * it must be part of a change stream, and the newest backup of that stream is returned — its changes are
 * applied up to the instant, so a later backup of the stream is as good, and never misses a commit that
 * landed after an earlier backup read the stream.
 */
export async function backupForInstant(repository: Repository, until: string): Promise<Manifest> {
  const at = isoToMicros(until);
  // Newest first, up to the first one at or before the instant: the newer ones may continue its stream.
  const newer: Manifest[] = [];
  let before: Manifest | undefined;
  for (const id of (await repository.backupIds()).reverse()) {
    const manifest = await repository.loadManifest(id);
    if (!manifest.database || isFlagged(manifest)) continue;
    if (isoToMicros(manifest.restorePoint) <= at) {
      before = manifest;
      break;
    }
    newer.push(manifest);
  }
  if (!before)
    throw new RestoreError(
      `no database backup was taken at or before ${until}${newer.length > 0 ? ` (the oldest restore point is ${newer.at(-1)!.restorePoint})` : ''}`,
    );
  const base = before.changes?.base;
  if (base === undefined)
    throw new RestoreError(
      `the newest backup at or before ${until}, ${before.id} (restore point ${before.restorePoint}), holds no change stream: restore it by id, to its restore point`,
    );
  return newer.find((manifest) => manifest.changes?.base === base) ?? before;
}

export async function restoreDatabase(
  repository: Repository,
  manifest: Manifest,
  options: DatabaseRestoreOptions,
): Promise<DatabaseRestoreResult> {
  if (options.until !== undefined) untilProblem(manifest, options.until);
  const result = await restoreSnapshot(repository, manifest, options);
  const sets = manifest.changes?.sets ?? [];
  if (sets.length === 0) return result;
  // The FULL is in and checked against its checksums: now its changes, in commit order, up to `until`.
  const wanted = new Set(
    manifest
      .database!.tables.filter((table) => selects(table, options))
      .map((table) => `${table.schema}.${table.name}`),
  );
  const applier = await ChangeApplier.open(options.target, options.until, (schema, name) =>
    wanted.has(`${schema}.${name}`),
  );
  let bytes = result.bytes;
  const totalBytes = sets.reduce((sum, set) => sum + set.records.size, bytes);
  try {
    let sequences: readonly SequenceRecord[] = [];
    for (const set of sets) {
      applier.beginSet();
      sequences = set.sequences;
      const what = `changes of backup ${set.backupId}`;
      const source = tap(readStream(repository, set.records, what), (size) => {
        bytes += size;
        options.onProgress?.({ phase: 'restore', item: what, bytes, totalBytes });
      });
      let going = true;
      for await (const line of changeLines(source)) if (!(going = await applier.apply(line))) break;
      if (!going) break;
    }
    await applier.setSequences(sequencesFor(sequences, options));
  } finally {
    await applier.close();
  }
  const applied = applier.result;
  return {
    ...result,
    // The rows as restored, changes applied (the FULL's counts no longer hold)
    rows: await countRows(
      options.target,
      manifest.database!.tables.filter((table) => selects(table, options)),
    ),
    bytes,
    changes: {
      transactions: applied.transactions,
      changes: applied.changes,
      ...(applied.lastCommit ? { lastCommit: applied.lastCommit } : {}),
    },
  };
}

async function restoreSnapshot(
  repository: Repository,
  manifest: Manifest,
  options: DatabaseRestoreOptions,
): Promise<DatabaseRestoreResult> {
  const database = manifest.database;
  if (!database) throw new RestoreError(`backup ${manifest.id} holds no database`);
  const partial = isPartial(options);
  const selected = database.tables.filter((table) => selects(table, options));
  if (partial && selected.length === 0)
    throw new RestoreError('no table of the backup matches the given tables and schemas');

  if (!options.clean && !partial && (await userRelationCount(options.target)) > 0) {
    throw new RestoreError(
      'the target database is not empty: restore into an empty database, or pass clean to replace what the backup defines',
    );
  }
  // A partial restore over tables that exist is refused before anything is written, unless told to replace
  // them; replacing them never takes other objects with them (see replaceTables).
  if (partial && !options.clean) {
    const existing = await existingTables(options.target, selected);
    if (existing.length > 0)
      throw new RestoreError(
        `the target database already has ${existing.join(', ')}: restore into another database, or pass clean (overwrite) to replace ${existing.length === 1 ? 'it' : 'them'}`,
      );
  }
  if (database.schemaOnly) {
    await restoreArchive(options.target, readStream(repository, database.schemaOnly, 'schema'), {
      ...common(options),
      jobs: options.jobs ?? 2,
    });
    return { tables: 0, rows: 0, bytes: 0, checks: [], consistent: true, structureOnly: true };
  }
  if (!database.preData || !database.postData)
    throw new RestoreError(`backup ${manifest.id} is missing its schema archives`);

  if (options.clean) {
    if (partial) await replaceTables(options.target, selected);
    else await dropTables(options.target, selected);
  }
  const names = new Set(selected.map((table) => `${table.schema} ${table.name}`));
  // The post-data archive is read and split into statements while pg_restore creates the tables
  const postData = await StagedArchive.stage(readStream(repository, database.postData, 'post-data'));
  let bytes = 0;
  let sessions: Sessions | undefined;
  try {
    const preparing = (async () => {
      const entries = await postData.entries();
      // Indexes, keys and foreign keys as SQL over `jobs` sessions (no process and sign-in per entry), or,
      // where the archive's script cannot be split by entry, by pg_restore one entry at a time
      const early = entries.filter(
        (entry) =>
          tocNamesTable(entry, names, ['CONSTRAINT', 'FK CONSTRAINT']) || / INDEX \S+ \S+ /.test(entry),
      );
      return { entries, statements: await postData.statements(options.target, early, common(options)) };
    })();
    preparing.catch(() => undefined); // surfaced below, once the tables exist
    await restoreArchive(options.target, readStream(repository, database.preData, 'pre-data'), {
      ...common(options),
      ...(partial ? { pick: (entry: string) => tocNamesTable(entry, names, ['TABLE']) } : {}),
    });
    const { entries, statements } = await preparing;
    const done = new Set<string>();
    sessions = statements ? new Sessions(options.target, statements.header) : undefined;
    const local = sharesThisMachine(options.target);
    const build = (line: string) => {
      const sql = statements?.sql.get(line);
      if (sql === undefined || !sessions)
        return postData.restore(options.target, { ...common(options), lines: [line] });
      // This build, and what the other slots run now
      const workers = buildWorkers(local, slots.busy + 1, availableParallelism());
      return sessions.run(sql, line, workers);
    };
    /** A table's keys (which lock it whole) and indexes not yet built. */
    const buildsOf = (table: TableRecord) => {
      const own = new Set([`${table.schema} ${table.name}`]);
      const indexes = new Set(table.indexes.map((index) => `${table.schema} ${index}`));
      const builds = entries
        .filter((entry) => !done.has(entry))
        .map((line) => ({ line, key: tocNamesTable(line, own, ['CONSTRAINT']) }))
        .filter(({ line, key }) => key || tocNamesIndex(line, indexes));
      builds.forEach(({ line }) => done.add(line));
      return builds;
    };
    // What pg_restore -j does: `jobs` slots shared by the table loads (largest first) and what each load makes
    // possible, which goes first: the table's indexes and keys once its rows are in, then each foreign key
    // between two chosen tables once both are in with their keys built.
    const slots = new DataSection(options.jobs ?? 2);
    const waiting = new Set(foreignKeysBetween(entries, selected, statements?.sql));
    waiting.forEach((key) => done.add(key.line));
    const complete = new Set<string>();
    const sizes = new Map(selected.map((table) => [`${table.schema}.${table.name}`, table.size]));
    const tableDone = (name: string) => {
      complete.add(name);
      for (const key of waiting)
        if (complete.has(key.table) && complete.has(key.references)) {
          waiting.delete(key);
          slots.first(() => build(key.line), sizes.get(key.table) ?? 0, [
            { table: key.table, exclusive: true },
            { table: key.references, exclusive: true },
          ]);
        }
    };
    // A table stored in key ranges loads them at once, each over its own connection
    const loads = selected.flatMap((table) => rangeStreams(table).map((stream) => ({ table, stream })));
    const totalBytes = loads.reduce((sum, load) => sum + load.stream.size, 0);
    const loading = new Map(selected.map((table) => [table, table.ranges?.length ?? 1]));
    for (const { table, stream } of loads.sort((a, b) => b.stream.size - a.stream.size)) {
      const what = `${table.schema}.${table.name}`;
      slots.later(async () => {
        const client = await connect(options.target);
        try {
          await loadTable(
            client,
            table,
            tap(readStream(repository, stream, what, { digest: false }), (size) => {
              bytes += size;
              options.onProgress?.({ phase: 'restore', item: what, bytes, totalBytes });
            }),
            // Created by this restore and loaded in one stream: frozen (ranges share the table: plain)
            { freeze: (table.ranges?.length ?? 1) === 1 },
          );
        } finally {
          await client.end();
        }
        const ranges = loading.get(table)! - 1;
        loading.set(table, ranges);
        if (ranges > 0) return;
        const builds = buildsOf(table);
        if (builds.length === 0) return tableDone(what);
        let left = builds.length;
        for (const { line, key } of builds) {
          slots.first(
            async () => {
              await build(line);
              if (--left === 0) tableDone(what);
            },
            buildCost(statements?.sql.get(line), table.size, key),
            [{ table: what, exclusive: key }],
          );
        }
      });
    }
    await slots.finish();
    await setSequences(options.target, sequencesFor(database.sequences, options));
    // Then the rest: foreign keys, triggers, rules, policies… For a partial restore only those of the chosen
    // tables, and a foreign key to a table left out cannot be created: it is skipped, not fatal.
    const rest = entries.filter(
      (entry) =>
        !done.has(entry) &&
        (!partial || tocNamesTable(entry, names, ['FK CONSTRAINT', 'TRIGGER', 'RULE', 'POLICY'])),
    );
    await postData.restore(options.target, {
      ...common(options),
      lines: rest,
      jobs: options.jobs ?? 2,
      ...(partial ? { exitOnError: false } : {}),
    });
  } finally {
    await sessions?.close();
    await postData.dispose();
  }

  const checks = options.check === false ? [] : await checkTables(options.target, selected);
  return {
    tables: selected.length,
    rows: selected.reduce((sum, table) => sum + table.rows, 0),
    bytes,
    checks,
    consistent: checks.every((check) => check.ok),
  };
}

/**
 * `--clean` first drops the backup's tables with CASCADE: the pre-data archive alone cannot drop a table that
 * post-data objects (foreign keys, views) depend on. pg_restore --clean --if-exists then replaces the rest.
 */
async function dropTables(target: DatabaseConnection, tables: readonly TableRecord[]): Promise<void> {
  const client = await connect(target);
  try {
    for (const table of tables)
      await client.query(`DROP TABLE IF EXISTS ${qualified(client, table.schema, table.name)} CASCADE`);
  } finally {
    await client.end();
  }
}

async function countRows(target: DatabaseConnection, tables: readonly TableRecord[]): Promise<number> {
  const client = await connect(target);
  try {
    let rows = 0;
    for (const table of tables) {
      const counted = await client.query<{ n: string }>(
        `SELECT count(*)::text AS n FROM ${qualified(client, table.schema, table.name)}`,
      );
      rows += Number(counted.rows[0]!.n);
    }
    return rows;
  } finally {
    await client.end();
  }
}

/** The chosen tables that exist in the target, as schema.table. */
async function existingTables(target: DatabaseConnection, tables: readonly TableRecord[]): Promise<string[]> {
  const client = await connect(target);
  try {
    const found = await client.query<{ name: string }>(
      `SELECT n.nspname || '.' || c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY 1`,
      [tables.map((table) => table.schema), tables.map((table) => table.name)],
    );
    return found.rows.map((row) => row.name);
  } finally {
    await client.end();
  }
}

/**
 * Drops the chosen tables of a partial restore in one statement, RESTRICT: what depends on them from
 * outside the selection (another table's foreign key, a view) would go with CASCADE and never come back,
 * so the restore is refused instead, naming those dependents, and nothing is dropped.
 */
async function replaceTables(target: DatabaseConnection, tables: readonly TableRecord[]): Promise<void> {
  const client = await connect(target);
  try {
    const list = tables.map((table) => qualified(client, table.schema, table.name)).join(', ');
    await client.query(`DROP TABLE IF EXISTS ${list} RESTRICT`);
  } catch (error) {
    const { code, detail } = error as { code?: string; detail?: string };
    if (code !== '2BP01') throw error; // dependent_objects_still_exist
    throw new RestoreError(
      `replacing ${tables.map((table) => `${table.schema}.${table.name}`).join(', ')} would drop what depends on ${tables.length === 1 ? 'it' : 'them'} (${(detail ?? '').split('\n').join('; ')}): restore those tables too, or drop the dependents first; nothing was changed`,
    );
  } finally {
    await client.end();
  }
}

async function setSequences(target: DatabaseConnection, sequences: readonly SequenceRecord[]): Promise<void> {
  const client = await connect(target);
  try {
    for (const sequence of sequences) {
      await client.query('SELECT pg_catalog.setval($1, $2::bigint, $3)', [
        qualified(client, sequence.schema, sequence.name),
        sequence.lastValue,
        sequence.isCalled,
      ]);
    }
  } finally {
    await client.end();
  }
}

/** Runs post-data entries with at most `limit` pg_restore processes at once, as entries become ready. */
/** A table a build locks: exclusively (a key: PRIMARY KEY, UNIQUE, FOREIGN KEY) or shared (an index). */
export interface TableLock {
  readonly table: string;
  readonly exclusive: boolean;
}

interface Build {
  readonly work: () => Promise<void>;
  readonly cost: number;
  readonly locks: readonly TableLock[];
}

/**
 * Runs work in at most `slots` at once: builds (`first`) before loads (`later`), work may add more. Of the
 * builds ready, the costliest whose locks do not conflict with a running build's (as pg_restore -j: a build
 * that would wait on another's lock would hold a slot doing nothing); loads in the order given. The first
 * failure stops what has not started; `finish` waits for what runs and throws it.
 */
export class DataSection {
  private readonly builds: Build[] = [];
  private readonly queued: (() => Promise<void>)[] = [];
  private readonly running = new Map<Promise<void>, readonly TableLock[]>();
  private failure: Error | undefined;
  private readonly slots: number;

  constructor(slots: number) {
    this.slots = Math.max(1, slots);
  }

  first(work: () => Promise<void>, cost: number, locks: readonly TableLock[]): void {
    this.builds.push({ work, cost, locks });
    this.pump();
  }

  later(work: () => Promise<void>): void {
    this.queued.push(work);
    this.pump();
  }

  /** Work running now. */
  get busy(): number {
    return this.running.size;
  }

  async finish(): Promise<void> {
    while (this.running.size > 0) await Promise.race(this.running.keys());
    if (this.failure) throw this.failure;
  }

  private nextBuild(): Build | undefined {
    const held = [...this.running.values()].flat();
    const free = (build: Build) =>
      build.locks.every((lock) =>
        held.every((other) => other.table !== lock.table || (!other.exclusive && !lock.exclusive)),
      );
    let best: number | undefined;
    for (const [i, build] of this.builds.entries())
      if (free(build) && (best === undefined || build.cost > this.builds[best]!.cost)) best = i;
    return best === undefined ? undefined : this.builds.splice(best, 1)[0];
  }

  private pump(): void {
    while (this.running.size < this.slots && !this.failure) {
      const build = this.nextBuild();
      const work = build?.work ?? this.queued.shift();
      if (!work) return;
      const job: Promise<void> = work()
        .catch((error: unknown) => {
          this.failure ??= error instanceof Error ? error : new Error(String(error));
        })
        .finally(() => {
          this.running.delete(job);
          this.pump();
        });
      this.running.set(job, build?.locks ?? []);
    }
  }
}

/**
 * Parallel workers for an index build (`max_parallel_maintenance_workers`) when the server shares this
 * machine's `cores` — a database on loopback or a Unix socket: the restore's `busy` sessions already use
 * them, so a build started while the other slots run takes no helpers, and one running alone (the last,
 * largest indexes) takes the cores left over. pg_restore -j leaves the server's default (2 helpers per
 * build), which on 2 cores fight the other slot: measured 7% slower at jobs 2. A remote server's cores are
 * unknown to us: its setting is left alone (`undefined`).
 */
export function buildWorkers(local: boolean, busy: number, cores: number): number | undefined {
  if (!local) return undefined;
  return Math.max(0, Math.floor(cores / Math.max(1, busy)) - 1);
}

/** Whether the database server runs on this machine: a loopback address, `localhost` or a Unix socket. */
export function sharesThisMachine(connection: DatabaseConnection): boolean {
  const url = URL.parse(connection.url);
  if (!url) return false;
  const host = url.searchParams.get('host') ?? decodeURIComponent(url.hostname);
  return (
    host === '' ||
    host.startsWith('/') ||
    host === 'localhost' ||
    host === '[::1]' ||
    host === '::1' ||
    /^127\.\d+\.\d+\.\d+$/.test(host)
  );
}

/**
 * A build's cost, roughly, for choosing among the ones ready at once: its table's size, times more for index
 * methods that take many times a B-tree's time to build (GIN, GiST), and keys (PRIMARY KEY, UNIQUE) costliest
 * of all — they lock the table whole, so one started after a long index build would wait for it to end.
 */
function buildCost(sql: string | undefined, tableBytes: number, key: boolean): number {
  const method = /\bUSING\s+(\w+)\s*\(/i.exec(sql ?? '')?.[1]?.toLowerCase();
  const factor =
    key || method === 'gin' || method === 'gist' || method === 'spgist' ? 8 : method === 'brin' ? 0.1 : 1;
  return tableBytes * factor + (key ? 1 : 0);
}

/** Sessions that ran the script's settings, each reused for one entry's SQL after another. */
class Sessions {
  private readonly idle: pg.Client[] = [];
  private readonly all: pg.Client[] = [];
  private readonly target: DatabaseConnection;
  private readonly header: string;
  /** The server's own `max_parallel_maintenance_workers`: never raised, only lowered. */
  private serverWorkers: number | undefined;

  constructor(target: DatabaseConnection, header: string) {
    this.target = target;
    this.header = header;
  }

  /**
   * Runs an entry's SQL; with `workers`, its index build takes at most that many parallel workers (set alone
   * first: the entry's SQL may not share a transaction).
   */
  async run(sql: string, entry: string, workers?: number): Promise<void> {
    const client = this.idle.pop() ?? (await this.open());
    try {
      if (workers !== undefined) {
        // reset_val: the session's default (the server's, the role's, the database's), whatever was SET since
        this.serverWorkers ??= Number(
          (
            await client.query<{ value: string }>(
              "SELECT reset_val AS value FROM pg_settings WHERE name = 'max_parallel_maintenance_workers'",
            )
          ).rows[0]?.value ?? 0,
        );
        await client.query(`SET max_parallel_maintenance_workers = ${Math.min(workers, this.serverWorkers)}`);
      }
      await client.query(sql);
    } catch (error) {
      throw new RestoreError(
        `restoring ${entry.replace(/^\d+; \d+ \d+ /, '')} failed: ${(error as Error).message}`,
      );
    } finally {
      this.idle.push(client);
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.all.map((client) => client.end().catch(() => undefined)));
  }

  private async open(): Promise<pg.Client> {
    const client = await connect(this.target);
    this.all.push(client);
    await client.query(this.header);
    return client;
  }
}

interface ForeignKey {
  /** The entry in the post-data archive's table of contents. */
  readonly line: string;
  /** `schema.table` of its table and of the table it references. */
  readonly table: string;
  readonly references: string;
}

/**
 * The foreign keys whose table and referenced table are both restored, read from each key's SQL (`sql`, the
 * archive's statements by entry: the table of contents does not say what a key references). Without the
 * statements (a script that cannot be split by entry), none: all keys are made after the data.
 */
function foreignKeysBetween(
  entries: readonly string[],
  tables: readonly TableRecord[],
  sql: ReadonlyMap<string, string> | undefined,
): ForeignKey[] {
  if (!sql) return [];
  const names = new Set(tables.map((table) => `${table.schema} ${table.name}`));
  const chosen = new Set(tables.map((table) => `${table.schema}.${table.name}`));
  const keys: ForeignKey[] = [];
  for (const line of entries.filter((entry) => tocNamesTable(entry, names, ['FK CONSTRAINT']))) {
    const own = /^\d+; \d+ \d+ FK CONSTRAINT (\S+) (\S+)/.exec(line);
    const referenced = /\bREFERENCES\s+((?:"(?:[^"]|"")+"|[^\s."(]+))\.((?:"(?:[^"]|"")+"|[^\s."(]+))/.exec(
      sql.get(line) ?? '',
    );
    if (!own || !referenced) continue;
    const references = `${unquote(referenced[1]!)}.${unquote(referenced[2]!)}`;
    if (chosen.has(references)) keys.push({ line, table: `${own[1]}.${own[2]}`, references });
  }
  return keys;
}

function unquote(identifier: string): string {
  return identifier.startsWith('"') ? identifier.slice(1, -1).replaceAll('""', '"') : identifier;
}

function isPartial(options: DatabaseRestoreOptions): boolean {
  return (options.tables?.length ?? 0) > 0 || (options.schemas?.length ?? 0) > 0;
}

/** The sequences a restore sets: all of them, or for a partial restore those of the chosen schemas. */
function sequencesFor(
  sequences: readonly SequenceRecord[],
  options: DatabaseRestoreOptions,
): readonly SequenceRecord[] {
  return isPartial(options)
    ? sequences.filter((sequence) => (options.schemas ?? []).includes(sequence.schema))
    : sequences;
}

function common(options: DatabaseRestoreOptions): { clean?: boolean; noOwner?: boolean } {
  return { ...(options.clean ? { clean: true } : {}), ...(options.noOwner ? { noOwner: true } : {}) };
}

function selects(table: TableRecord, options: DatabaseRestoreOptions): boolean {
  const tables = options.tables ?? [];
  const schemas = options.schemas ?? [];
  if (tables.length === 0 && schemas.length === 0) return true;
  return (
    schemas.includes(table.schema) ||
    tables.includes(`${table.schema}.${table.name}`) ||
    tables.includes(table.name)
  );
}

/** TOC lines look like `216; 1259 16390 TABLE public users postgres`: type, schema, tag, owner. */
function tocNamesTable(line: string, names: Set<string>, types: readonly string[]): boolean {
  for (const type of types) {
    const match = new RegExp(`^\\d+; \\d+ \\d+ ${type} (\\S+) (\\S+)`).exec(line);
    if (match && names.has(`${match[1]} ${match[2]}`)) return true;
  }
  return false;
}

function tocNamesIndex(line: string, indexNames: Set<string>): boolean {
  const match = /^\d+; \d+ \d+ INDEX (\S+) (\S+)/.exec(line);
  return match !== null && indexNames.has(`${match[1]} ${match[2]}`);
}

async function* tap(source: AsyncIterable<Buffer>, onBytes: (size: number) => void): AsyncGenerator<Buffer> {
  for await (const data of source) {
    onBytes(data.length);
    yield data;
  }
}

/** Reads each restored table back in key order and compares its rows and checksum with the backup's. */
export async function checkTables(
  target: DatabaseConnection,
  tables: readonly TableRecord[],
): Promise<TableCheck[]> {
  const client = await connect(target);
  try {
    const checks: TableCheck[] = [];
    for (const table of tables) {
      // A table stored in key ranges is read back range by range, each compared with its own checksum
      let rows = 0;
      let ok = true;
      for (const stream of rangeStreams(table)) {
        const digest = await digestTable(client, table, stream.range);
        rows += digest.rows;
        ok &&= digest.rows === stream.rows && digest.digest() === stream.sha256;
      }
      checks.push({
        table: `${table.schema}.${table.name}`,
        rows,
        expectedRows: table.rows,
        ok: ok && rows === table.rows,
      });
    }
    return checks;
  } finally {
    await client.end();
  }
}

export interface FilesRestoreOptions {
  readonly destination: string;
  /** Globs over the stored relative paths (picomatch); all files when empty. */
  readonly include?: readonly string[];
  readonly onProgress?: ProgressListener;
  /** Keep setuid/setgid bits (default: cleared). Ownership is never restored: files belong to this user. */
  readonly preserveSpecialBits?: boolean;
}

export async function restoreFiles(
  repository: Repository,
  manifest: Manifest,
  options: FilesRestoreOptions,
): Promise<{ files: number; bytes: number }> {
  const files = manifest.files;
  if (!files) throw new RestoreError(`backup ${manifest.id} holds no files`);
  const wanted = globFilter(options.include);
  const chosen = files.entries.filter((entry) =>
    entry.type === 'dir' ? !options.include?.length : wanted(entry.path),
  );
  let bytes = 0;
  let count = 0;
  const totalBytes = chosen.reduce((sum, entry) => sum + (entry.type === 'file' ? (entry.size ?? 0) : 0), 0);
  const extract = { ...options, checked: new Set<string>() };
  for (const entry of chosen) {
    if (entry.type === 'file') {
      await writeFile(
        options.destination,
        entry,
        tap(
          readStream(repository, { chunks: entry.chunks ?? [], sha256: entry.sha256 ?? '' }, entry.path),
          (size) => {
            bytes += size;
            options.onProgress?.({ phase: 'restore', item: entry.path, bytes, totalBytes });
          },
        ),
        extract,
      );
      count++;
    } else {
      await makeEntry(options.destination, entry, extract);
    }
  }
  await finishEntries(options.destination, chosen, extract);
  return { files: count, bytes };
}
