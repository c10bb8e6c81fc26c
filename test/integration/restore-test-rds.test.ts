import type { RDSClient } from '@aws-sdk/client-rds';
import {
  CreateDBClusterSnapshotCommand,
  CreateDBInstanceCommand,
  CreateDBSnapshotCommand,
  DeleteDBSnapshotCommand,
  DescribeDBClustersCommand,
  DescribeDBInstancesCommand,
  DescribeDBSnapshotsCommand,
  type DBInstance,
} from '@aws-sdk/client-rds';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { nightlySchedule } from '../support/catalog.ts';
import { createEventManager } from '../support/event-manager.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { createAuroraCluster, motoRds } from '../support/rds.ts';
import { startMoto } from '../support/s3-server.ts';

/**
 * RESTORE_TEST and RECOVERY_TIME_TEST with `method: rds`: the state machines restore a temporary instance (or
 * Aurora cluster) from the RDS source's newest snapshot through moto's RDS API, restore our newest backup into
 * a scratch database on it, check it, and delete the instance on every path.
 *
 * moto has no database behind its instances: the test's RDS client reports the temporary instance's endpoint
 * as the throwaway PostgreSQL (which also holds the source database, as a snapshot of it would).
 */
let moto: Awaited<ReturnType<typeof startMoto>>;
let pg: TestPostgres;
let api: TestApi;
let rds: RDSClient;
let tamper: string | undefined;
let failStatus = false;
const temporaryInstances = new Map<string, DBInstance>();

function rdsClient(region: string | undefined): RDSClient {
  return motoRds(moto.endpoint, region, ({ instances, clusters }) => {
    const temporary = (id: string | undefined) => id?.startsWith('dr-restore-') === true;
    for (const instance of instances)
      if (temporary(instance.DBInstanceIdentifier))
        instance.Endpoint = { Address: '127.0.0.1', Port: pg.port };
    for (const cluster of clusters)
      if (temporary(cluster.DBClusterIdentifier))
        Object.assign(cluster, { Endpoint: '127.0.0.1', Port: pg.port });
  });
}

beforeAll(async () => {
  [moto, pg] = await Promise.all([startMoto(), startPostgres()]);
  rds = rdsClient('eu-west-1');
  api = await startTestApi({
    rds: rdsClient,
    taskWrappers: {
      'restore.rds.status': async (input, real) => {
        if (failStatus)
          throw Object.assign(new Error('the instance went to incompatible-restore'), {
            name: 'RdsRestoreFailed',
          });
        const status = await real();
        // What the temporary instance looked like while it lived (it is gone when the test ends).
        const target = (input.plan as { rds: { target: string } }).rds.target;
        const found = await rds
          .send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: target }))
          .catch(() => undefined);
        if (found?.DBInstances?.[0]) temporaryInstances.set(target, found.DBInstances[0]);
        return status;
      },
      'test.restore.run': async (input, real) => {
        const result = await real();
        if (tamper) await pg.sql((input.scratch as { database: string }).database, tamper);
        return result;
      },
    },
  });
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  await rds.send(
    new CreateDBInstanceCommand({
      DBInstanceIdentifier: 'event-manager-prod',
      DBInstanceClass: 'db.t4g.medium',
      Engine: 'postgres',
      AllocatedStorage: 20,
      MasterUsername: 'events',
      MasterUserPassword: 'not-a-real-password',
    }),
  );
  const work = await mkdtemp(join(tmpdir(), 'dr-rds-test-'));
  await configure({ instanceIdentifier: 'event-manager-prod', region: 'eu-west-1' });
  expect(
    (
      await api.call('POST', '/api/dr/targets', {
        id: 'primary',
        targetType: 'LOCAL',
        config: { path: join(work, 'primary') },
      })
    ).status,
  ).toBe(201);
  expect((await api.call('POST', '/api/dr/schedules', nightlySchedule(['primary']))).status).toBe(201);
  const started = await api.call('POST', '/api/dr/schedules/nightly/execute');
  expect(started.status).toBe(202);
  await api.runtime.idle();
});
afterAll(async () => {
  await Promise.all([api?.close(), moto?.stop(), pg?.stop()]);
});

async function configure(rdsSource: Record<string, string>): Promise<void> {
  const response = await api.call('POST', '/api/dr/config', {
    rto: 4,
    rpo: 1,
    source: { database: { url: pg.url('app') }, rds: rdsSource },
  });
  expect([200, 201], response.text).toContain(response.status);
}

