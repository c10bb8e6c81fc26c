import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeTree, makeFilesTree } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

const run = promisify(execFile);

/**
 * The whole path as an operator takes it, through the local runtime's HTTP API: configure, let the schedule
 * fire (the runtime's own dispatcher timer), find the latest FULL, download it, restore the download with
 * the standard tools (pg_restore for the archive, psql for the SQL, tar for the files), compare with the source.
 */
let api: TestApi;
let pg: TestPostgres;
let clock = Date.parse('2026-11-24T01:58:00Z');
beforeAll(async () => {
  [api, pg] = await Promise.all([
    startTestApi({ now: () => new Date(clock), dispatchIntervalMs: 100 }),
    startPostgres(),
  ]);
  await pg.createDatabase('event_manager');
  await createEventManager(pg, 'event_manager');
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});

async function until<T>(what: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await what();
    if (value !== undefined) return value;
    if (Date.now() > deadline)
      throw new Error(
        `timed out waiting: ${JSON.stringify((await api.call('GET', '/api/dr/backups')).body).slice(0, 800)}`,
      );
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

it('configures, fires on schedule, lists, downloads and restores with standard tools', async () => {
  const uploads = await makeFilesTree();
  const work = await mkdtemp(join(tmpdir(), 'dr-e2e-'));
  expect(
    (
      await api.call('POST', '/api/dr/config', {
        rto: 4,
        rpo: 1,
        backupRetentionDays: 30,
        notificationEmails: ['admin@example.com'],
        source: { database: { url: pg.url('event_manager') }, files: { type: 'directory', path: uploads } },
      })
    ).status,
  ).toBe(201);
  expect(
    (
      await api.call('POST', '/api/dr/targets', {
        id: 'local-target',
        name: 'Local Backup Storage',
        targetType: 'LOCAL',
        config: { path: join(work, 'backups') },
      })
    ).status,
  ).toBe(201);
  expect(
    (
      await api.call('POST', '/api/dr/schedules', {
        name: 'Daily Full Backup',
        scheduleType: 'FULL',
        frequency: 'DAILY',
        cronExpression: '0 2 * * *',
        active: true,
        retentionDays: 7,
        targets: ['local-target'],
      })
    ).status,
  ).toBe(201);

  // 02:00 passes; the runtime's dispatcher (on its timer) fires the schedule and the worker runs it.
  clock = Date.parse('2026-11-24T02:00:30Z');
  const latest = await until(async () => {
    const found = (await api.call('GET', '/api/dr/backups?type=FULL&latest=true')).body.items[0];
    return found?.status === 'SUCCESS' ? found : undefined;
  });
  expect(latest.trigger).toEqual({ kind: 'schedule', firingTime: '2026-11-24T02:00:00.000Z' });
  expect(latest.targets).toEqual([expect.objectContaining({ targetId: 'local-target', status: 'SUCCESS' })]);

  const download = await api.call('GET', `/api/dr/backups/${latest.id}/download`);
  expect(download.status).toBe(200);
  const artifacts = Object.fromEntries(download.body.artifacts.map((a: any) => [a.artifact, a]));
  expect(artifacts.database.filename).toBe(`backup_2026-11-24.sql`);
  expect(artifacts.archive.filename).toBe(`backup_2026-11-24.dump`);
  expect(artifacts.files.filename).toBe(`files_2026-11-24.tar.gz`);

  // The custom-format archive, restored with pg_restore (parallel jobs) into an empty database.
  const dumpFile = join(work, artifacts.archive.filename);
  const archive = await fetch(artifacts.archive.url);
  expect(archive.headers.get('content-disposition')).toBe(
    `attachment; filename="${artifacts.archive.filename}"`,
  );
  await writeFile(dumpFile, Buffer.from(await archive.arrayBuffer()));
  await pg.createDatabase('restored_archive');
  await run('pg_restore', ['--exit-on-error', '--jobs=2', '-d', pg.url('restored_archive'), dumpFile]);
  expect(await tableChecksums(pg, 'restored_archive')).toEqual(await tableChecksums(pg, 'event_manager'));

  const sqlFile = join(work, artifacts.database.filename);
  await writeFile(sqlFile, Buffer.from(await (await fetch(artifacts.database.url)).arrayBuffer()));
  await pg.createDatabase('restored');
  await run('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', pg.url('restored'), '-f', sqlFile]);
  expect(await tableChecksums(pg, 'restored')).toEqual(await tableChecksums(pg, 'event_manager'));

  const tarFile = join(work, artifacts.files.filename);
  await writeFile(tarFile, Buffer.from(await (await fetch(artifacts.files.url)).arrayBuffer()));
  const extracted = await mkdtemp(join(tmpdir(), 'dr-e2e-files-'));
  await run('tar', ['-xzf', tarFile, '-C', extracted]);
  // tar keeps whole-second modification times.
  expect(await describeTree(extracted, { mtimeSeconds: true })).toEqual(
    await describeTree(uploads, { mtimeSeconds: true }),
  );

  // Links are signed and expire; every download is in the audit log.
  const tampered = artifacts.database.url.replace(/.$/, (c: string) => (c === 'A' ? 'B' : 'A'));
  expect((await fetch(tampered)).status).toBe(403);
  clock += 16 * 60_000;
  expect((await fetch(artifacts.database.url)).status).toBe(403);
  const audit = (await api.call('GET', '/api/dr/audit')).body.items;
  expect(
    audit.some(
      (entry: any) => entry.action === 'backup.download' && entry.resource === `backup/${latest.id}`,
    ),
  ).toBe(true);
});
