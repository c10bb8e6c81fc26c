import { mkdtemp, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { listBackups, verify } from '../../functions/engine/maintenance.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase, restoreFiles } from '../../functions/engine/restore.ts';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import { describeTree, makeFilesTree, testKey } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { checked } from '../../functions/storage/facade.ts';

/** Small chunks so that the small test database spans enough of them for proportions to mean something. */
const SMALL_CHUNKS = { minSize: 4096, avgSize: 16384, maxSize: 65536 };

let pg: TestPostgres;
beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('app');
  await createEventManager(pg, 'app', 2);
});
afterAll(async () => {
  await pg?.stop();
});

/** An Event Manager hour: 1% new registrations and audit rows, status changes on recent registrations. */
async function realisticHour(round: number): Promise<void> {
  await pg.sql(
    'app',
    `
    INSERT INTO registrations (user_id, event_id, status, created_at)
      SELECT 1 + (g * 31 + ${round}) % 4000, 1 + (g + ${round} * 7) % 200, 'pending', timestamptz '2025-07-01' + (${round} * 1000 + g) * interval '1 second'
      FROM generate_series(1, 120) g ON CONFLICT DO NOTHING;
    UPDATE registrations SET status = 'confirmed' WHERE id > (SELECT max(id) - 150 FROM registrations) AND id % 2 = ${round % 2};
    INSERT INTO audit_log (at, actor, payload) SELECT now(), 'round${round}', jsonb_build_object('n', g) FROM generate_series(1, 160) g;
    SELECT nextval('invoice_number');
  `,
  );
}

describe('INCREMENTAL', () => {
  it('stores a small fraction of the FULL after a 1% change, and every point of a chain restores exactly', async () => {
    // Prepare
    const storage = checked(new LocalStorage(await mkdtemp(join(tmpdir(), 'dr-repo-'))));
    const repository = await Repository.init(storage, testKey(), SMALL_CHUNKS);
    const database = pg.connection('app');
    const full = (await backup(repository, { type: 'FULL', source: { database } })).manifest;
    const states = [{ id: full.id, sums: await tableChecksums(pg, 'app') }];

    // Act: three hours, an INCREMENTAL after each
    for (let round = 1; round <= 3; round++) {
      await realisticHour(round);
      const { manifest } = await backup(repository, { type: 'INCREMENTAL', source: { database } });
      expect(manifest.parent).toBe(states.at(-1)!.id);
      expect(manifest.stats.bytesStored / full.stats.bytesStored, `round ${round}`).toBeLessThan(0.15);
      states.push({ id: manifest.id, sums: await tableChecksums(pg, 'app') });
    }

    // Assess: each backup restores, alone, to exactly its own state
    for (const [index, state] of states.entries()) {
      const target = await pg.createDatabase(`chain_${index}`);
      const result = await restoreDatabase(repository, await repository.loadManifest(state.id), { target });
      expect(result.consistent).toBe(true);
      expect(await tableChecksums(pg, `chain_${index}`), `point ${index}`).toEqual(state.sums);
    }
    expect(states[1]!.sums).not.toEqual(states[0]!.sums);
    expect((await listBackups(repository)).map((summary) => summary.type)).toEqual([
      'FULL',
      'INCREMENTAL',
      'INCREMENTAL',
      'INCREMENTAL',
    ]);
  });

  it('takes an INCREMENTAL with no earlier backup as a FULL, and says so', async () => {
    const repository = await Repository.init(
      checked(new LocalStorage(await mkdtemp(join(tmpdir(), 'dr-repo-')))),
      testKey(),
    );
    const result = await backup(repository, {
      type: 'INCREMENTAL',
      source: { database: pg.connection('app') },
    });
    expect(result.manifest.type).toBe('FULL');
    expect(result.notice).toContain('taken as a FULL');
  });

  it('does not read files whose size and mtime are unchanged, and restores the changed tree', async () => {
    const repository = await Repository.init(
      checked(new LocalStorage(await mkdtemp(join(tmpdir(), 'dr-repo-')))),
      testKey(),
    );
    const files = await makeFilesTree();
    const first = (await backup(repository, { type: 'FULL', source: { files } })).manifest;
    await writeFile(join(files, 'uploads/new.txt'), 'a new upload\n');
    const changed = join(files, 'config.json');
    await writeFile(changed, '{"a":2}');
    await utimes(changed, new Date('2026-02-02T00:00:00Z'), new Date('2026-02-02T00:00:00Z'));
    const second = (await backup(repository, { type: 'INCREMENTAL', source: { files } })).manifest;
    expect(second.parent).toBe(first.id);
    expect(second.stats.bytesRead).toBe('a new upload\n'.length + '{"a":2}'.length);
    const destination = await mkdtemp(join(tmpdir(), 'dr-restored-'));
    await restoreFiles(repository, second, { destination });
    expect(await describeTree(destination)).toEqual(await describeTree(files));
    expect((await verify(repository, second.id)).ok).toBe(true);
  });
});
