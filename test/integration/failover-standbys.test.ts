import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListResourceRecordSetsCommand, Route53Client } from '@aws-sdk/client-route-53';
import {
  CreateDBInstanceCommand,
  CreateDBInstanceReadReplicaCommand,
  DescribeDBClustersCommand,
  DescribeDBInstancesCommand,
  DescribeGlobalClustersCommand,
  FailoverGlobalClusterCommand,
  RDSClient,
} from '@aws-sdk/client-rds';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runAlertChecks } from '../../functions/core/services/alert-service.ts';
import { nightlySchedule } from '../support/catalog.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { motoRds } from '../support/rds.ts';
import { startMoto } from '../support/s3-server.ts';
import { zoneWithCname } from '../support/route53.ts';

/**
 * The other standbys and the guardrails, through the local runtime with real PostgreSQL: an RDS read replica
 * (moto's RDS API; the instance's endpoint is a real streaming replica, promoted when RDS is asked to), the
 * endpoint a Route 53 record (moto); an Aurora global database's secondary (aws-sdk-client-mock: moto has no
 * FailoverGlobalCluster); the newest restore point restored onto a standby server. And what refuses: a
 * standby older than the RPO, a restore running on PRODUCTION, the cooldown, no standby at all.
 */
let primary: TestPostgres;
let moto: Awaited<ReturnType<typeof startMoto>>;
let api: TestApi;
let route53: Route53Client;
let zoneId: string;
let work: string;
/** The streaming replica the RDS (or Aurora) standby's endpoint answers from, for the running test. */
let replica: TestPostgres | undefined;
let clock = Date.now();
let promotedReplica = false;
let app: Server;
let appUrl: string;
let appHealthy = true;
const RECORD = 'db.events.example.com';
const mailer = () => Promise.resolve();

function rds(region: string | undefined): RDSClient {
  return motoRds(moto.endpoint, region, ({ command, input, instances }) => {
    // RDS promotes the instance behind the endpoint: here the real replica is promoted when asked (moto
    // keeps metadata only, and still names the source after a promotion)
    if (command === 'PromoteReadReplicaCommand' && input.DBInstanceIdentifier === 'events-replica') {
      promotedReplica = true;
      void replica?.sql('postgres', 'SELECT pg_promote(true, 60)');
    }
    for (const instance of instances)
      if (instance.DBInstanceIdentifier === 'events-replica' && replica) {
        instance.Endpoint = { Address: '127.0.0.1', Port: replica.port };
        if (promotedReplica) delete instance.ReadReplicaSourceDBInstanceIdentifier;
      }
  });
}

beforeAll(async () => {
  [primary, moto] = await Promise.all([
    startPostgres({ settings: ['track_commit_timestamp=on'] }),
    startMoto(),
  ]);
  await primary.createDatabase('events');
  await primary.sql(
    'events',
    'CREATE TABLE tickets (id int PRIMARY KEY); INSERT INTO tickets SELECT generate_series(1, 300)',
  );
  route53 = new Route53Client({
    region: 'us-east-1',
    endpoint: moto.endpoint,
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
  });
  zoneId = await zoneWithCname(route53, 'events.example.com', {
    name: RECORD,
    value: 'events-primary.internal',
  });
  const client = rds('eu-west-1');
  await client.send(
    new CreateDBInstanceCommand({
      DBInstanceIdentifier: 'events-primary',
      DBInstanceClass: 'db.t4g.medium',
      Engine: 'postgres',
      AllocatedStorage: 20,
      MasterUsername: 'events',
      MasterUserPassword: 'not-a-real-password',
    }),
  );
  await client.send(
    new CreateDBInstanceReadReplicaCommand({
      DBInstanceIdentifier: 'events-replica',
      SourceDBInstanceIdentifier: 'events-primary',
      DBInstanceClass: 'db.t4g.medium',
      Tags: [{ Key: 'dr-automation:standby', Value: 'true' }],
    }),
  );
  work = await mkdtemp(join(tmpdir(), 'dr-standbys-'));
  // The application: healthy while its database is
  app = createServer((_request, response) => response.writeHead(appHealthy ? 200 : 503).end());
  await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve));
  appUrl = `http://127.0.0.1:${(app.address() as AddressInfo).port}`;
  api = await startTestApi({ now: () => new Date(clock), rds, route53: () => route53, workflowWaitMs: 10 });
  for (const [path, body] of [
    [
      '/api/dr/config',
      {
        rpo: 1,
        autoFailover: true,
        notificationEmails: ['ops@example.com'],
        source: {
          database: { url: primary.url('events') },
          rds: { instanceIdentifier: 'events-primary', region: 'eu-west-1' },
          healthUrl: `${appUrl}/health`,
        },
      },
    ],
    ['/api/dr/targets', { id: 'local', targetType: 'LOCAL', config: { path: join(work, 'repo') } }],
    ['/api/dr/schedules', nightlySchedule(['local'])],
  ] as const)
    expect((await api.call('POST', path, body)).status).toBe(201);
}, 60_000);

