import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GcsStorage, type GcsStorageOptions } from '../../functions/storage/gcs/gcs-storage.ts';
import { startGcs, type TestGcs } from '../support/gcs-server.ts';
import { patternStream, storageConformance } from '../support/storage-conformance.ts';
import { engineEndToEnd } from '../support/storage-end-to-end.ts';
import { checked } from '../../functions/storage/facade.ts';

const gcs = (server: TestGcs, bucket: string, prefix: string, overrides: Partial<GcsStorageOptions> = {}) =>
  new GcsStorage({
    projectId: 'dr-test-project',
    bucket,
    prefix,
    apiEndpoint: server.endpoint,
    ...overrides,
  });

storageConformance('GCS (JSON-API test server)', async () => {
  const server = await startGcs(['conformance']);
  return { storage: gcs(server, 'conformance', 'repo'), cleanup: server.stop };
});

engineEndToEnd('GCS', async () => {
  const server = await startGcs(['backups']);
  return { open: () => gcs(server, 'backups', 'event-manager'), cleanup: server.stop };
});

describe('GCS resumable uploads', () => {
  let server: TestGcs;
  beforeAll(async () => {
    server = await startGcs(['uploads']);
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('sends a stream in chunks and creates the object only with the last one', async () => {
    const storage = gcs(server, 'uploads', 'repo', { chunkSize: 1024 * 1024 });
    const before = server.chunkRequests();
    await storage.put('streamed/ok', patternStream(3 * 1024 * 1024 + 5));
    expect(server.chunkRequests() - before).toBe(4);
    expect(await storage.stat('streamed/ok')).toEqual({ key: 'streamed/ok', size: 3 * 1024 * 1024 + 5 });
    expect(server.openSessions()).toBe(0);

    // The source fails after two chunks could have gone up: whatever the session holds, no object exists.
    await expect(
      storage.put('streamed/broken', patternStream(3 * 1024 * 1024, 2 * 1024 * 1024 + 100)),
    ).rejects.toThrow();
    expect(await checked(storage).stat('streamed/broken')).toBeUndefined();
  });
});
