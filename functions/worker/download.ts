import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Writable } from 'node:stream';
import { createGzip } from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import { PassThrough } from 'node:stream';
import type { ControlPlane } from '../core/context.ts';
import type { MasterKey } from '../engine/crypto.ts';
import { exportArchive, exportSql, exportTar } from '../engine/export.ts';
import { withBackup } from '../core/services/open-backup.ts';
import type { DownloadArtifact } from '../core/ports.ts';

/**
 * Downloads as standard artifacts: the database as a plain SQL script for `psql` or a custom-format archive
 * for `pg_restore`, the files as a .tar.gz.
 * A link is a signed token (the backup, the artifact, an expiry) — the local runtime's stand-in for a
 * presigned S3 URL — and the artifact is produced as it is sent, from the first target holding the backup.
 */
export function signDownload(
  secret: Buffer,
  backupId: string,
  artifact: DownloadArtifact,
  expiresAt: Date,
): string {
  const payload = Buffer.from(JSON.stringify({ b: backupId, a: artifact, e: expiresAt.getTime() })).toString(
    'base64url',
  );
  return `${payload}.${createHmac('sha256', secret).update(payload).digest('base64url')}`;
}

export function verifyDownload(
  secret: Buffer,
  token: string,
  now: Date,
): { backupId: string; artifact: DownloadArtifact } | undefined {
  const [payload, signature] = token.split('.');
  if (!payload || !signature) return undefined;
  // Compared as the text that was signed out: decoding first would accept another spelling of the same bytes
  // (the last base64url character carries unused bits), so a changed link could still pass.
  const expected = Buffer.from(createHmac('sha256', secret).update(payload).digest('base64url'));
  const given = Buffer.from(signature);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as {
    b: string;
    a: DownloadArtifact;
    e: number;
  };
  return claims.e >= now.getTime() ? { backupId: claims.b, artifact: claims.a } : undefined;
}

export async function streamArtifact(
  cp: ControlPlane,
  backupId: string,
  artifact: DownloadArtifact,
  out: Writable,
  masterKey: () => Promise<MasterKey>,
): Promise<void> {
  await withBackup(cp, backupId, masterKey, async (repository, manifest) => {
    if (artifact === 'database') await exportSql(repository, manifest, out);
    else if (artifact === 'archive') await exportArchive(repository, manifest, out);
    else {
      const tar = new PassThrough();
      await Promise.all([exportTar(repository, manifest, tar), pipeline(tar, createGzip(), out)]);
    }
  });
}
