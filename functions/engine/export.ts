import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { RestoreError } from './errors.ts';
import type { Manifest } from './manifest.ts';
import { readArchiveToc, SECTION_DATA, writeArchive, type OutputEntry, type TocEntry } from './pg-archive.ts';
import { runTool, withTool } from './postgres.ts';
import type { Repository } from './repository.ts';
import { readStream, tableStream } from './restore.ts';
import { collect } from '../storage/storage.ts';

/**
 * The dump a backup holds. A change-stream INCREMENTAL holds row changes on top of its FULL, which only a
 * restore applies: it has no dump to export.
 */
function dumpOf(manifest: Manifest): NonNullable<Manifest['database']> {
  const database = manifest.database;
  if (!database) throw new RestoreError(`backup ${manifest.id} holds no database`);
  if ((manifest.changes?.sets.length ?? 0) > 0)
    throw new RestoreError(
      `backup ${manifest.id} holds the database as row changes since FULL ${manifest.changes!.base}: restore it (POST /api/dr/restore or drctl restore), or download the FULL`,
    );
  return database;
}

/**
 * Writes the database of a backup as one plain SQL script, the same shape as `pg_dump --format=plain`:
 * `psql -d <empty database> -f script.sql` restores it with nothing but the standard PostgreSQL tools.
 */
export async function exportSql(repository: Repository, manifest: Manifest, out: Writable): Promise<void> {
  const database = dumpOf(manifest);
  const write = (text: string | Buffer) => writeTo(out, text);
  await write(
    `-- DR Automation backup ${manifest.id} (${manifest.type}) of database ${database.database}, PostgreSQL ${database.serverVersion}\n`,
  );
  await write(`-- restore point ${manifest.restorePoint}\n\n`);
  if (database.schemaOnly) {
    await archiveToSql(readStream(repository, database.schemaOnly, 'schema'), write);
    return;
  }
  if (!database.preData || !database.postData)
    throw new RestoreError(`backup ${manifest.id} is missing its schema archives`);
  await archiveToSql(readStream(repository, database.preData, 'pre-data'), write);
  for (const table of database.tables) {
    const name = `${quote(table.schema)}.${quote(table.name)}`;
    await write(
      `\n--\n-- Data for ${name} (${table.rows} rows)\n--\n\nCOPY ${name} (${table.columns.map(quote).join(', ')}) FROM stdin;\n`,
    );
    for await (const data of tableStream(repository, table, `${table.schema}.${table.name}`))
      await write(data);
    await write('\\.\n');
  }
  for (const sequence of database.sequences) {
    const name = `${quote(sequence.schema)}.${quote(sequence.name)}`;
    await write(
      `SELECT pg_catalog.setval('${name.replace(/'/g, "''")}', ${sequence.lastValue}, ${String(sequence.isCalled)});\n`,
    );
  }
  await write('\n');
  await archiveToSql(readStream(repository, database.postData, 'post-data'), write);
}

/**
 * Writes the database of a backup as one custom-format archive, the same shape as `pg_dump --format=custom`
 * to a pipe: `pg_restore -d <database> backup.dump` restores it (or lists it, or picks tables from it) with
 * nothing but the standard PostgreSQL tools. The schema archives the backup holds give the header and the
 * TOC; the table data and sequence values are added between them, each table's rows compressed as they are
 * read from the repository.
 */
