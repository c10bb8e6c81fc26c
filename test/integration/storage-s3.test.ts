import { S3Storage } from '../../functions/storage/s3/s3-storage.ts';
import { startS3 } from '../support/s3-server.ts';
import { storageConformance } from '../support/storage-conformance.ts';
import { engineEndToEnd } from '../support/storage-end-to-end.ts';

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

engineEndToEnd('S3', async () => {
  const server = await startS3('backups');
  return {
    open: () => s3(server.endpoint, 'backups', server.credentials, 'event-manager'),
    cleanup: server.stop,
  };
});
