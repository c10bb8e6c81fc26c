import { execFile } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { currentConditions } from '../../functions/core/services/alert-service.ts';
import { Partition } from '../../functions/core/store/table.ts';
import { CloudWatchClient, PutMetricDataCommand } from '@aws-sdk/client-cloudwatch';
import { startMoto } from '../support/s3-server.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/** Change-stream mode as an operator uses it: schedules, runs, point-in-time restores, alerts, clean-up. */
let api: TestApi;
let pg: TestPostgres;
/** The runtime's clock runs this far ahead of the real one (to age the slot for the stall alert). */
let skew = 0;
const SLOT = 'dr_automation_app';

beforeAll(async () => {
  [api, pg] = await Promise.all([startTestApi({ now: () => new Date(Date.now() + skew) }), startPostgres()]);
  await pg.createDatabase('app');
  await pg.createDatabase('staging');
  await createEventManager(pg, 'app');
  await configure(api, {
    rto: 4,
    rpo: 1,
    notificationEmails: ['ops@example.com'],
    source: { database: { url: pg.url('app') } },
    environments: { STAGING: { database: { url: pg.url('staging') } } },
  });
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});

/** The config, a LOCAL target `primary` and a nightly FULL schedule `nightly`. */
async function configure(on: TestApi, config: unknown): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'dr-changes-'));
  const setup: [string, unknown][] = [
    ['/api/dr/config', config],
    ['/api/dr/targets', { id: 'primary', targetType: 'LOCAL', config: { path: join(work, 'primary') } }],
    [
      '/api/dr/schedules',
      {
        id: 'nightly',
        name: 'nightly',
        scheduleType: 'FULL',
        cronExpression: '0 2 * * *',
        targets: ['primary'],
      },
    ],
  ];
  for (const [path, body] of setup) expect((await on.call('POST', path, body)).status).toBe(201);
}

async function run(scheduleId: string, on: TestApi = api): Promise<any> {
  const started = await on.call('POST', `/api/dr/schedules/${scheduleId}/execute`);
  expect(started.status, started.text).toBe(202);
  await on.runtime.idle();
  const done = await on.call('GET', `/api/dr/backups/${started.body.id}`);
  expect(done.body.status, JSON.stringify(done.body)).toBe('SUCCESS');
  return done.body;
}

async function restore(body: unknown): Promise<any> {
  const started = await api.call('POST', '/api/dr/restore', body);
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/restore/${started.body.restoreId}`)).body;
}

async function drTest(body: unknown): Promise<any> {
  const started = await api.call('POST', '/api/dr/test', body);
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/test/${started.body.testId}`)).body;
}

async function slot(database = 'app'): Promise<{ confirmed: string } | undefined> {
  const found = await pg.sql(
    database,
    `SELECT confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots WHERE slot_name = 'dr_automation_${database}'`,
  );
  return found.rows[0] as { confirmed: string } | undefined;
}

const frequent = {
  id: 'frequent',
  name: 'every 5 minutes',
  scheduleType: 'INCREMENTAL',
  cronExpression: '*/5 * * * *',
  targets: ['primary'],
};

