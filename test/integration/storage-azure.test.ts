import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { verify } from '../../functions/engine/maintenance.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase } from '../../functions/engine/restore.ts';
import { AzureStorage } from '../../functions/storage/azure/azure-storage.ts';
import { AZURITE_ACCOUNT, AZURITE_KEY, startAzurite } from '../support/azure-server.ts';
import { testKey } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { storageConformance } from '../support/storage-conformance.ts';

const azure = (endpoint: string, containerName: string, accountKey = AZURITE_KEY, prefix = 'repo') =>
  new AzureStorage({ accountName: AZURITE_ACCOUNT, accountKey, containerName, endpoint, prefix });

storageConformance(
  'AZURE',
  async () => {
    const server = await startAzurite('conformance');
    return {
      storage: azure(server.endpoint, 'conformance'),
      // A well-formed key that is not the account's (its base64 names no secret the test could leak).
      withWrongCredentials: azure(
        server.endpoint,
        'conformance',
        Buffer.from('wrong-secret'.repeat(6)).toString('base64'),
      ),
      cleanup: server.stop,
    };
  },
  { credentials: true },
);

describe('engine on Azure Blob', () => {
  let pg: TestPostgres;
  let server: Awaited<ReturnType<typeof startAzurite>>;
  beforeAll(async () => {
    [pg, server] = await Promise.all([startPostgres(), startAzurite('backups')]);
    await pg.createDatabase('app');
    await createEventManager(pg, 'app');
  });
  afterAll(async () => {
    await Promise.all([pg?.stop(), server?.stop()]);
  });

  it('backs up FULL and INCREMENTAL, verifies and restores them', async () => {
    const repository = await Repository.init(
      azure(server.endpoint, 'backups', AZURITE_KEY, 'event-manager'),
      testKey(),
    );
    const database = pg.connection('app');
    const full = (await backup(repository, { type: 'FULL', source: { database } })).manifest;
    await pg.sql('app', "UPDATE registrations SET status = 'confirmed' WHERE id > 5900");
    const expected = await tableChecksums(pg, 'app');
    const incremental = (await backup(repository, { type: 'INCREMENTAL', source: { database } })).manifest;
    expect(incremental.parent).toBe(full.id);
    const reopened = await Repository.open(
      azure(server.endpoint, 'backups', AZURITE_KEY, 'event-manager'),
      testKey(),
    );
    expect((await verify(reopened, incremental.id)).ok).toBe(true);
    const target = await pg.createDatabase('from_azure');
    expect((await restoreDatabase(reopened, incremental, { target })).consistent).toBe(true);
    expect(await tableChecksums(pg, 'from_azure')).toEqual(expected);
  });
});
