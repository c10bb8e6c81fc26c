import { AzureStorage } from '../../functions/storage/azure/azure-storage.ts';
import { AZURITE_ACCOUNT, AZURITE_KEY, startAzurite } from '../support/azure-server.ts';
import { storageConformance } from '../support/storage-conformance.ts';
import { engineEndToEnd } from '../support/storage-end-to-end.ts';

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

engineEndToEnd('AZURE', async () => {
  const server = await startAzurite('backups');
  return {
    open: () => azure(server.endpoint, 'backups', AZURITE_KEY, 'event-manager'),
    cleanup: server.stop,
  };
});
