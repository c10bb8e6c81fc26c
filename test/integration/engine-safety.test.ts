import { execFile, spawn } from 'node:child_process';
import { chmod, cp, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createWriteStream } from 'node:fs';
import { finished } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { CorruptDataError, SourceError, WrongKeyError } from '../../functions/engine/errors.ts';
import { exportArchive, exportTar } from '../../functions/engine/export.ts';
import type { Manifest } from '../../functions/engine/manifest.ts';
import {
  confirmReview,
  forget,
  gc,
  listBackups,
  newestRestorePoint,
  rekey,
  verify,
} from '../../functions/engine/maintenance.ts';
import { connectionFrom } from '../../functions/engine/postgres.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase } from '../../functions/engine/restore.ts';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import {
  describeTree,
  loadSqlExport,
  makeFilesTree,
  newRepository,
  schemaOf,
  testKey,
} from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { checked } from '../../functions/storage/facade.ts';
import type { Storage } from '../../functions/storage/storage.ts';

const run = promisify(execFile);
let pg: TestPostgres;
let repoDir: string;
let full: Manifest;
let filesRoot: string;
/** The database as the shared FULL saw it (later tests change it). */
let fullSums: Record<string, string>;

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  filesRoot = await makeFilesTree();
  const created = await newRepository();
  repoDir = created.dir;
  full = (
    await backup(created.repository, {
      type: 'FULL',
      source: { database: pg.connection('app'), files: filesRoot },
    })
  ).manifest;
  fullSums = await tableChecksums(pg, 'app');
});
afterAll(async () => {
  await pg?.stop();
});

/** A copy of the shared repository, so each case can damage its own. */
async function copyOfRepository(): Promise<{ dir: string; storage: Storage }> {
  const dir = await mkdtemp(join(tmpdir(), 'dr-repo-copy-'));
  await cp(repoDir, dir, { recursive: true });
  return { dir, storage: checked(new LocalStorage(dir)) };
}

async function flipByte(file: string, at: (size: number) => number): Promise<void> {
  const body = await readFile(file);
  const offset = at(body.length);
  body[offset] = body[offset]! ^ 0x01;
  await writeFile(file, body);
}

