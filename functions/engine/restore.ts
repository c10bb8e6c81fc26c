import { createHash } from 'node:crypto';
import { RestoreError } from './errors.ts';
import { finishEntries, globFilter, makeEntry, writeFile } from './files.ts';
import type { Manifest, StreamRecord, TableRecord } from './manifest.ts';
import {
  connect,
  copyQuery,
  CopyDigest,
  loadTable,
  qualified,
  restoreArchive,
  userRelationCount,
  type DatabaseConnection,
} from './postgres.ts';
import type { ProgressListener } from './backup.ts';
import type { Repository } from './repository.ts';

/**
 * A stream's chunks in order, with up to `prefetch` reads in flight. Every chunk is authenticated and
 * checked against its id before it is yielded, and the whole stream against its SHA-256 at the end: corrupt
 * data fails the read, it is never loaded.
 */
export async function* readStream(
  repository: Repository,
  record: Pick<StreamRecord, 'chunks' | 'sha256'>,
  what: string,
  prefetch = 4,
): AsyncGenerator<Buffer> {
  const hash = createHash('sha256');
  const queue: Promise<Buffer>[] = [];
  let next = 0;
  const fill = () => {
    while (queue.length < prefetch && next < record.chunks.length) {
      const read = repository.readChunk(record.chunks[next++]!);
      read.catch(() => undefined); // surfaced when awaited in order
      queue.push(read);
    }
  };
  fill();
  while (queue.length > 0) {
    const data = await queue.shift()!;
    fill();
    hash.update(data);
    yield data;
  }
  if (hash.digest('hex') !== record.sha256)
    throw new RestoreError(`${what}: the restored stream does not match its recorded SHA-256`);
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
}

export async function restoreDatabase(
  repository: Repository,
  manifest: Manifest,
  options: DatabaseRestoreOptions,
): Promise<DatabaseRestoreResult> {
  const database = manifest.database;
  if (!database) throw new RestoreError(`backup ${manifest.id} holds no database`);
  const partial = (options.tables?.length ?? 0) > 0 || (options.schemas?.length ?? 0) > 0;
  const selected = database.tables.filter((table) => selects(table, options));
  if (partial && selected.length === 0)
    throw new RestoreError('no table of the backup matches the given tables and schemas');

  if (!options.clean && !partial && (await userRelationCount(options.target)) > 0) {
    throw new RestoreError(
      'the target database is not empty: restore into an empty database, or pass clean to replace what the backup defines',
    );
  }
  if (database.schemaOnly) {
    await restoreArchive(options.target, readStream(repository, database.schemaOnly, 'schema'), {
      ...common(options),
      jobs: options.jobs ?? 2,
    });
    return { tables: 0, rows: 0, bytes: 0, checks: [], consistent: true };
  }
  if (!database.preData || !database.postData)
    throw new RestoreError(`backup ${manifest.id} is missing its schema archives`);

  if (options.clean) await dropTables(options.target, selected);
  const names = new Set(selected.map((table) => `${table.schema} ${table.name}`));
  const indexNames = new Set(
    selected.flatMap((table) => table.indexes.map((index) => `${table.schema} ${index}`)),
  );
  const pickFor = (keep: (line: string) => boolean) => (toc: string) =>
    toc
      .split('\n')
      .filter((line) => line.startsWith(';') || keep(line))
      .join('\n');
  await restoreArchive(options.target, readStream(repository, database.preData, 'pre-data'), {
    ...common(options),
    ...(partial ? { list: pickFor((line) => tocNamesTable(line, names, ['TABLE'])) } : {}),
  });

  let bytes = 0;
  const client = await connect(options.target);
  try {
    for (const table of selected) {
      const what = `${table.schema}.${table.name}`;
      await loadTable(
        client,
        table,
        tap(readStream(repository, table, what), (size) => {
          bytes += size;
          options.onProgress?.({ phase: 'restore', item: what, bytes });
        }),
      );
    }
    for (const sequence of database.sequences) {
      if (partial && !(options.schemas ?? []).includes(sequence.schema)) continue;
      await client.query(`SELECT pg_catalog.setval($1, $2::bigint, $3)`, [
        qualified(client, sequence.schema, sequence.name),
        sequence.lastValue,
        sequence.isCalled,
      ]);
    }
  } finally {
    await client.end();
  }
  await restoreArchive(options.target, readStream(repository, database.postData, 'post-data'), {
    ...common(options),
    jobs: partial ? 1 : (options.jobs ?? 2),
    ...(partial
      ? {
          list: pickFor(
            (line) =>
              tocNamesTable(line, names, ['CONSTRAINT', 'FK CONSTRAINT', 'TRIGGER', 'RULE', 'POLICY']) ||
              tocNamesIndex(line, indexNames),
          ),
          // Foreign keys to tables left out cannot be created: report them, keep the rest.
          exitOnError: false,
        }
      : {}),
  });

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
  const { to } = await import('pg-copy-streams');
  try {
    const checks: TableCheck[] = [];
    for (const table of tables) {
      const digest = new CopyDigest();
      for await (const data of client.query(to(copyQuery(client, table)))) digest.update(data as Buffer);
      checks.push({
        table: `${table.schema}.${table.name}`,
        rows: digest.rows,
        expectedRows: table.rows,
        ok: digest.rows === table.rows && digest.digest() === table.sha256,
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
  for (const entry of chosen) {
    if (entry.type === 'file') {
      await writeFile(
        options.destination,
        entry,
        tap(
          readStream(repository, { chunks: entry.chunks ?? [], sha256: entry.sha256 ?? '' }, entry.path),
          (size) => {
            bytes += size;
            options.onProgress?.({ phase: 'restore', item: entry.path, bytes });
          },
        ),
      );
      count++;
    } else {
      await makeEntry(options.destination, entry);
    }
  }
  await finishEntries(options.destination, chosen);
  return { files: count, bytes };
}
