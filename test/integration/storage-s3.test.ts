import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { verify } from '../../functions/engine/maintenance.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase, restoreFiles } from '../../functions/engine/restore.ts';
import { S3Storage } from '../../functions/storage/s3/s3-storage.ts';
import { describeTree, makeFilesTree, testKey } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { startS3 } from '../support/s3-server.ts';
import { storageConformance } from '../support/storage-conformance.ts';

const s3 = (
  endpoint: string,
  bucket: string,
  credentials: { accessKeyId: string; secretAccessKey: string },
  prefix?: string,
) =>
  new S3Storage({
    bucket,
    region: 'us-east-1',
    endpoint,
    forcePathStyle: true,
    credentials,
    ...(prefix ? { prefix } : {}),
  });

storageConformance(
  'S3',
  async () => {
    const [server, authenticating] = await Promise.all([
      startS3('conformance'),
      startS3('conformance', { authenticate: true }),
    ]);
    return {
      storage: s3(server.endpoint, 'conformance', server.credentials, 'repo'),
      withWrongCredentials: s3(
        authenticating.endpoint,
        'conformance',
        { accessKeyId: authenticating.credentials.accessKeyId, secretAccessKey: 'wrong-secret' },
        'repo',
      ),
      cleanup: async () => {
        await Promise.all([server.stop(), authenticating.stop()]);
      },
    };
  },
  { credentials: true },
);

describe('engine on S3', () => {
  let pg: TestPostgres;
  let server: Awaited<ReturnType<typeof startS3>>;
  beforeAll(async () => {
    [pg, server] = await Promise.all([startPostgres(), startS3('backups')]);
    await pg.createDatabase('app');
    await createEventManager(pg, 'app');
  });
  afterAll(async () => {
    await Promise.all([pg?.stop(), server?.stop()]);
  });

  it('backs up FULL and INCREMENTAL, verifies and restores them', async () => {
    const repository = await Repository.init(
      s3(server.endpoint, 'backups', server.credentials, 'event-manager'),
      testKey(),
    );
    const files = await makeFilesTree();
    const database = pg.connection('app');
    const full = (await backup(repository, { type: 'FULL', source: { database, files } })).manifest;
    await pg.sql(
      'app',
      "INSERT INTO audit_log (at, payload) SELECT now(), '{}' FROM generate_series(1, 100)",
    );
    const expected = await tableChecksums(pg, 'app');
    const incremental = (await backup(repository, { type: 'INCREMENTAL', source: { database, files } }))
      .manifest;
    expect(incremental.parent).toBe(full.id);
    expect(incremental.stats.bytesStored).toBeLessThan(full.stats.bytesStored);

    const reopened = await Repository.open(
      s3(server.endpoint, 'backups', server.credentials, 'event-manager'),
      testKey(),
    );
    expect((await verify(reopened, incremental.id)).ok).toBe(true);
    const target = await pg.createDatabase('from_s3');
    expect((await restoreDatabase(reopened, incremental, { target })).consistent).toBe(true);
    expect(await tableChecksums(pg, 'from_s3')).toEqual(expected);
    const destination = await mkdtemp(join(tmpdir(), 'dr-s3-files-'));
    await restoreFiles(reopened, incremental, { destination });
    expect(await describeTree(destination)).toEqual(await describeTree(files));
  });
});