/** Stored objects under a prefix (not the `.partial` files of writes in progress). */
async function keysUnder(dir: string, prefix: string): Promise<string[]> {
  const entries = await readdir(join(dir, prefix), { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile() && !entry.name.endsWith('.partial'))
    .map((entry) => join(entry.parentPath, entry.name).slice(dir.length + 1))
    .sort();
}

describe('damage is found and named', () => {
  it.each([
    ['a chunk inside a pack', 'data', (size: number) => Math.min(100, size - 1)],
    ["a pack's header", 'data', (size: number) => size - 10],
    ['an index file', 'index', (size: number) => Math.floor(size / 2)],
  ])('a flipped byte in %s fails verify, naming the object and what it breaks', async (_case, prefix, at) => {
    const { dir, storage } = await copyOfRepository();
    const [victim] = await keysUnder(dir, prefix);
    await flipByte(join(dir, victim!), at);
    const report = await verify(await Repository.open(storage, testKey()), full.id);
    expect(report.ok).toBe(false);
    expect(report.problems[0]!.object).toContain(victim!);
    if (prefix !== 'data' || at(1000) === 100) expect(report.brokenItems.length).toBeGreaterThan(0);
  });

  it('a flipped byte in the manifest is refused by verify and restore', async () => {
    const { dir, storage } = await copyOfRepository();
    await flipByte(join(dir, 'backups', full.id), (size) => size - 5);
    const repository = await Repository.open(storage, testKey());
    await expect(verify(repository, full.id)).rejects.toMatchObject({
      name: 'CorruptData',
      object: `backups/${full.id}`,
    });
    await expect(repository.loadManifest(full.id)).rejects.toBeInstanceOf(CorruptDataError);
  });

  it('a flipped byte in the key file or the config is named when opening', async () => {
    const keyCopy = await copyOfRepository();
    const [keyFile] = await keysUnder(keyCopy.dir, 'keys');
    await flipByte(join(keyCopy.dir, keyFile!), (size) => size - 20);
    await expect(Repository.open(keyCopy.storage, testKey())).rejects.toThrow(keyFile!);

    const brokenJson = await copyOfRepository();
    const [jsonKeyFile] = await keysUnder(brokenJson.dir, 'keys');
    await flipByte(join(brokenJson.dir, jsonKeyFile!), () => 0);
    await expect(Repository.open(brokenJson.storage, testKey())).rejects.toMatchObject({
      name: 'CorruptData',
      object: jsonKeyFile,
    });

    const configCopy = await copyOfRepository();
    await flipByte(join(configCopy.dir, 'config'), () => 0);
    await expect(Repository.open(configCopy.storage, testKey())).rejects.toMatchObject({
      name: 'CorruptData',
      object: 'config',
    });
  });

  it('restore refuses corrupt data instead of loading it', async () => {
    const { dir, storage } = await copyOfRepository();
    const repository = await Repository.open(storage, testKey());
    const users = full.database!.tables.find((table) => table.name === 'users')!;
    const [location] = (await repository.loadIndex()).get(users.chunks[0]!)!;
    await flipByte(
      join(dir, 'data', location!.pack.slice(0, 2), location!.pack),
      () => location!.offset + 20,
    );
    const target = await pg.createDatabase('corrupt_target');
    await expect(restoreDatabase(repository, full, { target })).rejects.toBeInstanceOf(CorruptDataError);
    const loaded = await pg
      .sql('corrupt_target', 'SELECT count(*)::int AS n FROM users')
      .catch(() => ({ rows: [{ n: 0 }] }));
    expect(loaded.rows[0].n).toBe(0);
  });
});

describe('keys', () => {
  it('refuses a wrong key with a clear error, writing nothing', async () => {
    const { dir, storage } = await copyOfRepository();
    const before = await keysUnder(dir, '');
    await expect(Repository.open(storage, testKey(2))).rejects.toBeInstanceOf(WrongKeyError);
    await expect(Repository.open(storage, testKey(2))).rejects.toThrow('does not open the repository');
    expect(await keysUnder(dir, '')).toEqual(before);
  });

  it('rekey: the new key opens every backup, the old one no longer does', async () => {
    const { storage } = await copyOfRepository();
    const result = await rekey(await Repository.open(storage, testKey()), testKey(3));
    expect(result.removed).toHaveLength(1);
    const reopened = await Repository.open(storage, testKey(3));
    expect((await verify(reopened, full.id)).ok).toBe(true);
    await expect(Repository.open(storage, testKey())).rejects.toBeInstanceOf(WrongKeyError);
  });
});

describe('interrupted backups', () => {
  it('a backup killed midway leaves no backup listed; gc removes its data; the next backup succeeds', async () => {
    // Prepare: a database big enough to be killed during, packs small enough to appear early
    await pg.createDatabase('big');
    await pg.sql(
      'big',
      `CREATE TABLE bulk (id int PRIMARY KEY, body text); INSERT INTO bulk SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 4) FROM generate_series(1, 400000) g;`,
    );
    const { dir, repository } = await newRepository();
    await writeFile(join(dir, 'master.key'), Buffer.alloc(32, 1).toString('hex'));
    const child = spawn(
      process.execPath,
      [
        'functions/cli/drctl.ts',
        'backup',
        '--repo',
        dir,
        '--key-file',
        join(dir, 'master.key'),
        '--db',
        pg.url('big'),
        '--pack-size',
        '65536',
      ],
      { stdio: 'ignore' },
    );
    // Act: kill it once a few packs are on disk
    for (let tries = 0; tries < 2000; tries++) {
      const packs = await keysUnder(dir, 'data').catch(() => []);
      if (packs.length >= 3) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    // Assess
    expect((await keysUnder(dir, 'data')).length).toBeGreaterThanOrEqual(3);
    expect(await listBackups(repository)).toEqual([]);
    // Its lock names a process of this machine that is gone: gc goes ahead at once (it used to wait an hour)
    const report = await gc(repository);
    expect(report.deletedPacks).toBeGreaterThanOrEqual(3);
    expect(report.staleLocks).toBe(1);
    expect(await keysUnder(dir, 'data')).toEqual([]);
    const { manifest } = await backup(repository, {
      type: 'FULL',
      source: { database: pg.connection('big') },
    });
    expect((await verify(repository, manifest.id)).ok).toBe(true);
  });

  it('forget then gc frees what only the forgotten backup used, and keeps what later backups need', async () => {
    const { repository } = await newRepository();
    const database = pg.connection('app');
    const first = (await backup(repository, { type: 'FULL', source: { database } })).manifest;
    await pg.sql('app', `INSERT INTO audit_log (at, payload) SELECT now(), '{}' FROM generate_series(1, 50)`);
    const second = (await backup(repository, { type: 'INCREMENTAL', source: { database } })).manifest;
    await forget(repository, [first.id]);
    const report = await gc(repository);
    expect(report.keptPacks).toBeGreaterThan(0);
    expect((await verify(repository, second.id)).ok).toBe(true);
    const target = await pg.createDatabase('after_gc');
    expect((await restoreDatabase(repository, second, { target })).consistent).toBe(true);
  });
});

describe('source failures', () => {
  it('a missing pg_dump is a clear error and records no backup', async () => {
    const { repository } = await newRepository();
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await expect(
        backup(repository, { type: 'FULL', source: { database: pg.connection('app') } }),
      ).rejects.toThrow('pg_dump is not installed or not on PATH');
    } finally {
      process.env.PATH = path;
    }
    expect(await listBackups(repository)).toEqual([]);
  });

  it('a dump that exits non-zero fails with its stderr, the password removed', async () => {
    const { repository } = await newRepository();
    const fakeBin = await mkdtemp(join(tmpdir(), 'dr-fake-'));
    await writeFile(
      join(fakeBin, 'pg_dump'),
      '#!/bin/sh\necho "pg_dump: error: query failed for user with password $PGPASSWORD" >&2\nexit 1\n',
    );
    await chmod(join(fakeBin, 'pg_dump'), 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${fakeBin}:${path}`;
    try {
      // The cluster needs the password (SCRAM): the connection authenticates, then pg_dump (given the
      // password through PGPASSWORD) prints it in its error.
      const connection = pg.connection('app');
      const error = (await backup(repository, { type: 'FULL', source: { database: connection } }).catch(
        (caught: unknown) => caught,
      )) as Error;
      expect(error).toBeInstanceOf(SourceError);
      expect(error.message).toContain('pg_dump exited with code 1: pg_dump: error: query failed');
      expect(error.message).not.toContain(pg.password);
    } finally {
      process.env.PATH = path;
    }
    expect(await listBackups(repository)).toEqual([]);
  });

  it('a refused connection is a clear error without the password', async () => {
    const { repository } = await newRepository();
    const connection = connectionFrom('postgres://someone:s3cret-pw@127.0.0.1:1/app');
    const error = (await backup(repository, { type: 'FULL', source: { database: connection } }).catch(
      (caught: unknown) => caught,
    )) as Error;
    expect(error).toBeInstanceOf(SourceError);
    expect(error.message).toMatch(/cannot connect to postgres:\/\/someone@127\.0\.0\.1:1\/app/);
    expect(error.message).not.toContain('s3cret-pw');
  });

  it('flags a dump far smaller than its parent for review, and does not build on it', async () => {
    await pg.sql('postgres', 'CREATE DATABASE shrinking TEMPLATE app');
    const { repository } = await newRepository();
    const database = pg.connection('shrinking');
    const good = (await backup(repository, { type: 'FULL', source: { database } })).manifest;
    await pg.sql('shrinking', 'TRUNCATE tickets, registrations, audit_log');
    const suspicious = (await backup(repository, { type: 'INCREMENTAL', source: { database } })).manifest;
    expect(suspicious.review?.reason).toContain('under 50%');
    expect((await listBackups(repository)).map((summary) => summary.review)).toEqual([
      undefined,
      suspicious.review!.reason,
    ]);
    const next = (await backup(repository, { type: 'INCREMENTAL', source: { database } })).manifest;
    expect(next.parent).toBe(good.id);
  });

  it('flags a FULL far smaller than the previous FULL, and takes it as a restore point only once confirmed', async () => {
    await pg.sql('postgres', 'CREATE DATABASE shrinking_full TEMPLATE app');
    const { repository } = await newRepository();
    const database = pg.connection('shrinking_full');
    const good = (await backup(repository, { type: 'FULL', source: { database } })).manifest;
    await pg.sql('shrinking_full', 'DELETE FROM tickets; DELETE FROM registrations; DELETE FROM audit_log');
    const shrunk = (await backup(repository, { type: 'FULL', source: { database } })).manifest;
    expect(shrunk.review?.reason).toMatch(new RegExp(`under 50% of the \\d+ of FULL ${good.id}`));
    expect((await newestRestorePoint(repository))?.id).toBe(good.id);
    // An INCREMENTAL does not build on it either (and, built on the larger FULL, is flagged too)
    const next = (await backup(repository, { type: 'INCREMENTAL', source: { database } })).manifest;
    expect(next.parent).toBe(good.id);
    expect(next.review?.reason).toMatch(/\S/);

    const confirmed = await confirmReview(repository, shrunk.id, 'ops@example.com');
    expect(confirmed.review?.confirmed?.by).toBe('ops@example.com');
    expect(
      (await listBackups(repository)).find((summary) => summary.id === shrunk.id)?.review,
    ).toBeUndefined();
    expect((await newestRestorePoint(repository))?.id).toBe(shrunk.id);
    // The next FULL is compared with the confirmed one, and is not flagged
    const after = (await backup(repository, { type: 'FULL', source: { database } })).manifest;
    expect(after.review).toBeUndefined();
    await expect(confirmReview(repository, shrunk.id, 'ops@example.com')).rejects.toThrow('not flagged');
  });

  it('stops pg_dump when storing its output fails, instead of leaving it blocked on a full pipe', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dr-failing-'));
    class FailingStorage extends LocalStorage {
      override async put(key: string, body: Parameters<LocalStorage['put']>[1]): Promise<void> {
        if (key.startsWith('data/')) throw new Error('disk full (injected)');
        return super.put(key, body);
      }
    }
    const repository = await Repository.init(checked(new FailingStorage(dir)), testKey());
    const fakeBin = await mkdtemp(join(tmpdir(), 'dr-fake-'));
    const marker = `dr-endless-dump-${process.pid}`;
    // Endless output that does not deduplicate, under a name pgrep can find
    await writeFile(join(fakeBin, 'pg_dump'), `#!/bin/bash\nexec -a ${marker} cat /dev/urandom\n`);
    await chmod(join(fakeBin, 'pg_dump'), 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${fakeBin}:${path}`;
    try {
      await expect(
        backup(repository, { type: 'FULL', source: { database: pg.connection('app') }, packSize: 65536 }),
      ).rejects.toThrow('disk full (injected)');
    } finally {
      process.env.PATH = path;
    }
    const left = await run('pgrep', ['-f', marker]).catch((error: { code?: number }) => {
      expect(error.code).toBe(1); // pgrep: no process matched
      return undefined;
    });
    if (left) {
      await run('pkill', ['-f', marker]).catch(() => undefined);
      expect.fail(`pg_dump was left running: ${left.stdout}`);
    }
  });

  it('fails a backup whose pg_dump exits 0 with an empty or truncated archive', async () => {
    const { repository } = await newRepository();
    const fakeBin = await mkdtemp(join(tmpdir(), 'dr-fake-'));
    const real = (await run('sh', ['-c', 'command -v pg_dump'])).stdout.trim();
    const path = process.env.PATH;
    process.env.PATH = `${fakeBin}:${path}`;
    try {
      for (const [script, expected] of [
        ['#!/bin/sh\nexit 0\n', 'wrote an empty pre-data archive'],
        [`#!/bin/sh\n${real} "$@" | head -c 300\nexit 0\n`, 'archive is not readable (truncated?)'],
      ] as const) {
        await writeFile(join(fakeBin, 'pg_dump'), script);
        await chmod(join(fakeBin, 'pg_dump'), 0o755);
        const error = (await backup(repository, {
          type: 'FULL',
          source: { database: pg.connection('app') },
        }).catch((caught: unknown) => caught)) as Error;
        expect(error).toBeInstanceOf(SourceError);
        expect(error.message).toContain(expected);
      }
    } finally {
      process.env.PATH = path;
    }
    expect(await listBackups(repository)).toEqual([]);
  });
});

