import { PassThrough } from 'node:stream';
import { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { ControlPlane } from '../core/context.ts';
import { exportKey, finishExport } from '../aws/s3-downloads.ts';
import { getBackup } from '../core/services/backup-service.ts';
import type { MasterKey } from '../engine/crypto.ts';
import { streamArtifact } from './download.ts';
import { ARTIFACTS, artifactsOf } from '../core/ports.ts';

/**
 * Exports a backup's artifacts to the downloads bucket (AWS): each one streamed from a target holding the
 * backup straight into a multipart upload, so memory stays bounded whatever the size; an object appears only
 * when its upload completes. The export's record is removed on success, marked FAILED with the reason if not.
 */
export async function exportToBucket(
  cp: ControlPlane,
  backupId: string,
  options: { bucket: string; masterKey: () => Promise<MasterKey>; s3?: S3Client },
): Promise<{ backupId: string; objects: string[] }> {
  const s3 = options.s3 ?? new S3Client({});
  const objects: string[] = [];
  try {
    const record = await getBackup(cp, backupId);
    for (const { artifact, filename } of artifactsOf(record)) {
      const key = exportKey(backupId, filename);
      const body = new PassThrough();
      const upload = new Upload({
        client: s3,
        params: {
          Bucket: options.bucket,
          Key: key,
          Body: body,
          ContentType: ARTIFACTS[artifact].contentType,
        },
        partSize: 16 * 1024 * 1024,
        queueSize: 2,
      });
      const produce = streamArtifact(cp, backupId, artifact, body, options.masterKey).then(
        () => {
          if (!body.writableEnded) body.end();
        },
        (error: unknown) => {
          body.destroy(error as Error);
          throw error;
        },
      );
      const uploaded = upload.done().catch((error: unknown) => {
        body.destroy(error as Error);
        throw error;
      });
      const [produced, stored] = await Promise.allSettled([produce, uploaded]);
      if (stored.status === 'rejected') throw stored.reason;
      if (produced.status === 'rejected') throw produced.reason;
      objects.push(key);
      cp.logger.info('export written', { backup: backupId, key });
    }
    await finishExport(cp, backupId);
    return { backupId, objects };
  } catch (error) {
    const reason = (error as Error).message;
    cp.logger.error('export failed', { backup: backupId, error: reason });
    await finishExport(cp, backupId, reason).catch(() => undefined);
    throw error;
  }
}
