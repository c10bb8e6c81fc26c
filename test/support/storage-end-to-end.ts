import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { verify } from '../../functions/engine/maintenance.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase, restoreFiles } from '../../functions/engine/restore.ts';
import { checked } from '../../functions/storage/facade.ts';
import type { Backend } from '../../functions/storage/storage.ts';
import { describeTree, makeFilesTree, testKey } from './engine.ts';
import { createEventManager, tableChecksums } from './event-manager.ts';
import { startPostgres, type TestPostgres } from './postgres.ts';

export interface EndToEndTarget {
  /** A new Storage on the same repository location each call (the restore reopens it from scratch). */
  open(): Backend;
  cleanup(): Promise<void>;
}

/**
 * The engine end to end on one target type: FULL then INCREMENTAL backups of the Event Manager test database
 * and a files tree, `verify`, then a restore from a freshly opened repository compared with the source.
 */
export function engineEndToEnd(name: string, start: () => Promise<EndToEndTarget>): void {
  describe(`engine on ${name}`, () => {
    let pg: TestPostgres;
    let target: EndToEndTarget;
    beforeAll(async () => {
      [pg, target] = await Promise.all([startPostgres(), start()]);
      await pg.createDatabase('app');
      await createEventManager(pg, 'app');
    });
    afterAll(async () => {
      await Promise.all([pg?.stop(), target?.cleanup()]);
    });

    it('backs up FULL and INCREMENTAL, verifies and restores them', async () => {
      const repository = await Repository.init(checked(target.open()), testKey());
      const files = await makeFilesTree();
      const database = pg.connection('app');
      const full = (await backup(repository, { type: 'FULL', source: { database, files } })).manifest;
      await pg.sql(
        'app',
        "INSERT INTO audit_log (at, payload) SELECT now(), '{}' FROM generate_series(1, 100)",
      );
      await pg.sql('app', "UPDATE registrations SET status = 'confirmed' WHERE id > 5900");
      const expected = await tableChecksums(pg, 'app');
      const incremental = (await backup(repository, { type: 'INCREMENTAL', source: { database, files } }))
        .manifest;
      expect(incremental.parent).toBe(full.id);
      expect(incremental.stats.bytesStored).toBeLessThan(full.stats.bytesStored);

      const reopened = await Repository.open(checked(target.open()), testKey());
      expect((await verify(reopened, full.id)).ok).toBe(true);
      expect((await verify(reopened, incremental.id)).ok).toBe(true);
      const restored = await pg.createDatabase(`from_${name.toLowerCase()}`);
      expect((await restoreDatabase(reopened, incremental, { target: restored })).consistent).toBe(true);
      expect(await tableChecksums(pg, `from_${name.toLowerCase()}`)).toEqual(expected);
      const destination = await mkdtemp(join(tmpdir(), `dr-${name.toLowerCase()}-files-`));
      await restoreFiles(reopened, incremental, { destination });
      expect(await describeTree(destination)).toEqual(await describeTree(files));
    });
  });
}
