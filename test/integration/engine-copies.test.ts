import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { verify, verifyAll } from '../../functions/engine/maintenance.ts';
import type { Manifest } from '../../functions/engine/manifest.ts';
import { keys, Repository } from '../../functions/engine/repository.ts';
import { readStream, restoreDatabase } from '../../functions/engine/restore.ts';
import { collect, type Storage } from '../../functions/storage/storage.ts';
import { newRepository, testKey } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * A chunk stored by several backups (every FULL keeps its own copy) is indexed at every copy: losing the
 * packs of the newest FULL must not break an older FULL whose own data is intact, and verify says which
 * backups a loss breaks and which still restore.
 */
let pg: TestPostgres;
let older: Manifest;
let newer: Manifest;
let olderSums: Record<string, string>;
let dir: string;
let repository: Repository;

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  ({ dir, repository } = await newRepository());
  older = (await backup(repository, { type: 'FULL', source: { database: pg.connection('app') } })).manifest;
  olderSums = await tableChecksums(pg, 'app');
  // Data only the newer FULL holds
  await pg.sql(
    'app',
    "CREATE TABLE extra (id int PRIMARY KEY, body text); INSERT INTO extra SELECT g, repeat('x', 200) || g FROM generate_series(1, 20000) g",
  );
  newer = (await backup(repository, { type: 'FULL', source: { database: pg.connection('app') } })).manifest;
  // Lose every pack the newer FULL wrote
  const written = await repository.readIndexFile(keys.index(newer.id));
  expect(written.packs.length).toBeGreaterThan(0);
  for (const pack of written.packs) await rm(join(dir, keys.pack(pack.id)));
});
afterAll(async () => {
  await pg?.stop();
});

describe('chunks stored in several packs', () => {
  it('restores the older FULL intact after the newer FULL lost its packs', async () => {
    // A fresh process's view: the index read from the repository
    const reopened = await Repository.open(repository.storage, testKey());
    const target = await pg.createDatabase('from_older');
    const result = await restoreDatabase(reopened, older, { target });
    expect(result.consistent).toBe(true);
    expect(await tableChecksums(pg, 'from_older')).toEqual(olderSums);
  });

  it('says which backups the loss breaks and which still restore', async () => {
    const reopened = await Repository.open(repository.storage, testKey());
    const olderReport = await verify(reopened, older.id);
    expect(olderReport).toMatchObject({ ok: true, restorable: true, problems: [] });

    const { reports, unreadable } = await verifyAll(reopened);
    expect(unreadable).toEqual([]);
    const byId = new Map(reports.map((report) => [report.backupId, report]));
    expect(byId.get(older.id)).toMatchObject({ ok: true, restorable: true });
    const broken = byId.get(newer.id)!;
    expect(broken.ok).toBe(false);
    expect(broken.restorable).toBe(false);
    expect(broken.brokenItems).toContain('table public.extra');
    // The tables the older FULL also holds are read from its copies
    expect(broken.brokenItems).not.toContain('table public.users');
    expect(broken.problems.some((problem) => /data\/.* is missing/.test(problem.message))).toBe(true);
  });

  it('reads many chunks at once from a repository just opened (one index load, never a half-built one)', async () => {
    const reopened = await Repository.open(repository.storage, testKey());
    const chunks = older.database!.tables.flatMap((table) => table.chunks);
    expect(chunks.length).toBeGreaterThan(5);
    const read = await Promise.all(chunks.map((chunk) => reopened.readChunk(chunk)));
    expect(read.every((data) => data.length > 0)).toBe(true);
  });

  it('reads neighbouring chunks in one read, and a damaged chunk among them from its other copy', async () => {
    const fresh = await newRepository();
    await backup(fresh.repository, { type: 'FULL', source: { database: pg.connection('app') } });
    const second = (
      await backup(fresh.repository, { type: 'FULL', source: { database: pg.connection('app') } })
    ).manifest;
    const table = second.database!.tables.reduce((a, b) => (b.chunks.length > a.chunks.length ? b : a));
    expect(table.chunks.length).toBeGreaterThan(3);
    const reads: string[] = [];
    const storage: Storage = fresh.repository.storage;
    const counting: Storage = {
      ...storage,
      read: (key, range) => {
        reads.push(key);
        return storage.read(key, range);
      },
    };
    const expected = await collect(readStream(fresh.repository, table, 'table'));

    // Every chunk in one pack side by side: one read for all of them
    let reopened = await Repository.open(counting, testKey());
    expect((await collect(readStream(reopened, table, 'table'))).equals(expected)).toBe(true);
    expect(reads.filter((key) => key.startsWith('data/')).length).toBeLessThan(table.chunks.length / 2);

    // A byte flipped in the middle chunk's first copy: that chunk alone is read again, from the other copy
    const middle = table.chunks[Math.floor(table.chunks.length / 2)]!;
    const [damaged, other] = (await reopened.loadIndex()).get(middle)!;
    expect(other).toBeDefined();
    const file = await open(join(fresh.dir, keys.pack(damaged!.pack)), 'r+');
    const byte = Buffer.alloc(1);
    await file.read(byte, 0, 1, damaged!.offset + 20);
    await file.write(Buffer.of(byte[0]! ^ 0xff), 0, 1, damaged!.offset + 20);
    await file.close();
    reads.length = 0;
    reopened = await Repository.open(counting, testKey());
    expect((await collect(readStream(reopened, table, 'table'))).equals(expected)).toBe(true);
    expect(reads).toContain(keys.pack(other!.pack));
  });

  it('reads the next copy when the first one is lost', async () => {
    const fresh = await newRepository();
    const first = (
      await backup(fresh.repository, { type: 'FULL', source: { database: pg.connection('app') } })
    ).manifest;
    const second = (
      await backup(fresh.repository, { type: 'FULL', source: { database: pg.connection('app') } })
    ).manifest;
    const sums = await tableChecksums(pg, 'app');
    for (const pack of (await fresh.repository.readIndexFile(keys.index(first.id))).packs)
      await rm(join(fresh.dir, keys.pack(pack.id)));
    const reopened = await Repository.open(fresh.repository.storage, testKey());
    const users = second.database!.tables.find((table) => table.name === 'users')!;
    // Two copies, the lost one first
    expect((await reopened.loadIndex()).get(users.chunks[0]!)!.map((copy) => copy.pack)).toHaveLength(2);
    const target = await pg.createDatabase('from_second_copy');
    expect((await restoreDatabase(reopened, second, { target })).consistent).toBe(true);
    expect(await tableChecksums(pg, 'from_second_copy')).toEqual(sums);
    expect(await verify(reopened, second.id)).toMatchObject({ ok: true, restorable: true });
    // The first FULL lost its own packs: damaged, and its tables' rows read from the second's copies (its
    // schema archives may be its alone: pg_dump stamps each with the second it ran)
    const firstReport = await verify(reopened, first.id);
    expect(firstReport.ok).toBe(false);
    expect(firstReport.problems[0]!.message).toMatch(/is missing/);
    expect(firstReport.brokenItems.filter((item) => item.startsWith('table '))).toEqual([]);
  });
});
