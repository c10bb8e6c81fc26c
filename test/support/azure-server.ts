import { spawn } from 'node:child_process';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';
import { freePort } from './ports.ts';

/**
 * Azurite (the Azure Storage emulator, an npm devDependency) serving Blob on 127.0.0.1 and a random port, in
 * memory. It checks shared-key signatures, so a wrong key gets the service's own 403 AuthenticationFailed.
 */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
/** Azurite's published development key (not a secret: it is in Azure's documentation). */
export const AZURITE_KEY =
  'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export async function startAzurite(
  container: string,
): Promise<{ endpoint: string; stop: () => Promise<void> }> {
  const port = await freePort();
  const child = spawn(
    'node_modules/.bin/azurite-blob',
    [
      '--blobHost',
      '127.0.0.1',
      '--blobPort',
      String(port),
      '--inMemoryPersistence',
      '--silent',
      '--skipApiVersionCheck',
      '--disableTelemetry',
    ],
    { stdio: 'ignore' },
  );
  child.on('error', () => undefined);
  const endpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  const service = new BlobServiceClient(
    endpoint,
    new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY),
    { retryOptions: { maxTries: 1 } },
  );
  for (let attempt = 0; ; attempt++) {
    if (child.exitCode !== null) throw new Error(`azurite-blob exited with code ${child.exitCode}`);
    try {
      await service.getContainerClient(container).createIfNotExists();
      break;
    } catch (error) {
      if (attempt > 200) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    endpoint,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((resolve) =>
        child.exitCode === null ? child.once('exit', resolve) : resolve(undefined),
      );
    },
  };
}