describe('change-stream schedules', () => {
  it('reports at configuration time the tables it cannot capture, with the fix', async () => {
    const created = await api.call('POST', '/api/dr/schedules', { ...frequent, mode: 'change-stream' });
    expect(created.status).toBe(201);
    expect(created.body.mode).toBe('change-stream');
    expect(created.body.warnings.join('\n')).toContain('public.page_views');
    expect(created.body.changeStream.readiness.tablesWithoutIdentity).toEqual([
      {
        table: 'public.page_views',
        reason: expect.stringContaining('no primary key'),
        fix: 'add a primary key, or ALTER TABLE "public"."page_views" REPLICA IDENTITY FULL',
      },
    ]);
    // Until it is fixed the INCREMENTAL deduplicates dumps, and says so
    await run('nightly');
    const fallback = await run('frequent');
    expect(fallback.type).toBe('INCREMENTAL');
    expect(fallback.changes).toBeUndefined();
    expect(fallback.notice).toContain('deduplicates a dump instead');
    // Change-stream mode was asked for explicitly: falling back alerts (auto would only say so)
    expect(fallback.streamUnavailable).toContain('public.page_views');
    const unavailable = (await currentConditions(api.runtime.controlPlane)).find(
      (condition) => condition.key === 'stream-unavailable:frequent',
    );
    expect(unavailable).toMatchObject({
      active: true,
      lines: expect.arrayContaining([expect.stringContaining('public.page_views')]),
    });

    await pg.sql('app', 'ALTER TABLE page_views REPLICA IDENTITY FULL');
    const report = await api.call('GET', '/api/dr/change-stream');
    expect(report.status).toBe(200);
    expect(report.body).toMatchObject({ slot: SLOT, readiness: { available: true, walLevel: 'logical' } });
  });

  it('stores only the changes, advances the slot after the commit, and restores to any instant', async () => {
    const full = await run('nightly');
    expect(full.changes).toMatchObject({ base: full.id, transactions: 0 });
    expect(await slot()).toMatchObject({ confirmed: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/) });
    const instants: { at: string; sums: Record<string, string> }[] = [];
    for (const sql of [
      "UPDATE users SET name = 'renamed ' || id WHERE id % 100 = 0",
      'DELETE FROM tickets WHERE registration_id % 11 = 0',
      "INSERT INTO page_views VALUES ('/new', now())",
    ]) {
      await pg.sql('app', sql);
      const clock = await pg.sql('app', 'SELECT clock_timestamp() AS at');
      instants.push({
        at: (clock.rows[0] as { at: Date }).at.toISOString(),
        sums: await tableChecksums(pg, 'app'),
      });
    }

    const incremental = await run('frequent');

    expect(incremental).toMatchObject({
      type: 'INCREMENTAL',
      parent: full.id,
      changes: { base: full.id, transactions: 3 },
    });
    expect(incremental.sizes.storedBytes).toBeLessThan(full.sizes.storedBytes / 20);
    const conditions = await currentConditions(api.runtime.controlPlane);
    expect(conditions.find((condition) => condition.key === 'stream-unavailable:frequent')?.active).toBe(
      false,
    );
    expect((await slot())?.confirmed).toBe(incremental.changes.endLsn);
    for (const [index, instant] of instants.entries()) {
      const restored = await restore({
        pointInTime: instant.at,
        scope: { database: true, files: false },
        destination: { environment: 'STAGING', database: `pitr_${index}` },
      });
      expect(restored.status, restored.error).toBe('SUCCEEDED');
      expect(restored.plan).toMatchObject({ backupId: incremental.id, until: instant.at });
      expect(restored.result.database.changes.transactions).toBe(index + 1);
      expect(restored.result.database.changes.lastCommit.time <= instant.at.replace('Z', '999Z')).toBe(true);
      const { 'sequence invoice_number': _sequence, ...tables } = await tableChecksums(pg, `pitr_${index}`);
      const { 'sequence invoice_number': _expected, ...expected } = instant.sums;
      expect(tables, `instant ${index}`).toEqual(expected);
      // The rows as restored at that instant (not the FULL's counts)
      const counted = await pg.sql(
        `pitr_${index}`,
        `SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM events) + (SELECT count(*) FROM registrations)
              + (SELECT count(*) FROM tickets) + (SELECT count(*) FROM audit_log) + (SELECT count(*) FROM page_views) AS n`,
      );
      expect(restored.result.database.rows, `instant ${index}`).toBe(Number(counted.rows[0].n));
    }
    expect(full.database.tables).toBe(6);
    // BACKUP_VERIFICATION of a schedule whose newest backup is row changes: verified (the FULL's archive is
    // listed, the changes read back), without hanging on a pg_restore nobody feeds
    const started = Date.now();
    const verification = await drTest({ testType: 'BACKUP_VERIFICATION' });
    expect(verification.status, JSON.stringify(verification)).toBe('PASSED');
    const checked = (verification.results?.details ?? verification.details ?? verification) as unknown;
    expect(JSON.stringify(checked)).toContain(incremental.id);
    expect(Date.now() - started).toBeLessThan(60_000);
    const stray = await new Promise<string>((resolve) =>
      execFile('pgrep', ['-f', 'pg_restore --list'], (_error, stdout) => resolve(stdout)),
    );
    expect(stray.trim()).toBe('');

    // A download of an INCREMENTAL made of changes is refused with the reason, not served stale
    const download = await api.call('GET', `/api/dr/backups/${incremental.id}/download`);
    expect(download.status).toBe(409);
    expect(download.body.error.message).toContain(`row changes since FULL ${full.id}`);
  });

  it('takes a FULL after a schema change, and alerts', async () => {
    await pg.sql('app', 'ALTER TABLE events ADD COLUMN venue text');
    const taken = await run('frequent');
    expect(taken.type).toBe('FULL');
    expect(taken.schemaChanged).toMatch(/the schema changed since backup/);
    expect(taken.notice).toContain('this INCREMENTAL was taken as a FULL');
    const conditions = await currentConditions(api.runtime.controlPlane);
    expect(conditions.find((condition) => condition.key === `schema-change:${taken.id}`)).toMatchObject({
      active: true,
      event: true,
    });
    await pg.sql('app', "UPDATE events SET venue = 'Hall A' WHERE id = 1");
    const next = await run('frequent');
    expect(next).toMatchObject({ type: 'INCREMENTAL', changes: { base: taken.id, transactions: 1 } });
  });

  it('alerts when nobody reads the slot for longer than the RPO', async () => {
    const cp = api.runtime.controlPlane;
    const stalled = async () =>
      (await currentConditions(cp)).find((condition) => condition.key === `slot-stalled:${SLOT}`)?.active;
    await pg.sql('app', "UPDATE users SET name = 'unread' WHERE id = 1");
    expect(await stalled()).toBe(false);
    skew += 2 * 3_600_000;
    expect(await stalled()).toBe(true);
    await run('frequent');
    expect(await stalled()).toBe(false);
  });

  it('drops the slot when the last schedule reading it is deleted', async () => {
    expect(await slot()).toMatchObject({ confirmed: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/) });
    expect((await api.call('DELETE', '/api/dr/schedules/frequent')).status).toBe(204);
    expect(await slot()).toBeUndefined();
    // A FULL alone starts no slot
    await run('nightly');
    expect(await slot()).toBeUndefined();
  });
});