describe('other backup types and outputs', () => {
  it('SCHEMA backs up and restores the structure only', async () => {
    const { repository } = await newRepository();
    const { manifest } = await backup(repository, {
      type: 'SCHEMA',
      source: { database: pg.connection('app') },
    });
    expect(manifest.database?.schemaOnly?.size).toBeGreaterThan(0);
    const target = await pg.createDatabase('schema_only');
    await restoreDatabase(repository, manifest, { target });
    expect(await schemaOf(pg, 'schema_only')).toEqual(await schemaOf(pg, 'app'));
    expect((await pg.sql('schema_only', 'SELECT count(*)::int AS n FROM users')).rows[0].n).toBe(0);
    expect((await verify(repository, manifest.id)).ok).toBe(true);
  });

  it('exports a plain SQL script that psql restores, and a tar of the files', async () => {
    const repository = await Repository.open(checked(new LocalStorage(repoDir)), testKey());
    await loadSqlExport(pg, repository, full, 'from_sql');
    expect(await tableChecksums(pg, 'from_sql')).toEqual(fullSums);

    const tarFile = join(await mkdtemp(join(tmpdir(), 'dr-export-')), 'files.tar');
    const tarStream = createWriteStream(tarFile);
    await exportTar(repository, full, tarStream);
    const extracted = await mkdtemp(join(tmpdir(), 'dr-untar-'));
    await run('tar', ['-xpf', tarFile, '-C', extracted]);
    // tar (ustar) keeps whole-second mtimes.
    expect(await describeTree(extracted, { mtimeSeconds: true })).toEqual(
      await describeTree(filesRoot, { mtimeSeconds: true }),
    );
  });

  it('exports a custom-format archive that pg_restore lists and restores, with one job or several', async () => {
    const repository = await Repository.open(checked(new LocalStorage(repoDir)), testKey());
    const out = join(await mkdtemp(join(tmpdir(), 'dr-export-')), 'backup.dump');
    const stream = createWriteStream(out);
    await exportArchive(repository, full, stream);
    stream.end();
    await finished(stream);

    const listing = (await run('pg_restore', ['--list', out])).stdout;
    const data = listing.split('\n').filter((line) => / TABLE DATA /.test(line));
    expect(data).toHaveLength(full.database!.tables.length);
    expect(listing).toMatch(/ SEQUENCE SET public invoice_number /);
    expect(listing).toMatch(/ FK CONSTRAINT public registrations registrations_user_id_fkey /);

    await pg.createDatabase('from_archive');
    await run('pg_restore', ['--exit-on-error', '--no-owner', '-d', pg.url('from_archive'), out]);
    expect(await tableChecksums(pg, 'from_archive')).toEqual(fullSums);

    await pg.createDatabase('from_archive_jobs');
    await run('pg_restore', [
      '--exit-on-error',
      '--no-owner',
      '--jobs=3',
      '-d',
      pg.url('from_archive_jobs'),
      out,
    ]);
    expect(await tableChecksums(pg, 'from_archive_jobs')).toEqual(fullSums);
    expect(await schemaOf(pg, 'from_archive_jobs')).toEqual(await schemaOf(pg, 'from_archive'));

    // one table picked out of the archive, as an operator would
    await pg.createDatabase('one_table');
    await run('pg_restore', ['--exit-on-error', '--no-owner', '-t', 'users', '-d', pg.url('one_table'), out]);
    const picked = await tableChecksums(pg, 'one_table');
    expect(Object.keys(picked)).toEqual(['public.users']);
    expect(picked['public.users']).toBe(fullSums['public.users']);
  });

  it('restores chosen tables only, with their indexes and constraints', async () => {
    const repository = await Repository.open(checked(new LocalStorage(repoDir)), testKey());
    const target = await pg.createDatabase('partial');
    const result = await restoreDatabase(repository, full, { target, tables: ['users', 'public.events'] });
    expect(result.tables).toBe(2);
    expect(result.consistent).toBe(true);
    const tables = await pg.sql(
      'partial',
      "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    );
    expect(tables.rows.map((row: { tablename: string }) => row.tablename)).toEqual(['events', 'users']);
    const indexes = await pg.sql(
      'partial',
      "SELECT indexname FROM pg_indexes WHERE tablename = 'users' ORDER BY 1",
    );
    expect(indexes.rows.map((row: { indexname: string }) => row.indexname)).toEqual([
      'users_email_key',
      'users_pkey',
    ]);
    const restored = await tableChecksums(pg, 'partial');
    expect(restored['public.users']).toBe(fullSums['public.users']);
    expect(restored['public.events']).toBe(fullSums['public.events']);
  });

  it('replaces chosen tables without dropping what depends on them, and refuses before writing what it cannot do safely', async () => {
    const repository = await Repository.open(checked(new LocalStorage(repoDir)), testKey());
    await pg.sql('postgres', 'CREATE DATABASE partial_over TEMPLATE app');
    const foreignKeys = async () =>
      (
        await pg.sql(
          'partial_over',
          "SELECT conrelid::regclass::text || ' ' || conname AS fk FROM pg_constraint WHERE contype = 'f' ORDER BY 1",
        )
      ).rows.map((row: { fk: string }) => row.fk);
    const before = await foreignKeys();
    expect(before).toHaveLength(3);
    await pg.sql('partial_over', 'DELETE FROM tickets WHERE registration_id % 2 = 0');
    const changed = await tableChecksums(pg, 'partial_over');
    const target = pg.connection('partial_over');

    // Without clean: the table exists, so nothing starts
    await expect(restoreDatabase(repository, full, { target, tables: ['tickets'] })).rejects.toThrow(
      'the target database already has public.tickets: restore into another database, or pass clean',
    );
    // registrations alone: tickets' foreign key depends on it; CASCADE would lose it
    await expect(
      restoreDatabase(repository, full, { target, tables: ['registrations'], clean: true }),
    ).rejects.toThrow(
      /would drop what depends on it \(constraint tickets_registration_id_fkey on table tickets/,
    );
    expect(await foreignKeys()).toEqual(before);
    expect(await tableChecksums(pg, 'partial_over')).toEqual(changed);

    // tickets (nothing depends on it): replaced, every foreign key still there
    const result = await restoreDatabase(repository, full, { target, tables: ['tickets'], clean: true });
    expect(result.consistent).toBe(true);
    expect(await foreignKeys()).toEqual(before);
    expect((await tableChecksums(pg, 'partial_over'))['public.tickets']).toBe(fullSums['public.tickets']);
    // registrations with tickets: both replaced together, foreign keys all back
    await restoreDatabase(repository, full, { target, tables: ['registrations', 'tickets'], clean: true });
    expect(await foreignKeys()).toEqual(before);
  });

  it('refuses to restore over a database that is not empty unless told to clean', async () => {
    const repository = await Repository.open(checked(new LocalStorage(repoDir)), testKey());
    await expect(restoreDatabase(repository, full, { target: pg.connection('app') })).rejects.toThrow(
      'not empty',
    );
    await pg.sql('postgres', 'CREATE DATABASE overwritten TEMPLATE app');
    await pg.sql('overwritten', "UPDATE users SET name = 'changed'");
    const result = await restoreDatabase(repository, full, {
      target: pg.connection('overwritten'),
      clean: true,
    });
    expect(result.consistent).toBe(true);
    expect(await tableChecksums(pg, 'overwritten')).toEqual(fullSums);
  });
});