export async function exportArchive(
  repository: Repository,
  manifest: Manifest,
  out: Writable,
): Promise<void> {
  const database = dumpOf(manifest);
  if (database.schemaOnly) {
    await pipeline(Readable.from(readStream(repository, database.schemaOnly, 'schema')), out, { end: false });
    return;
  }
  if (!database.preData || !database.postData)
    throw new RestoreError(`backup ${manifest.id} is missing its schema archives`);
  const pre = readArchiveToc(await collect(readStream(repository, database.preData, 'pre-data')));
  const post = readArchiveToc(await collect(readStream(repository, database.postData, 'post-data')));
  const find = (desc: string, schema: string, name: string) =>
    pre.entries.find((entry) => entry.desc === desc && entry.namespace === schema && entry.tag === name);
  let nextId = Math.max(0, ...pre.entries.map((e) => e.dumpId), ...post.entries.map((e) => e.dumpId)) + 1;
  const dataEntry = (owner: TocEntry | undefined, schema: string, name: string): OutputEntry => ({
    dumpId: nextId++,
    hadDumper: false,
    tableOid: '0',
    oid: owner?.oid ?? '0',
    tag: name,
    desc: '',
    section: SECTION_DATA,
    defn: null,
    dropStmt: null,
    copyStmt: null,
    namespace: schema,
    tablespace: null,
    tableam: null,
    relkind: 0,
    owner: owner?.owner ?? null,
    dependencies: owner ? [owner.dumpId] : [],
  });
  const tables: OutputEntry[] = database.tables.map((table) => ({
    ...dataEntry(find('TABLE', table.schema, table.name), table.schema, table.name),
    hadDumper: true,
    desc: 'TABLE DATA',
    copyStmt: `COPY ${quote(table.schema)}.${quote(table.name)} (${table.columns.map(quote).join(', ')}) FROM stdin;\n`,
    data: () => tableStream(repository, table, `${table.schema}.${table.name}`),
  }));
  const sequences: OutputEntry[] = database.sequences.map((sequence) => ({
    ...dataEntry(find('SEQUENCE', sequence.schema, sequence.name), sequence.schema, sequence.name),
    desc: 'SEQUENCE SET',
    defn: `SELECT pg_catalog.setval('${`${quote(sequence.schema)}.${quote(sequence.name)}`.replace(/'/g, "''")}', ${sequence.lastValue}, ${String(sequence.isCalled)});\n`,
  }));
  // A section-only dump drops the dependencies that point outside its section, and `pg_restore --jobs`
  // orders its work by them: give them back. An index or table constraint waits for its table's data (all
  // the data when the table is not known); anything else waits for the entry before it and for the indexes
  // and constraints since, which keeps pg_dump's own order for foreign keys, triggers and the like.
  const allData = [...tables, ...sequences].map((entry) => entry.dumpId);
  const dataOf = (entry: TocEntry): number[] => {
    const index = database.tables.findIndex((table) =>
      entry.desc === 'INDEX'
        ? table.schema === entry.namespace && table.indexes.includes(entry.tag ?? '')
        : table.schema === entry.namespace && (entry.tag ?? '').startsWith(`${table.name} `),
    );
    return index < 0 ? allData : [tables[index]!.dumpId];
  };
  const seen = new Set(pre.entries.map((entry) => entry.dumpId));
  const later: OutputEntry[] = [];
  let barrier = allData;
  for (const entry of post.entries) {
    if (seen.has(entry.dumpId)) continue;
    seen.add(entry.dumpId);
    const independent = entry.desc === 'INDEX' || entry.desc === 'CONSTRAINT';
    const needs = independent ? dataOf(entry) : barrier;
    later.push({ ...entry, dependencies: [...new Set([...entry.dependencies, ...needs])] });
    barrier = independent ? [...barrier, entry.dumpId] : [entry.dumpId];
  }
  const archive = writeArchive(pre.header, [...pre.entries, ...tables, ...sequences, ...later], 6);
  for await (const chunk of archive) await writeTo(out, chunk);
}

/** Writes with backpressure; fails (rather than waiting forever) when the output is closed or fails. */
async function writeTo(out: Writable, data: string | Buffer): Promise<void> {
  if (out.destroyed) throw new RestoreError('the output was closed before the export finished');
  if (out.write(data)) return;
  await new Promise<void>((resolve, reject) => {
    const settle = (error?: Error) => {
      out.off('drain', drained);
      out.off('close', closed);
      out.off('error', settle);
      if (error) reject(error);
      else resolve();
    };
    const drained = () => settle();
    const closed = () => settle(new RestoreError('the output was closed before the export finished'));
    out.on('drain', drained);
    out.on('close', closed);
    out.on('error', settle);
  });
}

/** pg_restore -f - turns a custom-format archive into SQL. */
async function archiveToSql(
  archive: AsyncIterable<Buffer>,
  write: (data: Buffer) => Promise<void>,
): Promise<void> {
  const tool = runTool('pg_restore', ['--file=-'], { url: 'postgres://localhost/none' }, { stdin: true });
  const reading = (async () => {
    for await (const data of tool.stdout) await write(data as Buffer);
  })();
  await withTool(tool, Promise.all([pipeline(Readable.from(archive), tool.stdin), reading, tool.done]));
}

function quote(identifier: string): string {
  return `"${identifier.replace(/"/g, '""')}"`;
}

/** Writes the files of a backup as a tar stream (paths, modes, mtimes, symlinks). */
export async function exportTar(repository: Repository, manifest: Manifest, out: Writable): Promise<void> {
  const files = manifest.files;
  if (!files) throw new RestoreError(`backup ${manifest.id} holds no files`);
  const pack = tar.pack();
  const done = pipeline(pack, out);
  for (const entry of files.entries) {
    const header = { name: entry.path, mode: entry.mode, mtime: new Date(entry.mtimeMs) };
    if (entry.type === 'dir') {
      pack.entry({ ...header, type: 'directory' });
    } else if (entry.type === 'symlink') {
      pack.entry({ ...header, type: 'symlink', linkname: entry.target ?? '' });
    } else {
      const sink = pack.entry({ ...header, type: 'file', size: entry.size });
      await pipeline(
        Readable.from(
          readStream(repository, { chunks: entry.chunks ?? [], sha256: entry.sha256 ?? '' }, entry.path),
        ),
        sink,
      );
    }
  }
  pack.finalize();
  await done;
}
