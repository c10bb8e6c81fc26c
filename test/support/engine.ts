import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  lstat,
  readlink,
  symlink,
  utimes,
  writeFile,
  chmod,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { createWriteStream } from 'node:fs';
import { finished } from 'node:stream/promises';
import { masterKeyFrom, type MasterKey } from '../../functions/engine/crypto.ts';
import { exportSql } from '../../functions/engine/export.ts';
import type { Manifest } from '../../functions/engine/manifest.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import type { TestPostgres } from './postgres.ts';
import { checked } from '../../functions/storage/facade.ts';
import type { Storage } from '../../functions/storage/storage.ts';

const run = promisify(execFile);

export function testKey(seed = 1): MasterKey {
  return masterKeyFrom(Buffer.alloc(32, seed));
}

export async function newRepository(
  master = testKey(),
): Promise<{ repository: Repository; dir: string; storage: Storage }> {
  const dir = await mkdtemp(join(tmpdir(), 'dr-repo-'));
  const storage = checked(new LocalStorage(dir));
  return { repository: await Repository.init(storage, master), dir, storage };
}

/** A small uploads tree: nested directories, binary and text files, an empty file, a symlink, odd modes. */
export async function makeFilesTree(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'dr-files-'));
  await mkdir(join(root, 'uploads/2025/06'), { recursive: true });
  await mkdir(join(root, 'empty-dir'));
  await writeFile(join(root, 'uploads/2025/06/photo.bin'), randomBytes(700_000));
  await writeFile(join(root, 'uploads/2025/06/notes.txt'), 'hello\n'.repeat(1000));
  await writeFile(join(root, 'uploads/empty.txt'), '');
  await writeFile(join(root, 'config.json'), '{"a":1}');
  await chmod(join(root, 'config.json'), 0o640);
  await symlink('uploads/2025/06/notes.txt', join(root, 'latest-notes'));
  const past = new Date('2025-03-04T05:06:07Z');
  await utimes(join(root, 'uploads/2025/06/photo.bin'), past, past);
  return root;
}

/** Every entry under root: type, mode, mtime (ms), and a content hash (or link target). */
export async function describeTree(
  root: string,
  options: { mtimeSeconds?: boolean } = {},
): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  const entries = await readdir(root, { withFileTypes: true, recursive: true });
  for (const entry of entries) {
    const path = join(entry.parentPath, entry.name);
    const info = await lstat(path);
    const key = relative(root, path);
    if (info.isSymbolicLink()) result[key] = `link ${await readlink(path)}`;
    else if (info.isDirectory()) result[key] = `dir ${(info.mode & 0o7777).toString(8)}`;
    else
      result[key] =
        `file ${(info.mode & 0o7777).toString(8)} ${options.mtimeSeconds ? Math.floor(info.mtimeMs / 1000) : Math.round(info.mtimeMs)} ${(await readFile(path)).toString('base64').length}:${(
          await import('node:crypto')
        )
          .createHash('sha256')
          .update(await readFile(path))
          .digest('hex')}`;
  }
  return result;
}

/** The schema as pg_dump prints it (for comparing two databases). */
export async function schemaOf(pg: TestPostgres, database: string): Promise<string> {
  const { stdout } = await run('pg_dump', ['--schema-only', '--no-owner', `--dbname=${pg.url(database)}`], {
    maxBuffer: 64 * 1024 * 1024,
  });
  // pg_dump's \restrict lines carry a random token per run.
  return stdout.replace(/^-- Dumped (from|by) .*$/gm, '').replace(/^\\(un)?restrict .*$/gm, '');
}

/** The backup's plain SQL export (`exportSql`, the guide's backup.sql), loaded by psql into a new `database`. */
export async function loadSqlExport(
  pg: TestPostgres,
  repository: Repository,
  manifest: Manifest,
  database: string,
): Promise<void> {
  const out = join(await mkdtemp(join(tmpdir(), 'dr-export-')), 'backup.sql');
  const file = createWriteStream(out);
  await exportSql(repository, manifest, file);
  file.end();
  await finished(file);
  await pg.createDatabase(database);
  await run('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', pg.url(database), '-f', out]);
}
