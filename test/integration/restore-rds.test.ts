import type { RDSClient } from '@aws-sdk/client-rds';
import {
  CreateDBInstanceCommand,
  DescribeDBClustersCommand,
  DescribeDBInstancesCommand,
} from '@aws-sdk/client-rds';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { createAuroraCluster, motoRds } from '../support/rds.ts';
import { startMoto } from '../support/s3-server.ts';

/**
 * Point-in-time restores of an RDS or Aurora source through the service's own restore, run by the restore
 * state machine against moto's RDS API (metadata only: no database behind it), through the local runtime.
 */
let moto: Awaited<ReturnType<typeof startMoto>>;
let api: TestApi;
let rds: RDSClient;
let failStatus = false;

beforeAll(async () => {
  moto = await startMoto();
  const client = (region: string | undefined) => motoRds(moto.endpoint, region);
  rds = client('eu-west-1');
  api = await startTestApi({
    rds: client,
    taskWrappers: {
      'restore.rds.status': async (_input, real) => {
        if (failStatus)
          throw Object.assign(new Error('the instance went to failed'), { name: 'RdsRestoreFailed' });
        return real();
      },
    },
  });
  await rds.send(
    new CreateDBInstanceCommand({
      DBInstanceIdentifier: 'event-manager-prod',
      DBInstanceClass: 'db.t3.micro',
      Engine: 'postgres',
      AllocatedStorage: 20,
      MasterUsername: 'events',
      MasterUserPassword: 'not-a-real-password',
    }),
  );
  await configure({ instanceIdentifier: 'event-manager-prod', region: 'eu-west-1' });
});
afterAll(async () => {
  await Promise.all([api?.close(), moto?.stop()]);
});

async function configure(rdsSource: Record<string, string>): Promise<void> {
  const response = await api.call('POST', '/api/dr/config', { rto: 4, rpo: 1, source: { rds: rdsSource } });
  expect([200, 201]).toContain(response.status);
}

async function restore(body: unknown): Promise<any> {
  const started = await api.call('POST', '/api/dr/restore', body);
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/restore/${started.body.restoreId}`)).body;
}

async function instanceExists(identifier: string): Promise<boolean> {
  try {
    await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: identifier }));
    return true;
  } catch (error) {
    if ((error as Error).name === 'DBInstanceNotFoundFault') return false;
    throw error;
  }
}

const minuteAgo = () => new Date(Date.now() - 60_000).toISOString();

it('restores an RDS instance to a point in time as a new instance, polled until available', async () => {
  const asked = minuteAgo();
  const record = await restore({ pointInTime: asked, scope: { files: false } });
  expect(record.status, record.error).toBe('SUCCEEDED');
  const target = `dr-restore-${record.id.toLowerCase()}`;
  expect(record.plan).toMatchObject({
    method: 'rds',
    gapSeconds: 0,
    rds: { sourceInstance: 'event-manager-prod', target, restoreTime: asked, region: 'eu-west-1' },
  });
  expect(record.result.rds).toEqual({
    identifier: target,
    cluster: false,
    endpoint: expect.stringMatching(new RegExp(`^${target}\\..*:5432$`)),
  });
  const created = (await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: target })))
    .DBInstances![0]!;
  expect(created.DBInstanceStatus).toBe('available');
});

it('plans an RDS restore without creating anything on a dry run', async () => {
  const record = await restore({ pointInTime: minuteAgo(), scope: { files: false }, dryRun: true });
  expect(record.status).toBe('PLANNED');
  expect(record.plan.method).toBe('rds');
  expect(await instanceExists(record.plan.rds.target)).toBe(false);
});

it('deletes the new instance when the restore fails, and says why', async () => {
  failStatus = true;
  try {
    const record = await restore({ pointInTime: minuteAgo(), scope: { files: false } });
    expect(record.status).toBe('FAILED');
    expect(record.error).toBe('RdsRestoreFailed: the instance went to failed');
    expect(await instanceExists(`dr-restore-${record.id.toLowerCase()}`)).toBe(false);
  } finally {
    failStatus = false;
  }
});

it('uses our backups instead when asked (method backup), and refuses rds without a point in time', async () => {
  const record = await restore({
    pointInTime: minuteAgo(),
    method: 'backup',
    scope: { files: false },
    dryRun: true,
  });
  expect(record.status).toBe('FAILED');
  expect(record.error).toMatch(/^NoRestorePoint: no backup restores to/);
  const refused = await api.call('POST', '/api/dr/restore', {
    backupId: '20261124T020000000Z-abcdef',
    method: 'rds',
  });
  expect(refused.status).toBe(400);
  expect(fieldsOf(refused)).toEqual(['method']);
});

it('restores an Aurora cluster to a point in time, with an instance to answer, and cleans both up on failure', async () => {
  await createAuroraCluster(rds, 'event-manager-aurora');
  await configure({ clusterIdentifier: 'event-manager-aurora', region: 'eu-west-1' });
  try {
    const record = await restore({ pointInTime: minuteAgo(), scope: { files: false } });
    expect(record.status, record.error).toBe('SUCCEEDED');
    const target = `dr-restore-${record.id.toLowerCase()}`;
    expect(record.result.rds).toMatchObject({ identifier: target, cluster: true });
    const cluster = (await rds.send(new DescribeDBClustersCommand({ DBClusterIdentifier: target })))
      .DBClusters![0]!;
    expect(cluster.DBClusterMembers?.map((member) => member.DBInstanceIdentifier)).toEqual([`${target}-1`]);

    failStatus = true;
    const failed = await restore({ pointInTime: minuteAgo(), scope: { files: false } });
    expect(failed.status).toBe('FAILED');
    const failedTarget = `dr-restore-${failed.id.toLowerCase()}`;
    expect(await instanceExists(`${failedTarget}-1`)).toBe(false);
    await expect(
      rds.send(new DescribeDBClustersCommand({ DBClusterIdentifier: failedTarget })),
    ).rejects.toThrow(/not found/i);
  } finally {
    failStatus = false;
    await configure({ instanceIdentifier: 'event-manager-prod', region: 'eu-west-1' });
  }
});
