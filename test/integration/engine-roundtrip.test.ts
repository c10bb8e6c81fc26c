import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { listBackups, verify } from '../../functions/engine/maintenance.ts';
import { restoreDatabase, restoreFiles } from '../../functions/engine/restore.ts';
import { describeTree, makeFilesTree, newRepository, schemaOf } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let pg: TestPostgres;
beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
});
afterAll(async () => {
  await pg?.stop();
});

describe('FULL backup and restore', () => {
  it('restores identical data, schema and files', async () => {
    // Prepare
    const { repository } = await newRepository();
    const files = await makeFilesTree();
    const before = await tableChecksums(pg, 'app');
    // Act
    const { manifest } = await backup(repository, {
      type: 'FULL',
      source: { database: pg.connection('app'), files },
    });
    const target = await pg.createDatabase('restored_full');
    const result = await restoreDatabase(repository, manifest, { target });
    const destination = await mkdtemp(join(tmpdir(), 'dr-restored-'));
    await restoreFiles(repository, manifest, { destination });
    // Assess
    expect(result.consistent).toBe(true);
    expect(result.checks.length).toBe(6);
    expect(await tableChecksums(pg, 'restored_full')).toEqual(before);
    expect(await schemaOf(pg, 'restored_full')).toEqual(await schemaOf(pg, 'app'));
    expect(await describeTree(destination)).toEqual(await describeTree(files));
    expect(manifest.database?.tables.find((table) => table.name === 'users')).toMatchObject({
      rows: 2000,
      orderBy: ['id'],
    });
    expect(manifest.database?.tables.find((table) => table.name === 'page_views')?.orderBy).toEqual([]);
    expect((await listBackups(repository)).map((summary) => summary.id)).toEqual([manifest.id]);
    expect((await verify(repository, manifest.id)).ok).toBe(true);
  });
});