afterAll(async () => {
  await api?.close();
  await new Promise((resolve) => app?.close(resolve));
  await Promise.all([primary?.stop(), moto?.stop(), replica?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

/** A new failover setting (a merge patch merges objects: the old one is removed first). */
async function configure(failover: unknown): Promise<void> {
  expect((await api.call('PATCH', '/api/dr/config', { failover: null })).status).toBe(200);
  const response = await api.call('PATCH', '/api/dr/config', { failover });
  expect(response.status, response.text).toBe(200);
}

/** The primary up (one probe), then down for three minutes: the watch decides. Answers the newest failover. */
async function outage(afterHalt?: () => Promise<void>): Promise<any> {
  clock += 60_000;
  await runAlertChecks(api.runtime.controlPlane, mailer);
  await primary.halt();
  await afterHalt?.();
  try {
    for (let i = 0; i < 3; i++) {
      clock += 60_000;
      await runAlertChecks(api.runtime.controlPlane, mailer);
      await api.runtime.idle();
    }
  } finally {
    await primary.resume();
  }
  return (await api.call('GET', '/api/dr/failover')).body.items[0];
}

async function health(): Promise<any> {
  return (await api.call('GET', '/api/dr/health/primary')).body;
}

/** Ends the failover in force (forced failback), waits out the cooldown, and the primary is seen up again. */
async function reset(): Promise<void> {
  const active = (await health()).failedOver;
  if (active) {
    expect(
      (await api.call('POST', `/api/dr/failover/${active.failoverId}/failback`, { force: true })).status,
    ).toBe(202);
    await api.runtime.idle();
  }
  clock += 2 * 3_600_000;
  await runAlertChecks(api.runtime.controlPlane, mailer);
  await replica?.stop();
  replica = undefined;
}

async function record(): Promise<string | undefined> {
  const found = await route53.send(
    new ListResourceRecordSetsCommand({ HostedZoneId: zoneId, StartRecordName: RECORD, MaxItems: 1 }),
  );
  return found.ResourceRecordSets?.[0]?.ResourceRecords?.[0]?.Value;
}

describe('failover standbys', () => {
  afterEach(reset);

  it('restores the newest restore point onto the standby server when there is no replica', async () => {
    const backup = await api.call('POST', '/api/dr/schedules/nightly/execute');
    expect(backup.status).toBe(202);
    await api.runtime.idle();
    const server = await startPostgres();
    try {
      await configure({ standby: { type: 'restore', database: { url: server.url('events') } } });
      const failover = await outage();
      expect(failover, JSON.stringify(failover)).toMatchObject({
        status: 'SUCCEEDED',
        standbyType: 'restore',
        newPrimary: `127.0.0.1:${server.port}`,
        checks: { ok: true },
      });
      expect((await server.sql('events', 'SELECT count(*)::int AS n FROM tickets')).rows[0].n).toBe(300);
      expect(failover.dataLoss.note).toMatch(/s of commits lost/);
      await reset();
    } finally {
      await server.stop();
    }
  });

  it('refuses to fail over without a standby, and the alert says why', async () => {
    await configure(null);
    const before = (await api.call('GET', '/api/dr/failover')).body.items.length;
    const sent: string[] = [];
    clock += 60_000;
    await runAlertChecks(api.runtime.controlPlane, mailer);
    await primary.halt();
    appHealthy = false;
    try {
      for (let i = 0; i < 3; i++) {
        clock += 60_000;
        await runAlertChecks(api.runtime.controlPlane, (message) => {
          sent.push(message.text);
          return Promise.resolve();
        });
      }
    } finally {
      appHealthy = true;
      await primary.resume();
    }
    expect((await api.call('GET', '/api/dr/failover')).body.items).toHaveLength(before);
    // Beside the database: what RDS says of the instance, and the application's health URL
    expect(sent.join('\n')).toMatch(/RDS reports the source as: available/);
    expect(sent.join('\n')).toMatch(/The application's health URL: does not answer well \(503\)/);
    const probes = (await health()).history;
    expect(probes.at(-1)).toMatchObject({
      ok: true,
      rdsStatus: 'available',
      application: { ok: true, status: 200 },
    });
    expect(sent.join('\n')).toMatch(/no failover was started: no standby is configured \(failover.standby/);
    expect((await health()).decision.refused).toMatch(/no standby is configured/);
    const audit = (await api.call('GET', '/api/dr/audit?limit=20')).body.items;
    expect(audit.filter((entry: any) => entry.action === 'failover.refused')).toHaveLength(1);
  });

  it('promotes an RDS read replica and points the Route 53 record at it; the failback puts the record back', async () => {
    replica = await startPostgres({ replicaOf: primary });
    await configure({
      standby: { type: 'rds-replica', instanceIdentifier: 'events-replica', region: 'eu-west-1' },
      endpoint: { type: 'route53', hostedZoneId: zoneId, recordName: RECORD },
    });
    const failover = await outage();
    expect(failover, JSON.stringify(failover)).toMatchObject({
      status: 'SUCCEEDED',
      standbyType: 'rds-replica',
      newPrimary: `127.0.0.1:${replica.port}`,
      endpoint: {
        type: 'route53',
        switched: true,
        original: { ResourceRecords: [{ Value: 'events-primary.internal' }] },
      },
      checks: { ok: true },
    });
    expect(await record()).toBe('127.0.0.1');
    const instance = (
      await rds('eu-west-1').send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: 'events-replica' }))
    ).DBInstances![0]!;
    expect(instance.ReadReplicaSourceDBInstanceIdentifier).toBeUndefined();
    expect((await api.call('POST', `/api/dr/failover/${failover.id}/failback`, { force: true })).status).toBe(
      202,
    );
    await api.runtime.idle();
    expect(await record()).toBe('events-primary.internal');
    expect((await api.call('GET', `/api/dr/failover/${failover.id}`)).body.status).toBe('FAILED_BACK');
  });

  it('fails over an Aurora global database to its secondary, data loss allowed', async () => {
    replica = await startPostgres({ replicaOf: primary });
    const PRIMARY = 'arn:aws:rds:eu-west-1:123456789012:cluster:events-eu';
    const SECONDARY = 'arn:aws:rds:us-east-1:123456789012:cluster:events-us';
    let writer = PRIMARY;
    const mock = mockClient(RDSClient);
    const failedOver: unknown[] = [];
    mock.on(DescribeGlobalClustersCommand).callsFake(() => ({
      GlobalClusters: [
        {
          GlobalClusterIdentifier: 'events-global',
          Status: 'available',
          GlobalClusterMembers: [PRIMARY, SECONDARY].map((arn) => ({
            DBClusterArn: arn,
            IsWriter: arn === writer,
          })),
        },
      ],
    }));
    mock.on(FailoverGlobalClusterCommand).callsFake(async (input: { TargetDbClusterIdentifier: string }) => {
      failedOver.push(input);
      writer = input.TargetDbClusterIdentifier;
      await replica!.sql('postgres', 'SELECT pg_promote(true, 60)');
      return {};
    });
    mock
      .on(DescribeDBClustersCommand)
      .callsFake(() => ({ DBClusters: [{ Endpoint: '127.0.0.1', Port: replica!.port }] }));
    try {
      await configure({
        standby: {
          type: 'aurora-global',
          globalClusterIdentifier: 'events-global',
          secondaryClusterArn: SECONDARY,
        },
      });
      const failover = await outage();
      expect(failover, JSON.stringify(failover)).toMatchObject({
        status: 'SUCCEEDED',
        standbyType: 'aurora-global',
        checks: { ok: true },
      });
      expect(failedOver).toEqual([
        {
          GlobalClusterIdentifier: 'events-global',
          TargetDbClusterIdentifier: SECONDARY,
          AllowDataLoss: true,
        },
      ]);
      expect(failover.endpoint).toMatchObject({ type: 'none', switched: false });
    } finally {
      mock.restore();
    }
  });

  it('refuses a standby older than the RPO, and the failover says so', async () => {
    replica = await startPostgres({ replicaOf: primary });
    await configure({ standby: { type: 'replica', database: { url: replica.url('events') } } });
    // A commit the replica replays
    await primary.sql('events', 'INSERT INTO tickets VALUES (1001)');
    for (let i = 0; i < 100; i++) {
      const { rows } = await replica.sql('events', 'SELECT count(*)::int AS n FROM tickets WHERE id = 1001');
      if (rows[0].n === 1) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // The replica down while the primary takes one more commit: it never gets it
    await replica.halt();
    await primary.sql('events', 'INSERT INTO tickets VALUES (1002)');
    clock += 2 * 3_600_000; // the primary's last seen position is two hours after the replica's last replay
    const failover = await outage(() => replica!.resume());
    expect(failover.status, JSON.stringify(failover)).toBe('FAILED');
    expect(failover.error).toMatch(
      /StaleStandby: the standby 127.0.0.1:\d+ is \d+ s behind the primary as last seen, more than the RPO \(1 h\)/,
    );
    expect((await replica.sql('postgres', 'SELECT pg_is_in_recovery() AS r')).rows[0].r).toBe(true);
    expect(failover.hooks).toBeUndefined();
  });

  it('refuses while a restore runs on PRODUCTION, and within the cooldown of the last failover', async () => {
    replica = await startPostgres({ replicaOf: primary });
    await configure({
      standby: { type: 'replica', database: { url: replica.url('events') } },
      cooldownMinutes: 10,
    });
    const table = api.runtime.controlPlane.table;
    const restoreId = '20261201T000000000Z-aaaaaa';
    await table.create(
      'RESTORE',
      restoreId,
      { id: restoreId, status: 'RUNNING', request: { destination: { environment: 'PRODUCTION' } } },
      new Date(clock),
      'exists',
    );
    try {
      expect((await outage())?.status).not.toBe('RUNNING');
      expect((await health()).decision.refused).toBe(`restore ${restoreId} is running on PRODUCTION`);
    } finally {
      const item = await table.get('RESTORE', restoreId);
      await table.replace(item!, { ...(item!.data as object), status: 'FAILED' }, new Date(clock));
    }
    // The last failover ended hours ago (of the test clock): within a cooldown of a week
    await configure({
      standby: { type: 'replica', database: { url: replica.url('events') } },
      cooldownMinutes: 10_080,
    });
    await outage();
    expect((await health()).decision.refused).toMatch(
      /within the cooldown: failover .* ended at .* \(cooldownMinutes 10080\)/,
    );
    expect((await replica.sql('postgres', 'SELECT pg_is_in_recovery() AS r')).rows[0].r).toBe(true);
  });
});