async function drTest(body: unknown): Promise<any> {
  const started = await api.call('POST', '/api/dr/test', body);
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/test/${started.body.testId}`)).body;
}

async function exists(kind: 'instance' | 'cluster', identifier: string): Promise<boolean> {
  try {
    if (kind === 'instance')
      await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: identifier }));
    else await rds.send(new DescribeDBClustersCommand({ DBClusterIdentifier: identifier }));
    return true;
  } catch (error) {
    if (/NotFound/.test((error as Error).name)) return false;
    throw error;
  }
}

async function databases(): Promise<string[]> {
  const found = await pg.sql('postgres', 'SELECT datname FROM pg_database ORDER BY 1');
  return found.rows.map((row: { datname: string }) => row.datname);
}

it('fails with the reason when the source has no snapshot, creating nothing', async () => {
  // moto, like RDS, takes an automated snapshot of a new instance: removed here.
  const snapshots = await rds.send(
    new DescribeDBSnapshotsCommand({ DBInstanceIdentifier: 'event-manager-prod' }),
  );
  for (const snapshot of snapshots.DBSnapshots ?? [])
    await rds.send(new DeleteDBSnapshotCommand({ DBSnapshotIdentifier: snapshot.DBSnapshotIdentifier }));
  const test = await drTest({ testType: 'RESTORE_TEST' });
  expect(test.method).toBe('rds');
  expect(test.status).toBe('FAILED');
  expect(test.results.issues).toEqual([
    'NoSnapshot: event-manager-prod has no available snapshot to restore a temporary instance from',
  ]);
  expect(await exists('instance', `dr-restore-${test.id.toLowerCase()}`)).toBe(false);
});

it('restores a temporary instance from the newest snapshot, checks the backup on it, and deletes it', async () => {
  await rds.send(
    new CreateDBSnapshotCommand({
      DBInstanceIdentifier: 'event-manager-prod',
      DBSnapshotIdentifier: 'older',
    }),
  );
  await new Promise((resolve) => setTimeout(resolve, 1100)); // moto's snapshot times have whole seconds
  await rds.send(
    new CreateDBSnapshotCommand({
      DBInstanceIdentifier: 'event-manager-prod',
      DBSnapshotIdentifier: 'newest',
    }),
  );
  const test = await drTest({ testType: 'RESTORE_TEST', notifyOnCompletion: false });
  expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
  const instance = `dr-restore-${test.id.toLowerCase()}`;
  expect(test.results.rdsSnapshot).toMatchObject({ identifier: 'newest', instance });
  expect(test.results.phases.instanceRestore).toEqual(expect.any(Number));
  expect(test.results.phases.instanceRestore).toBeLessThanOrEqual(test.results.actualRTO * 3600);
  expect(test.results.actualRTO).toBeLessThan(1);
  expect(test.results.backups).toEqual([{ backupId: expect.any(String), ok: true }]);
  // From the snapshot, with the source's class, tagged with the test (moto does not echo PubliclyAccessible).
  expect(temporaryInstances.get(instance)).toMatchObject({
    DBInstanceClass: 'db.t4g.medium',
    Engine: 'postgres',
    DeletionProtection: false,
    TagList: expect.arrayContaining([{ Key: 'dr-automation:test', Value: test.id }]),
  });
  // Gone afterwards: the instance, and the scratch database restored into it.
  expect(await exists('instance', instance)).toBe(false);
  expect((await databases()).filter((name) => name.startsWith('dr_test_'))).toEqual([]);
});

it('runs RECOVERY_TIME_TEST on a temporary instance too, timing the instance restore as a phase', async () => {
  const test = await drTest({ testType: 'RECOVERY_TIME_TEST', method: 'rds' });
  expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
  expect(Object.keys(test.results.phases)).toEqual(
    expect.arrayContaining([
      'instanceRestore',
      'fetch',
      'databaseRestore',
      'verification',
      'healthCheck',
      'total',
    ]),
  );
  expect(await exists('instance', `dr-restore-${test.id.toLowerCase()}`)).toBe(false);
});

it('fails the consistency check on a tampered restore and still deletes the instance', async () => {
  tamper = "UPDATE users SET email = 'x' || email WHERE id = 7";
  try {
    const test = await drTest({ testType: 'RESTORE_TEST' });
    expect(test.status).toBe('FAILED');
    expect(test.results.issues).toEqual([
      'table public.users: the rows differ from the backup (checksum mismatch)',
    ]);
    expect(await exists('instance', `dr-restore-${test.id.toLowerCase()}`)).toBe(false);
    expect((await databases()).filter((name) => name.startsWith('dr_test_'))).toEqual([]);
  } finally {
    tamper = undefined;
  }
});

it('deletes the instance when it never becomes available, and says why', async () => {
  failStatus = true;
  try {
    const test = await drTest({ testType: 'RESTORE_TEST' });
    expect(test.status).toBe('FAILED');
    expect(test.results.issues).toEqual(['RdsRestoreFailed: the instance went to incompatible-restore']);
    expect(await exists('instance', `dr-restore-${test.id.toLowerCase()}`)).toBe(false);
  } finally {
    failStatus = false;
  }
});

it('restores an Aurora cluster snapshot with an instance to answer, and deletes both', async () => {
  await createAuroraCluster(rds, 'event-manager-aurora');
  await rds.send(
    new CreateDBClusterSnapshotCommand({
      DBClusterIdentifier: 'event-manager-aurora',
      DBClusterSnapshotIdentifier: 'aurora-nightly',
    }),
  );
  await configure({ clusterIdentifier: 'event-manager-aurora', region: 'eu-west-1' });
  try {
    const test = await drTest({ testType: 'RESTORE_TEST' });
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    const cluster = `dr-restore-${test.id.toLowerCase()}`;
    expect(test.results.rdsSnapshot).toMatchObject({ identifier: 'aurora-nightly', instance: cluster });
    expect(await exists('instance', `${cluster}-1`)).toBe(false);
    expect(await exists('cluster', cluster)).toBe(false);
  } finally {
    await configure({ instanceIdentifier: 'event-manager-prod', region: 'eu-west-1' });
  }
});

it('refuses method rds without an RDS source, and method on a test that restores nothing', async () => {
  const verification = await api.call('POST', '/api/dr/test', {
    testType: 'BACKUP_VERIFICATION',
    method: 'scratch',
  });
  expect(verification.status).toBe(400);
  expect(fieldsOf(verification)).toEqual(['method']);
  const response = await api.call('POST', '/api/dr/config', {
    rto: 4,
    rpo: 1,
    source: { database: { url: pg.url('app') } },
  });
  expect(response.status).toBe(200);
  try {
    const refused = await api.call('POST', '/api/dr/test', { testType: 'RESTORE_TEST', method: 'rds' });
    expect(refused.status).toBe(400);
    expect(refused.body.error.details).toEqual([
      { field: 'method', message: expect.stringMatching(/source\.rds/) },
    ]);
  } finally {
    await configure({ instanceIdentifier: 'event-manager-prod', region: 'eu-west-1' });
  }
});
