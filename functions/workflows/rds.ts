/** RDS and Aurora: a new instance (or one-instance cluster) from a point-in-time restore or the newest snapshot, polled until available, deleted afterwards. */
import {
  CreateDBInstanceCommand,
  type DBCluster,
  DeleteDBClusterCommand,
  DeleteDBInstanceCommand,
  DescribeDBClustersCommand,
  DescribeDBClusterSnapshotsCommand,
  DescribeDBInstancesCommand,
  DescribeDBSnapshotsCommand,
  RDSClient,
  RestoreDBClusterFromSnapshotCommand,
  RestoreDBClusterToPointInTimeCommand,
  RestoreDBInstanceFromDBSnapshotCommand,
  RestoreDBInstanceToPointInTimeCommand,
} from '@aws-sdk/client-rds';
import { type RestorePlan, type RestoreRecord } from '../core/services/restore-service.ts';
import type { WorkflowDeps } from './steps.ts';
import { group, required, restoreState, testState, WorkflowError, workflowState } from './steps.ts';

/** An RDS client for the source's region (tests give one pointed at a local RDS-API server). */
export function rdsClient(deps: WorkflowDeps, region: string | undefined): RDSClient {
  return deps.rds?.(region) ?? new RDSClient(region ? { region } : {});
}

/** The region of an RDS ARN. */
export function regionOfArn(arn: string): string {
  return arn.split(':')[3]!;
}

/** `address:port` of an RDS endpoint (5432 when no port is said), or undefined without an address. */
export function endpointOf(address: string | undefined, port: number | undefined): string | undefined {
  return address ? `${address}:${port ?? 5432}` : undefined;
}

/** Where an Aurora cluster (by ARN) answers, once it has an endpoint. */
export async function clusterEndpoint(deps: WorkflowDeps, clusterArn: string): Promise<string | undefined> {
  const cluster = (
    await rdsClient(deps, regionOfArn(clusterArn)).send(
      new DescribeDBClustersCommand({ DBClusterIdentifier: clusterArn }),
    )
  ).DBClusters?.[0];
  return endpointOf(cluster?.Endpoint, cluster?.Port);
}

/** Where an RDS instance answers, once it has an endpoint. */
export async function instanceEndpoint(
  deps: WorkflowDeps,
  identifier: string,
  region: string | undefined,
): Promise<string | undefined> {
  const instance = (
    await rdsClient(deps, region).send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: identifier }))
  ).DBInstances?.[0];
  return endpointOf(instance?.Endpoint?.Address, instance?.Endpoint?.Port);
}

export async function planRdsRestore(
  deps: WorkflowDeps,
  restore: RestoreRecord,
  source: { instanceIdentifier?: string; clusterIdentifier?: string; region?: string },
): Promise<RestorePlan> {
  const rds = rdsClient(deps, source.region);
  const asked = new Date(restore.request.pointInTime!);
  let latest: Date | undefined;
  try {
    if (source.clusterIdentifier) {
      const found = await rds.send(
        new DescribeDBClustersCommand({ DBClusterIdentifier: source.clusterIdentifier }),
      );
      latest = found.DBClusters?.[0]?.LatestRestorableTime;
    } else {
      const found = await rds.send(
        new DescribeDBInstancesCommand({ DBInstanceIdentifier: source.instanceIdentifier }),
      );
      latest = found.DBInstances?.[0]?.LatestRestorableTime;
    }
  } catch (error) {
    throw new WorkflowError('RdsSourceNotFound', `RDS source: ${(error as Error).message}`);
  }
  if (latest && asked.getTime() > latest.getTime())
    throw new WorkflowError(
      'NoRestorePoint',
      `RDS can restore ${source.clusterIdentifier ?? source.instanceIdentifier} up to ${latest.toISOString()}, not ${asked.toISOString()}`,
    );
  const copy = copyOf(source, restore.id);
  return {
    method: 'rds',
    rds: {
      ...copy,
      restoreTime: asked.toISOString(),
      ...(latest ? { latestRestorableTime: latest.toISOString() } : {}),
    },
    restorePoint: asked.toISOString(),
    gapSeconds: 0,
    chain: [],
    bytes: 0,
    database: true,
    files: false,
    destination: { environment: 'RDS', database: copy.target },
  };
}

/**
 * A restored Aurora cluster has no instance: one is added (`<target>-1`, the class of the source's writer) so
 * that it answers.
 */
async function addClusterInstance(
  rds: RDSClient,
  source: DBCluster | undefined,
  target: string,
  tags: { Key: string; Value: string }[],
): Promise<void> {
  const writer = source?.DBClusterMembers?.find((member) => member.IsClusterWriter)?.DBInstanceIdentifier;
  const instanceClass = writer
    ? (await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: writer }))).DBInstances?.[0]
        ?.DBInstanceClass
    : undefined;
  await rds.send(
    new CreateDBInstanceCommand({
      DBInstanceIdentifier: `${target}-1`,
      DBClusterIdentifier: target,
      Engine: source?.Engine ?? 'aurora-postgresql',
      DBInstanceClass: instanceClass ?? 'db.r6g.large',
      PubliclyAccessible: false,
      Tags: tags,
    }),
  );
}