describe('change stream when only the worker reaches the source (AWS with the worker in the operator subnets)', () => {
  let remote: TestApi;
  let remoteSkew = 0;
  let moto: Awaited<ReturnType<typeof startMoto>>;
  let cloudwatch: CloudWatchClient;
  /** What CloudWatch says of the RDS instance's free storage (moto keeps what is put). */
  const freeStorage = (bytes: number) =>
    cloudwatch.send(
      new PutMetricDataCommand({
        Namespace: 'AWS/RDS',
        MetricData: [
          {
            MetricName: 'FreeStorageSpace',
            Dimensions: [{ Name: 'DBInstanceIdentifier', Value: 'shop-db' }],
            Timestamp: new Date(Date.now() + remoteSkew - 60_000),
            Value: bytes,
            Unit: 'Bytes',
          },
        ],
      }),
    );
  const active = async (key: string) =>
    (await currentConditions(remote.runtime.controlPlane)).find((condition) => condition.key === key)?.active;

  beforeAll(async () => {
    moto = await startMoto();
    cloudwatch = new CloudWatchClient({
      region: 'eu-west-1',
      endpoint: moto.endpoint,
      credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    });
    remote = await startTestApi({
      sourceFromWorker: true,
      now: () => new Date(Date.now() + remoteSkew),
      cloudwatch,
    });
    await pg.createDatabase('shop');
    await createEventManager(pg, 'shop');
    await pg.sql('shop', 'ALTER TABLE page_views REPLICA IDENTITY FULL');
    await configure(remote, {
      rto: 4,
      rpo: 1,
      source: {
        database: { url: pg.url('shop') },
        rds: { instanceIdentifier: 'shop-db', region: 'eu-west-1' },
      },
    });
  });
  afterAll(async () => {
    await remote?.close();
    await moto?.stop();
  });

  it('reports, watches and drops the slot through the worker', async () => {
    // The save answers at once from what the worker measured (nothing yet), and asks it to measure
    const created = await remote.call('POST', '/api/dr/schedules', frequent);
    expect(created.status).toBe(201);
    expect(created.body.changeStream).toEqual({
      slot: 'dr_automation_shop',
      error: expect.stringContaining('not measured yet'),
    });
    await remote.runtime.idle();
    const report = await remote.call('GET', '/api/dr/change-stream');
    expect(report.body).toMatchObject({ readiness: { available: true }, measuredAt: expect.any(String) });
    expect(report.body.status).toBeUndefined();

    await run('nightly', remote);
    await pg.sql('shop', "UPDATE users SET name = 'changed' WHERE id = 7");
    expect(await run('frequent', remote)).toMatchObject({
      type: 'INCREMENTAL',
      changes: { transactions: 1 },
    });
    // The worker measured the slot after its run: the checks here judge from that measurement
    expect(await active('slot-wal:dr_automation_shop')).toBe(false);
    expect(await active('slot-unwatched:dr_automation_shop')).toBe(false);

    // An RDS source: less storage free than the slot keeps alerts, with both figures
    await freeStorage(10 * 1024 ** 3);
    await remote.runtime.controlPlane.runs!.watch!();
    await remote.runtime.idle();
    const roomy = await currentConditions(remote.runtime.controlPlane);
    expect(roomy.find((condition) => condition.key === 'slot-wal:dr_automation_shop')).toMatchObject({
      active: false,
      lines: [expect.stringContaining('the instance has 10.0 GiB of storage free'), expect.any(String)],
    });
    remoteSkew += 60_000; // a newer datapoint
    await freeStorage(1024);
    await remote.runtime.controlPlane.runs!.watch!();
    await remote.runtime.idle();
    expect(await active('slot-wal:dr_automation_shop')).toBe(true);

    // A measurement older than 15 minutes alerts, and says nothing of the slot's WAL any more
    remoteSkew += 20 * 60_000;
    const stale = await currentConditions(remote.runtime.controlPlane);
    expect(stale.find((condition) => condition.key === 'slot-unwatched:dr_automation_shop')).toMatchObject({
      active: true,
      lines: [
        expect.stringContaining('could not be measured since'),
        expect.stringContaining('The worker measures it'),
      ],
    });
    expect(stale.find((condition) => condition.key === 'slot-wal:dr_automation_shop')).toBeUndefined();
    await remote.runtime.idle(); // the check asked the worker, which measured
    expect(await active('slot-unwatched:dr_automation_shop')).toBe(false);
    expect(await active('slot-wal:dr_automation_shop')).toBe(false);

    // Deleting the schedule: the API cannot reach the source, the worker drops the slot
    expect(await slot('shop')).toMatchObject({ confirmed: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/) });
    expect((await remote.call('DELETE', '/api/dr/schedules/frequent')).status).toBe(204);
    await remote.runtime.idle();
    expect(await slot('shop')).toBeUndefined();
    expect(await active('slot-orphan:dr_automation_shop')).toBe(false);
    expect(await remote.runtime.controlPlane.table.get(Partition.alert, 'watch:slot-orphan')).toBeUndefined();
  });
});
