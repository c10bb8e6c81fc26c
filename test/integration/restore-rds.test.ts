import type { RDSClient } from '@aws-sdk/client-rds';
import {
  CreateSecurityGroupCommand,
  CreateSubnetCommand,
  CreateVpcCommand,
  EC2Client,
} from '@aws-sdk/client-ec2';
import {
  CreateDBInstanceCommand,
  CreateDBSubnetGroupCommand,
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
let securityGroup: string;
const requests: { command: string; input: Record<string, unknown> }[] = [];

beforeAll(async () => {
  moto = await startMoto();
  // What the workflow asked RDS for (moto copies a source's network on a point-in-time restore by itself; RDS
  // does not: it uses the default VPC unless told)
  const client = (region: string | undefined) =>
    motoRds(moto.endpoint, region, ({ command, input }) => {
      if (/^Restore|^CreateDBInstance/.test(command)) requests.push({ command, input });
    });
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
  // The source in its own VPC: a subnet group and a security group the restored copy must land in.
  const ec2 = new EC2Client({
    region: 'eu-west-1',
    endpoint: moto.endpoint,
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
  });
  const vpc = (await ec2.send(new CreateVpcCommand({ CidrBlock: '10.20.0.0/16' }))).Vpc!.VpcId!;
  const subnets = await Promise.all(
    ['10.20.1.0/24', '10.20.2.0/24'].map(
      async (CidrBlock, index) =>
        (
          await ec2.send(
            new CreateSubnetCommand({ VpcId: vpc, CidrBlock, AvailabilityZone: `eu-west-1${'ab'[index]}` }),
          )
        ).Subnet!.SubnetId!,
    ),
  );
  securityGroup = (
    await ec2.send(
      new CreateSecurityGroupCommand({ GroupName: 'event-manager-db', Description: 'database', VpcId: vpc }),
    )
  ).GroupId!;
  await rds.send(
    new CreateDBSubnetGroupCommand({
      DBSubnetGroupName: 'event-manager-private',
      DBSubnetGroupDescription: 'private subnets',
      SubnetIds: subnets,
    }),
  );
  await rds.send(
    new CreateDBInstanceCommand({
      DBInstanceIdentifier: 'event-manager-prod',
      DBInstanceClass: 'db.t3.micro',
      Engine: 'postgres',
      AllocatedStorage: 20,
      MasterUsername: 'events',
      MasterUserPassword: 'not-a-real-password',
      DBSubnetGroupName: 'event-manager-private',
      VpcSecurityGroupIds: [securityGroup],
      PubliclyAccessible: false,
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
  // Where the source is: its subnet group and security groups, and private
  expect(created.DBSubnetGroup?.DBSubnetGroupName).toBe('event-manager-private');
  expect(created.VpcSecurityGroups?.map((group) => group.VpcSecurityGroupId)).toEqual([securityGroup]);
  expect(created.PubliclyAccessible).toBe(false);
  expect(
    requests.find((request) => request.command === 'RestoreDBInstanceToPointInTimeCommand')?.input,
  ).toMatchObject({
    TargetDBInstanceIdentifier: target,
    DBSubnetGroupName: 'event-manager-private',
    VpcSecurityGroupIds: [securityGroup],
    PubliclyAccessible: false,
  });
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