/** The source's VPC security groups for a copy of it (omitted when it has none listed). */
export function securityGroupsOf(groups: readonly { VpcSecurityGroupId?: string }[] | undefined): {
  VpcSecurityGroupIds?: string[];
} {
  const ids = (groups ?? []).flatMap((group) => (group.VpcSecurityGroupId ? [group.VpcSecurityGroupId] : []));
  return ids.length > 0 ? { VpcSecurityGroupIds: ids } : {};
}

/**
 * The source cluster, and where a copy of it goes: the source's subnet group and security groups (without
 * them RDS puts a new database in the default VPC, or fails where there is none).
 */
async function clusterSource(rds: RDSClient, identifier: string | undefined) {
  const source = (await rds.send(new DescribeDBClustersCommand({ DBClusterIdentifier: identifier })))
    .DBClusters?.[0];
  const placement = {
    ...(source?.DBSubnetGroup ? { DBSubnetGroupName: source.DBSubnetGroup } : {}),
    ...securityGroupsOf(source?.VpcSecurityGroups),
  };
  return { source, placement };
}

/** The source instance, and where a copy of it goes: its subnet group and security groups, private. */
async function instanceSource(rds: RDSClient, identifier: string | undefined) {
  const source = (await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: identifier })))
    .DBInstances?.[0];
  const placement = {
    ...(source?.DBSubnetGroup?.DBSubnetGroupName
      ? { DBSubnetGroupName: source.DBSubnetGroup.DBSubnetGroupName }
      : {}),
    ...securityGroupsOf(source?.VpcSecurityGroups),
    PubliclyAccessible: false,
  };
  return { source, placement };
}

/** The newest available snapshot (automated or manual) of the RDS/Aurora source. */
export async function newestSnapshot(
  rds: RDSClient,
  source: { instanceIdentifier?: string; clusterIdentifier?: string },
): Promise<{ identifier: string; createdAt: Date } | undefined> {
  const found: { identifier: string; createdAt: Date }[] = [];
  let marker: string | undefined;
  do {
    if (source.clusterIdentifier) {
      const page = await rds.send(
        new DescribeDBClusterSnapshotsCommand({
          DBClusterIdentifier: source.clusterIdentifier,
          ...(marker ? { Marker: marker } : {}),
        }),
      );
      for (const snapshot of page.DBClusterSnapshots ?? [])
        if (
          snapshot.Status === 'available' &&
          snapshot.DBClusterSnapshotIdentifier &&
          snapshot.SnapshotCreateTime
        )
          found.push({
            identifier: snapshot.DBClusterSnapshotIdentifier,
            createdAt: snapshot.SnapshotCreateTime,
          });
      marker = page.Marker;
    } else {
      const page = await rds.send(
        new DescribeDBSnapshotsCommand({
          DBInstanceIdentifier: source.instanceIdentifier,
          ...(marker ? { Marker: marker } : {}),
        }),
      );
      for (const snapshot of page.DBSnapshots ?? [])
        if (snapshot.Status === 'available' && snapshot.DBSnapshotIdentifier && snapshot.SnapshotCreateTime)
          found.push({ identifier: snapshot.DBSnapshotIdentifier, createdAt: snapshot.SnapshotCreateTime });
      marker = page.Marker;
    }
  } while (marker);
  return found.sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime())[0];
}

export const rdsRestore = group(restoreState, {
  'restore.rds.start': async (_cp, deps, state) => {
    const plan = required(state.plan?.rds, 'plan.rds');
    const rds = rdsClient(deps, plan.region);
    const tags = [{ Key: 'dr-automation:restore', Value: state.restoreId }];
    // In the source's subnet group and security groups, private (clusterSource, instanceSource).
    if (plan.sourceCluster) {
      const { source, placement } = await clusterSource(rds, plan.sourceCluster);
      await rds.send(
        new RestoreDBClusterToPointInTimeCommand({
          SourceDBClusterIdentifier: plan.sourceCluster,
          DBClusterIdentifier: plan.target,
          RestoreToTime: new Date(plan.restoreTime!),
          ...placement,
          Tags: tags,
        }),
      );
      await addClusterInstance(rds, source, plan.target, tags);
      return { identifier: plan.target, cluster: true };
    }
    const { placement } = await instanceSource(rds, plan.sourceInstance);
    await rds.send(
      new RestoreDBInstanceToPointInTimeCommand({
        SourceDBInstanceIdentifier: plan.sourceInstance,
        TargetDBInstanceIdentifier: plan.target,
        RestoreTime: new Date(plan.restoreTime!),
        ...placement,
        Tags: tags,
      }),
    );
    return { identifier: plan.target, cluster: false };
  },
});

