import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { RestoreError } from './errors.ts';
import type { Manifest } from './manifest.ts';
import { runTool } from './postgres.ts';
import type { Repository } from './repository.ts';
import { readStream } from './restore.ts';

/**
 * Writes the database of a backup as one plain SQL script, the same shape as `pg_dump --format=plain`:
 * `psql -d <empty database> -f script.sql` restores it with nothing but the standard PostgreSQL tools.
 */
export async function exportSql(repository: Repository, manifest: Manifest, out: Writable): Promise<void> {
  const database = manifest.database;
  if (!database) throw new RestoreError(`backup ${manifest.id} holds no database`);
  const write = async (text: string | Buffer) => {
    if (!out.write(text)) await new Promise((resolve) => out.once('drain', resolve));
  };
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
    for await (const data of readStream(repository, table, `${table.schema}.${table.name}`))
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

/** pg_restore -f - turns a custom-format archive into SQL. */
async function archiveToSql(
  archive: AsyncIterable<Buffer>,
  write: (data: Buffer) => Promise<void>,
): Promise<void> {
  const tool = runTool('pg_restore', ['--file=-'], { url: 'postgres://localhost/none' }, { stdin: true });
  const reading = (async () => {
    for await (const data of tool.stdout) await write(data as Buffer);
  })();
  await Promise.all([pipeline(Readable.from(archive), tool.stdin), reading, tool.done]);
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
