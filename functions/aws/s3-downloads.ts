import { GetObjectCommand, HeadObjectCommand, NotFound, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { ControlPlane } from '../core/context.ts';
import { ConflictError, ignoreLostRace, ServiceUnavailableError } from '../core/errors.ts';
import { Partition } from '../core/store/table.ts';
import { ARTIFACTS, type Artifact, type DownloadLinks } from '../core/ports.ts';

/**
 * Downloads on AWS. A backup's artifacts are produced by the worker (which has `pg_dump`'s tools and the
 * master key), written to the downloads bucket under `exports/<backup id>/`, and handed out as presigned
 * GET URLs. The first request starts the export (one per backup: the claim is a conditional write) and
 * answers "preparing"; a later request finds the objects and answers with the links. The bucket's lifecycle
 * rule deletes exports after a day.
 */
export interface S3DownloadOptions {
  readonly bucket: string;
  /** Starts the export in the worker. */
  readonly startExport: (backupId: string) => Promise<void>;
  readonly s3?: S3Client;
  /** How long a link is valid. @default 900 s */
  readonly expiresInSeconds?: number;
  /** An export that has not finished after this long is taken as dead and started again. @default 30 min */
  readonly staleAfterMs?: number;
}

export interface ExportRecord {
  readonly backupId: string;
  readonly status: 'RUNNING' | 'FAILED';
  readonly startedAt: string;
  readonly reason?: string;
}

export function exportKey(backupId: string, filename: string): string {
  return `exports/${backupId}/${filename}`;
}

export function s3DownloadLinks(cp: ControlPlane, options: S3DownloadOptions): DownloadLinks {
  const s3 = options.s3 ?? new S3Client({});
  const expiresIn = options.expiresInSeconds ?? 900;
  const staleAfterMs = options.staleAfterMs ?? 30 * 60_000;
  const exists = async (key: string) => {
    try {
      await s3.send(new HeadObjectCommand({ Bucket: options.bucket, Key: key }));
      return true;
    } catch (error) {
      if (error instanceof NotFound || (error as { name?: string }).name === 'NotFound') return false;
      throw error;
    }
  };
  const link = async (backupId: string, { artifact, filename }: Artifact) => {
    const url = await getSignedUrl(
      s3,
      new GetObjectCommand({
        Bucket: options.bucket,
        Key: exportKey(backupId, filename),
        ResponseContentDisposition: `attachment; filename="${filename}"`,
        ResponseContentType: ARTIFACTS[artifact].contentType,
      }),
      { expiresIn },
    );
    return { url, expiresAt: new Date(cp.now().getTime() + expiresIn * 1000).toISOString() };
  };
  /** Starts the export unless one is under way; reports the last one's failure once. */
  const ensureExport = async (backupId: string) => {
    const now = cp.now();
    const current = await cp.table.get<ExportRecord>(Partition.export, backupId);
    if (current?.data.status === 'FAILED') {
      // Another request may have removed it first
      await cp.table.delete(current).catch(ignoreLostRace);
      throw new ServiceUnavailableError(
        `preparing the download of backup ${backupId} failed: ${current.data.reason ?? 'unknown reason'}; ask again to retry`,
      );
    }
    const running = { backupId, status: 'RUNNING' as const, startedAt: now.toISOString() };
    try {
      if (!current) await cp.table.create(Partition.export, backupId, running, now, 'export under way');
      else if (now.getTime() - Date.parse(current.data.startedAt) > staleAfterMs)
        await cp.table.replace(current, running, now);
      else return;
    } catch (error) {
      if (error instanceof ConflictError) return; // another request claimed it first
      throw error;
    }
    await options.startExport(backupId);
  };
  return {
    links: async (backupId, artifacts) => {
      const present = await Promise.all(artifacts.map((item) => exists(exportKey(backupId, item.filename))));
      if (present.every(Boolean))
        return { ready: true, links: await Promise.all(artifacts.map((item) => link(backupId, item))) };
      await ensureExport(backupId);
      return { ready: false, retryAfterSeconds: 15 };
    },
  };
}

/** The worker's side: records the export finished (the objects are the result) or failed (with why). */
export async function finishExport(cp: ControlPlane, backupId: string, failure?: string): Promise<void> {
  const current = await cp.table.get<ExportRecord>(Partition.export, backupId);
  if (!current) return;
  if (failure === undefined) await cp.table.delete(current);
  else await cp.table.replace(current, { ...current.data, status: 'FAILED', reason: failure }, cp.now());
}