export const rdsTest = group(testState, {
  'test.rds.start': async (cp, deps, state) => {
    // A temporary copy of the source from its newest snapshot, in the source's subnets and security groups,
    // private and without deletion protection (the test deletes it on every path).
    const plan = required(state.plan?.rds, 'plan.rds');
    const rds = rdsClient(deps, plan.region);
    const tags = [{ Key: 'dr-automation:test', Value: state.testId }];
    const startedAt = cp.now().toISOString();
    if (plan.sourceCluster) {
      const { source, placement } = await clusterSource(rds, plan.sourceCluster);
      await rds.send(
        new RestoreDBClusterFromSnapshotCommand({
          DBClusterIdentifier: plan.target,
          SnapshotIdentifier: plan.snapshot,
          Engine: source?.Engine ?? 'aurora-postgresql',
          ...(source?.EngineVersion ? { EngineVersion: source.EngineVersion } : {}),
          ...placement,
          DeletionProtection: false,
          Tags: tags,
        }),
      );
      await addClusterInstance(rds, source, plan.target, tags);
      return { identifier: plan.target, cluster: true, startedAt };
    }
    const { source, placement } = await instanceSource(rds, plan.sourceInstance);
    await rds.send(
      new RestoreDBInstanceFromDBSnapshotCommand({
        DBInstanceIdentifier: plan.target,
        DBSnapshotIdentifier: plan.snapshot,
        ...(source?.DBInstanceClass ? { DBInstanceClass: source.DBInstanceClass } : {}),
        ...placement,
        MultiAZ: false,
        DeletionProtection: false,
        Tags: tags,
      }),
    );
    return { identifier: plan.target, cluster: false, startedAt };
  },
});

/** Steps of restores and tests alike: the entry they record progress in is the one the state names. */
export const rdsSteps = group(workflowState, {
  'restore.rds.status': async (cp, deps, state) => {
    const plan = required(state.plan?.rds, 'plan.rds');
    const rds = rdsClient(deps, plan.region);
    const polls = (state.rdsStatus?.polls ?? 0) + 1;
    const instance = (
      await rds.send(
        new DescribeDBInstancesCommand({
          DBInstanceIdentifier: plan.sourceCluster ? `${plan.target}-1` : plan.target,
        }),
      )
    ).DBInstances?.[0];
    const status = instance?.DBInstanceStatus ?? 'unknown';
    if (['failed', 'incompatible-restore', 'incompatible-parameters', 'storage-full'].includes(status))
      throw new WorkflowError('RdsRestoreFailed', `the restored instance is ${status}`);
    let endpoint = instance?.Endpoint?.Address
      ? `${instance.Endpoint.Address}:${instance.Endpoint.Port ?? 5432}`
      : undefined;
    if (plan.sourceCluster) {
      const cluster = (await rds.send(new DescribeDBClustersCommand({ DBClusterIdentifier: plan.target })))
        .DBClusters?.[0];
      if (cluster?.Endpoint) endpoint = `${cluster.Endpoint}:${cluster.Port ?? 5432}`;
    }
    return {
      available: status === 'available',
      status,
      polls,
      checkedAt: cp.now().toISOString(),
      ...(endpoint ? { endpoint } : {}),
    };
  },
  'restore.rds.cleanup': async (_cp, deps, state) => {
    const plan = state.plan?.rds;
    if (!plan) return { deleted: [] };
    const rds = rdsClient(deps, plan.region);
    const deleted: string[] = [];
    const gone = (error: unknown) => /NotFound/.test((error as Error).name);
    const instance = plan.sourceCluster ? `${plan.target}-1` : plan.target;
    try {
      await rds.send(
        new DeleteDBInstanceCommand({ DBInstanceIdentifier: instance, SkipFinalSnapshot: true }),
      );
      deleted.push(instance);
    } catch (error) {
      if (!gone(error)) throw error;
    }
    if (plan.sourceCluster) {
      try {
        await rds.send(
          new DeleteDBClusterCommand({ DBClusterIdentifier: plan.target, SkipFinalSnapshot: true }),
        );
        deleted.push(plan.target);
      } catch (error) {
        if (!gone(error)) throw error;
      }
    }
    return { deleted };
  },
});

/** The source an RDS step copies, and the name of the copy (`dr-restore-<restore or test id>`). */
export function copyOf(
  source: { instanceIdentifier?: string; clusterIdentifier?: string; region?: string },
  id: string,
): { region?: string; sourceCluster?: string; sourceInstance?: string; target: string } {
  return {
    ...(source.region ? { region: source.region } : {}),
    ...(source.clusterIdentifier
      ? { sourceCluster: source.clusterIdentifier }
      : { sourceInstance: source.instanceIdentifier! }),
    target: `dr-restore-${id.toLowerCase()}`,
  };
}
