import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ChangeResourceRecordSetsCommand,
  CreateHostedZoneCommand,
  ListResourceRecordSetsCommand,
  Route53Client,
} from '@aws-sdk/client-route-53';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createEventManager } from '../support/event-manager.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { nightlySchedule } from '../support/catalog.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { startMoto } from '../support/s3-server.ts';

/**
 * FAILOVER_TEST end to end through the local runtime: the standby restored from the newest backup on the
 * STAGING server (real PostgreSQL), the STAGING endpoint record switched to it and back in Route 53 (moto's
 * Route 53 API), every phase timed, failback and cleanup on every path.
 */
let pg: TestPostgres;
let moto: Awaited<ReturnType<typeof startMoto>>;
let api: TestApi;
let route53: Route53Client;
let zoneId: string;
let tamper = false;
const RECORD = 'db.staging.example.com';

beforeAll(async () => {
  [pg, moto] = await Promise.all([startPostgres(), startMoto()]);
  route53 = new Route53Client({
    region: 'us-east-1',
    endpoint: moto.endpoint,
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
  });
  api = await startTestApi({
    route53: () => route53,
    taskWrappers: {
      'test.restore.run': async (input, real) => {
        const result = await real();
        if (tamper) await pg.sql((input.scratch as { database: string }).database, 'DELETE FROM tickets');
        return result;
      },
    },
  });
  const zone = await route53.send(
    new CreateHostedZoneCommand({ Name: 'staging.example.com', CallerReference: String(Date.now()) }),
  );
  zoneId = zone.HostedZone!.Id!.replace('/hostedzone/', '');
  await route53.send(
    new ChangeResourceRecordSetsCommand({
      HostedZoneId: zoneId,
      ChangeBatch: {
        Changes: [
          {
            Action: 'CREATE',
            ResourceRecordSet: {
              Name: RECORD,
              Type: 'CNAME',
              TTL: 300,
              ResourceRecords: [{ Value: 'staging-primary.internal' }],
            },
          },
        ],
      },
    }),
  );
  await pg.createDatabase('app');
  await pg.createDatabase('staging');
  await createEventManager(pg, 'app');
  const work = await mkdtemp(join(tmpdir(), 'dr-failover-'));
  const setup: [string, unknown][] = [
    [
      '/api/dr/config',
      {
        notificationEmails: ['ops@example.com'],
        source: { database: { url: pg.url('app') } },
        environments: {
          STAGING: {
            database: { url: pg.url('staging') },
            endpoint: { hostedZoneId: zoneId, recordName: RECORD },
          },
        },
      },
    ],
    ['/api/dr/targets', { id: 'primary', targetType: 'LOCAL', config: { path: join(work, 'repo') } }],
    ['/api/dr/schedules', nightlySchedule(['primary'])],
  ];
  for (const [path, body] of setup) expect((await api.call('POST', path, body)).status).toBe(201);
  expect((await api.call('POST', '/api/dr/schedules/nightly/execute')).status).toBe(202);
  await api.runtime.idle();
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop(), moto?.stop()]);
});

async function record(): Promise<{ type?: string; value?: string; ttl?: number }> {
  const found = await route53.send(
    new ListResourceRecordSetsCommand({ HostedZoneId: zoneId, StartRecordName: `${RECORD}.`, MaxItems: 1 }),
  );
  const set = found.ResourceRecordSets![0]!;
  return { type: set.Type, value: set.ResourceRecords?.[0]?.Value, ttl: set.TTL };
}

async function databases(): Promise<string[]> {
  return (await pg.sql('postgres', 'SELECT datname FROM pg_database ORDER BY 1')).rows.map(
    (row: { datname: string }) => row.datname,
  );
}

async function failoverTest(): Promise<any> {
  const started = await api.call('POST', '/api/dr/test', {
    testType: 'FAILOVER',
    targetEnvironment: 'STAGING',
  });
  expect(started.status, started.text).toBe(202);
  expect(started.body.executionArn).toMatch(/:execution:dr-failover-test:/);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/test/${started.body.testId}`)).body;
}

it('brings up a standby, switches the endpoint to it, checks it, fails back, and times every phase', async () => {
  const before = await databases();
  const test = await failoverTest();
  expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
  expect(test.testType).toBe('FAILOVER_TEST');
  expect(Object.keys(test.results.phases).sort()).toEqual([
    'databaseRestore',
    'failback',
    'healthCheck',
    'switchEndpoint',
    'total',
    'verification',
  ]);
  expect(test.results.actualRTO).toBeGreaterThan(0);
  expect(test.failover.original).toMatchObject({
    Type: 'CNAME',
    ResourceRecords: [{ Value: 'staging-primary.internal' }],
  });
  // Back as it was; the standby is gone.
  expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
  expect(await databases()).toEqual(before);
});

it('fails back and cleans up when the standby does not match the backup', async () => {
  const before = await databases();
  tamper = true;
  try {
    const test = await failoverTest();
    expect(test.status).toBe('FAILED');
    expect(test.results.issues).toEqual([
      expect.stringMatching(/^table public\.tickets: 0 rows, the backup holds \d+$/),
    ]);
    expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
    expect(await databases()).toEqual(before);
  } finally {
    tamper = false;
  }
});

it('runs against STAGING only: production is failed over by hand', async () => {
  const refused = await api.call('POST', '/api/dr/test', {
    testType: 'FAILOVER',
    targetEnvironment: 'PRODUCTION',
  });
  expect(refused.status).toBe(400);
  expect(fieldsOf(refused)).toEqual(['targetEnvironment']);
  const byHand = await api.call('POST', '/api/dr/test', {
    testType: 'FAILOVER',
    targetEnvironment: 'PRODUCTION',
    manual: true,
  });
  expect(byHand.status).toBe(202);
  expect(byHand.body.test).toMatchObject({
    mode: 'manual',
    status: 'RUNNING',
    targetEnvironment: 'PRODUCTION',
  });
});
