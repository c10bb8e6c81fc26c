import { execFile } from 'node:child_process';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { ControlPlane } from '../../functions/core/context.ts';
import { s3DownloadLinks } from '../../functions/aws/s3-downloads.ts';
import { downloadLinks } from '../../functions/core/services/backup-service.ts';
import { Partition } from '../../functions/core/store/table.ts';
import { parseMasterKey } from '../../functions/engine/crypto.ts';
import { exportToBucket } from '../../functions/worker/export.ts';
import { makeFilesTree } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { startS3, type TestS3 } from '../support/s3-server.ts';

/**
 * Downloads as they run on AWS: the API's first request starts an export in the worker and answers 202;
 * the worker streams the artifacts into the downloads bucket (a real S3-compatible server); the next
 * request answers with presigned links, which download the artifacts; a failed export is reported once and
 * then retried. The control plane and the backup come from the local runtime; only the launcher is replaced
 * by a recorder (the worker's export is called as the Lambda handler would call it).
 */
const run = promisify(execFile);
const actor = { principal: 'ops@example.com' };
let api: TestApi;
let pg: TestPostgres;
let s3server: TestS3;
let s3: S3Client;
let cp: ControlPlane;
let backupId: string;
let clock = Date.parse('2026-11-24T10:00:00Z');

beforeAll(async () => {
  [api, pg, s3server] = await Promise.all([
    startTestApi({ now: () => new Date(clock) }),
    startPostgres(),
    startS3('dr-downloads'),
  ]);
  s3 = new S3Client({
    region: 'us-east-1',
    endpoint: s3server.endpoint,
    credentials: { ...s3server.credentials },
    forcePathStyle: true,
  });
  cp = api.runtime.controlPlane;
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  const work = await mkdtemp(join(tmpdir(), 'dr-downloads-'));
  const files = await makeFilesTree();
  const calls = [
    () =>
      api.call('POST', '/api/dr/config', {
        rto: 4,
        rpo: 1,
        notificationEmails: ['ops@example.com'],
        source: { database: { url: pg.url('app') }, files: { type: 'directory', path: files } },
      }),
    () =>
      api.call('POST', '/api/dr/targets', {
        id: 'local',
        name: 'local',
        targetType: 'LOCAL',
        config: { path: join(work, 'repo') },
      }),
    () =>
      api.call('POST', '/api/dr/schedules', {
        id: 'nightly',
        name: 'nightly',
        scheduleType: 'FULL',
        cronExpression: '0 2 * * *',
        targets: ['local'],
      }),
  ];
  for (const call of calls) expect((await call()).status).toBe(201);
  const started = await api.call('POST', '/api/dr/schedules/nightly/execute');
  expect(started.status).toBe(202);
  backupId = started.body.id;
  await api.runtime.idle();
  expect((await api.call('GET', `/api/dr/backups/${backupId}`)).body.status).toBe('SUCCESS');
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop(), s3server?.stop()]);
});

/** S3 download links whose export launcher records what it was asked to start. */
function recordingLinks() {
  const started: string[] = [];
  const links = s3DownloadLinks(cp, {
    bucket: 'dr-downloads',
    s3,
    startExport: (id) => {
      started.push(id);
      return Promise.resolve();
    },
  });
  return { started, links };
}

const masterKey = async () => parseMasterKey(await readFile(join(api.dataDir, 'master.key'), 'utf8'));

it('exports through the worker on the first request, then hands out presigned links that download', async () => {
  const { started, links } = recordingLinks();

  const first = await downloadLinks(cp, links, backupId, actor);
  expect(first.status).toBe(202);
  expect(first.headers).toEqual({ 'retry-after': '15' });
  expect(first.body).toMatchObject({ backupId, status: 'PREPARING', retryAfterSeconds: 15 });
  // Asking again while it runs starts nothing more.
  expect((await downloadLinks(cp, links, backupId, actor)).status).toBe(202);
  expect(started).toEqual([backupId]);

  const exported = await exportToBucket(cp, backupId, { bucket: 'dr-downloads', masterKey, s3 });
  const day = `${backupId.slice(0, 4)}-${backupId.slice(4, 6)}-${backupId.slice(6, 8)}`;
  expect(exported.objects).toEqual([
    `exports/${backupId}/backup_${day}.sql`,
    `exports/${backupId}/backup_${day}.dump`,
    `exports/${backupId}/files_${day}.tar.gz`,
  ]);
  expect(await cp.table.get(Partition.export, backupId)).toBeUndefined();

  const ready = await downloadLinks(cp, links, backupId, actor);
  expect(ready.status).toBe(200);
  const body = ready.body as {
    status: string;
    artifacts: { artifact: string; filename: string; url: string; expiresAt: string }[];
  };
  expect(body.status).toBe('READY');
  expect(body.artifacts.map((item) => item.artifact)).toEqual(['database', 'archive', 'files']);
  for (const item of body.artifacts) {
    expect(item.url).toContain('X-Amz-Signature=');
    expect(item.url).toContain('X-Amz-Expires=900');
    expect(item.expiresAt).toBe(new Date(clock + 900_000).toISOString());
  }

  // The presigned archive link downloads a file pg_restore restores.
  const archive = body.artifacts.find((item) => item.artifact === 'archive')!;
  const response = await fetch(archive.url);
  expect(response.status).toBe(200);
  // S3 names the file from the signed response-content-disposition (moto ignores the override).
  expect(new URL(archive.url).searchParams.get('response-content-disposition')).toBe(
    `attachment; filename="${archive.filename}"`,
  );
  const file = join(await mkdtemp(join(tmpdir(), 'dr-dl-')), archive.filename);
  await writeFile(file, Buffer.from(await response.arrayBuffer()));
  await pg.createDatabase('from_s3');
  await run('pg_restore', ['--exit-on-error', '-d', pg.url('from_s3'), file]);
  expect(await tableChecksums(pg, 'from_s3')).toEqual(await tableChecksums(pg, 'app'));

  // Links are audited when handed out, not while the export is prepared.
  const audit = await api.call('GET', '/api/dr/audit?limit=100');
  const downloads = (audit.body.items as { action: string; resource: string }[]).filter(
    (entry) => entry.action === 'backup.download' && entry.resource === `backup/${backupId}`,
  );
  expect(downloads).toHaveLength(1);
});

it('reports a failed export once, then starts it again; an export that stopped answering is restarted', async () => {
  const other = (await api.call('POST', '/api/dr/schedules/nightly/execute')).body.id as string;
  await api.runtime.idle();
  const { started, links } = recordingLinks();
  expect((await downloadLinks(cp, links, other, actor)).status).toBe(202);
  // The worker fails (here: a bucket that does not exist) and records why.
  await expect(exportToBucket(cp, other, { bucket: 'no-such-bucket', masterKey, s3 })).rejects.toThrow();
  const failed = await downloadLinks(cp, links, other, actor).catch((error: unknown) => error);
  expect(failed).toMatchObject({
    status: 503,
    message: expect.stringMatching(/^preparing the download of backup .* failed: /),
  });
  expect(started).toEqual([other]);
  expect((await downloadLinks(cp, links, other, actor)).status).toBe(202);
  expect(started).toEqual([other, other]);

  // Nobody finished it: after 30 minutes the next request starts it anew.
  clock += 31 * 60_000;
  expect((await downloadLinks(cp, links, other, actor)).status).toBe(202);
  expect(started).toEqual([other, other, other]);
});
