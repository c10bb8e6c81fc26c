import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListResourceRecordSetsCommand, Route53Client } from '@aws-sdk/client-route-53';
import {
  CreateDBInstanceCommand,
  CreateDBInstanceReadReplicaCommand,
  DescribeDBClustersCommand,
  DescribeDBInstancesCommand,
  DescribeGlobalClustersCommand,
  SwitchoverGlobalClusterCommand,
  DescribeDBSnapshotsCommand,
  RDSClient,
  RemoveTagsFromResourceCommand,
  AddTagsToResourceCommand,
  type DBInstance,
} from '@aws-sdk/client-rds';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEventManager } from '../support/event-manager.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { nightlySchedule } from '../support/catalog.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { motoRds } from '../support/rds.ts';
import { startMoto } from '../support/s3-server.ts';
import { zoneWithCname } from '../support/route53.ts';
import type { HeavySteps } from '../../functions/core/env.ts';

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
/** Heavy steps handed to a Fargate task (the local runtime runs them in-process, through the same staging). */
let staged = 0;
let failHealth = false;
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
    rds: rdsClient,
    taskWrappers: {
      'test.failover.health': async (_input, real) => {
        if (failHealth)
          throw Object.assign(new Error('the standby does not answer'), { name: 'HealthCheckFailed' });
        return real();
      },
      'fargate.stage': async (_input, real) => {
        staged += 1;
        return real();
      },
      'test.restore.run': async (input, real) => {
        const result = await real();
        if (tamper) await pg.sql((input.scratch as { database: string }).database, 'DELETE FROM tickets');
        return result;
      },
    },
  });
  zoneId = await zoneWithCname(route53, 'staging.example.com', {
    name: RECORD,
    value: 'staging-primary.internal',
  });
  await pg.createDatabase('app');
  await pg.createDatabase('staging');
  await createEventManager(pg, 'app');
  const work = await mkdtemp(join(tmpdir(), 'dr-failover-'));
  await configure();
  const setup: [string, unknown][] = [
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

/**
 * RDS through moto (metadata only): the standby replica's endpoint is reported as the throwaway PostgreSQL, so
 * the health check reaches a real database. moto 5 keeps reporting a promoted replica's source
 * (ReadReplicaSourceDBInstanceIdentifier) after PromoteReadReplica, which RDS clears: the instances moto
 * promoted are tracked here and reported without it, until a replica of that name is created again.
 */
const promoted = new Set<string>();
function rdsClient(region: string | undefined): RDSClient {
  return motoRds(moto.endpoint, region, ({ command, input, instances }) => {
    const identifier = input.DBInstanceIdentifier as string | undefined;
    if (identifier && command === 'PromoteReadReplicaCommand') promoted.add(identifier);
    if (identifier && command === 'CreateDBInstanceReadReplicaCommand') promoted.delete(identifier);
    for (const instance of instances) {
      if (instance.DBInstanceIdentifier === 'staging-replica')
        instance.Endpoint = { Address: '127.0.0.1', Port: pg.port };
      if (promoted.has(instance.DBInstanceIdentifier!)) delete instance.ReadReplicaSourceDBInstanceIdentifier;
    }
  });
}

async function configure(standby?: Record<string, string>): Promise<void> {
  const response = await api.call('POST', '/api/dr/config', {
    notificationEmails: ['ops@example.com'],
    source: { database: { url: pg.url('app') } },
    environments: {
      STAGING: {
        database: { url: pg.url('staging') },
        endpoint: { hostedZoneId: zoneId, recordName: RECORD },
        ...(standby ? { standby } : {}),
      },
    },
  });
  expect([200, 201], response.text).toContain(response.status);
}

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

it('brings up and checks the standby in Fargate tasks when the runner says so, failing back on every path', async () => {
  const cp = api.runtime.controlPlane as { heavySteps?: HeavySteps };
  const before = await databases();
  cp.heavySteps = { heavy: 'fargate', fromBytes: 0 };
  staged = 0;
  try {
    const test = await failoverTest();
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    // BringUpStandby and CheckData
    expect(staged).toBe(2);
    tamper = true;
    const failed = await failoverTest();
    expect(failed.status).toBe('FAILED');
    expect(staged).toBe(4);
    expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
    expect(await databases()).toEqual(before);
  } finally {
    tamper = false;
    delete cp.heavySteps;
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

describe('with an RDS read replica as the standby', () => {
  let rds: RDSClient;
  let replicaArn: string;
  beforeAll(async () => {
    rds = rdsClient('eu-west-1');
    await rds.send(
      new CreateDBInstanceCommand({
        DBInstanceIdentifier: 'staging-primary',
        DBInstanceClass: 'db.t4g.medium',
        Engine: 'postgres',
        AllocatedStorage: 20,
        MasterUsername: 'events',
        MasterUserPassword: 'not-a-real-password',
      }),
    );
    const replica = await rds.send(
      new CreateDBInstanceReadReplicaCommand({
        DBInstanceIdentifier: 'staging-replica',
        SourceDBInstanceIdentifier: 'staging-primary',
        DBInstanceClass: 'db.t4g.medium',
        Tags: [{ Key: 'dr-automation:standby', Value: 'true' }],
      }),
    );
    replicaArn = replica.DBInstance!.DBInstanceArn!;
    await pg.sql('staging', 'CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY)');
    await configure({ type: 'rds-replica', instanceIdentifier: 'staging-replica', region: 'eu-west-1' });
  });
  afterAll(async () => {
    await configure();
  });

  async function replica(): Promise<DBInstance> {
    return (await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: 'staging-replica' })))
      .DBInstances![0]!;
  }

  it('promotes the replica, switches the endpoint to it, checks it takes writes, then re-creates the replica', async () => {
    const test = await failoverTest();
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    expect(Object.keys(test.results.phases).sort()).toEqual([
      'failback',
      'healthCheck',
      'promoteStandby',
      'restoreStandby',
      'switchEndpoint',
      'total',
    ]);
    expect(test.standby).toMatchObject({
      type: 'rds-replica',
      instance: 'staging-replica',
      source: 'staging-primary',
      instanceClass: 'db.t4g.medium',
      promotedAt: expect.any(String),
    });
    // The endpoint pointed at the promoted replica during the test (its previous value kept), and back after.
    expect(test.failover.original.ResourceRecords).toEqual([{ Value: 'staging-primary.internal' }]);
    expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
    // A replica of the same primary again, tagged for the next test; the promoted one kept as a final snapshot.
    const again = await replica();
    expect(again.ReadReplicaSourceDBInstanceIdentifier).toBe('staging-primary');
    expect(again.DBInstanceStatus).toBe('available');
    expect(again.TagList).toContainEqual({ Key: 'dr-automation:standby', Value: 'true' });
    const snapshots = await rds.send(
      new DescribeDBSnapshotsCommand({ DBSnapshotIdentifier: `dr-failover-${test.id.toLowerCase()}` }),
    );
    expect(snapshots.DBSnapshots).toHaveLength(1);
    replicaArn = again.DBInstanceArn!;
  });

  it('re-creates the replica and restores the record when the promoted standby fails its check', async () => {
    failHealth = true;
    try {
      const test = await failoverTest();
      expect(test.status).toBe('FAILED');
      expect(JSON.stringify(test)).toContain('the standby does not answer');
      expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
      const again = await replica();
      expect(again.ReadReplicaSourceDBInstanceIdentifier).toBe('staging-primary');
      expect(again.TagList).toContainEqual({ Key: 'dr-automation:standby', Value: 'true' });
      replicaArn = again.DBInstanceArn!;
    } finally {
      failHealth = false;
    }
  });

  it('refuses a replica that is not tagged for it, and changes nothing', async () => {
    await rds.send(
      new RemoveTagsFromResourceCommand({ ResourceName: replicaArn, TagKeys: ['dr-automation:standby'] }),
    );
    try {
      const test = await failoverTest();
      expect(test.status).toBe('FAILED');
      expect(test.results.issues).toEqual([
        'StandbyNotTagged: staging-replica is not tagged dr-automation:standby=true: tag it to let FAILOVER_TEST promote and re-create it',
      ]);
      expect((await replica()).ReadReplicaSourceDBInstanceIdentifier).toBe('staging-primary');
      expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
    } finally {
      await rds.send(
        new AddTagsToResourceCommand({
          ResourceName: replicaArn,
          Tags: [{ Key: 'dr-automation:standby', Value: 'true' }],
        }),
      );
    }
  });
});

/**
 * moto has no SwitchoverGlobalCluster: the Aurora global database is played by aws-sdk-client-mock, with a
 * switchover that is in progress for one poll and then settled; the secondary's writer endpoint is the
 * throwaway PostgreSQL.
 */
describe('with an Aurora global database secondary as the standby', () => {
  const PRIMARY = 'arn:aws:rds:eu-west-1:123456789012:cluster:staging-eu';
  const SECONDARY = 'arn:aws:rds:us-east-1:123456789012:cluster:staging-us';
  let mock: ReturnType<typeof mockClient>;
  let writer = PRIMARY;
  let switching = false;
  let healthy = true;
  beforeAll(async () => {
    mock = mockClient(RDSClient);
    mock.on(DescribeGlobalClustersCommand).callsFake(() => {
      const answer = {
        GlobalClusters: [
          {
            GlobalClusterIdentifier: 'staging-global',
            Status: 'available',
            ...(switching ? { FailoverState: { Status: 'switching-over' } } : {}),
            GlobalClusterMembers: [PRIMARY, SECONDARY].map((arn) => ({
              DBClusterArn: arn,
              IsWriter: arn === writer,
            })),
          },
        ],
      };
      switching = false;
      return answer;
    });
    mock.on(SwitchoverGlobalClusterCommand).callsFake((input: { TargetDbClusterIdentifier: string }) => {
      writer = input.TargetDbClusterIdentifier;
      switching = true;
      return {};
    });
    mock.on(DescribeDBClustersCommand).callsFake((input: { DBClusterIdentifier: string }) => ({
      DBClusters: [
        {
          DBClusterArn: input.DBClusterIdentifier,
          Endpoint: healthy ? '127.0.0.1' : 'unreachable.invalid',
          Port: pg.port,
        },
      ],
    }));
    await configure({
      type: 'aurora-global',
      globalClusterIdentifier: 'staging-global',
      secondaryClusterArn: SECONDARY,
    });
  });
  afterAll(async () => {
    mock.restore();
    await configure();
  });

  it('switches over to the secondary, moves the endpoint, checks it, and switches back', async () => {
    mock.resetHistory();
    const test = await failoverTest();
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    expect(mock.commandCalls(SwitchoverGlobalClusterCommand).map((call) => call.args[0].input)).toEqual([
      { GlobalClusterIdentifier: 'staging-global', TargetDbClusterIdentifier: SECONDARY },
      { GlobalClusterIdentifier: 'staging-global', TargetDbClusterIdentifier: PRIMARY },
    ]);
    expect(writer).toBe(PRIMARY);
    expect(test.standby).toMatchObject({
      type: 'aurora-global',
      primaryArn: PRIMARY,
      secondaryArn: SECONDARY,
    });
    expect(test.results.phases).toMatchObject({
      promoteStandby: expect.any(Number),
      restoreStandby: expect.any(Number),
      switchEndpoint: expect.any(Number),
    });
    expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
  });

  it('switches back and restores the record when the secondary does not answer', async () => {
    mock.resetHistory();
    healthy = false;
    try {
      const test = await failoverTest();
      expect(test.status).toBe('FAILED');
      expect(test.results.issues).toEqual([expect.stringMatching(/unreachable\.invalid/)]);
      expect(mock.commandCalls(SwitchoverGlobalClusterCommand)).toHaveLength(2);
      expect(writer).toBe(PRIMARY);
      expect(await record()).toEqual({ type: 'CNAME', value: 'staging-primary.internal', ttl: 300 });
    } finally {
      healthy = true;
    }
  });

  it('refuses a secondary that is not in the global database', async () => {
    await configure({
      type: 'aurora-global',
      globalClusterIdentifier: 'staging-global',
      secondaryClusterArn: 'arn:aws:rds:us-west-2:123456789012:cluster:elsewhere',
    });
    mock.resetHistory();
    const test = await failoverTest();
    expect(test.status).toBe('FAILED');
    expect(test.results.issues).toEqual([
      'NotAMember: arn:aws:rds:us-west-2:123456789012:cluster:elsewhere is not a member of staging-global',
    ]);
    expect(mock.commandCalls(SwitchoverGlobalClusterCommand)).toHaveLength(0);
  });
});

it('refuses a standby the config cannot use, naming the field', async () => {
  const response = await api.call('POST', '/api/dr/config', {
    source: { database: { url: pg.url('app') } },
    environments: {
      STAGING: {
        database: { url: pg.url('staging') },
        standby: { type: 'aurora-global', globalClusterIdentifier: 'g', secondaryClusterArn: 'staging-us' },
      },
    },
  });
  expect(response.status).toBe(400);
  expect(fieldsOf(response)).toEqual(['environments.STAGING.standby.secondaryClusterArn']);
});
