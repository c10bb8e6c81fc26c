/** FAILOVER_TEST: switch the environment's DNS record to the standby (or promote an RDS standby), check it serves, and switch back. */
import {
  CreateDBInstanceReadReplicaCommand,
  DeleteDBInstanceCommand,
  DescribeDBInstancesCommand,
  DescribeGlobalClustersCommand,
  PromoteReadReplicaCommand,
  SwitchoverGlobalClusterCommand,
} from '@aws-sdk/client-rds';
import { Route53Client, type ResourceRecordSet } from '@aws-sdk/client-route-53';
import type { ControlPlane } from '../core/context.ts';
import type { DrConfigInput } from '../core/schemas.ts';
import { environmentConnection, findConfig } from '../core/services/config-service.ts';
import { getDrTest, updateDrTest, type DrTestRecord } from '../core/services/drtest-service.ts';
import { connect, connectionFrom, withDatabase, type DatabaseConnection } from '../engine/postgres.ts';
import { clusterEndpoint, endpointOf, rdsClient, regionOfArn, securityGroupsOf } from './rds.ts';
import { currentRecord, replaceRecord } from './route53.ts';
import type { State, WorkflowDeps } from './steps.ts';
import { WorkflowError, atEndpoint, group, required, serverOf, testState } from './steps.ts';

export const failoverSteps = group(testState, {
  'test.failover.switch': async (cp, deps, state) => {
    const endpoint = (await findConfig(cp))?.environments?.STAGING?.endpoint;
    if (!endpoint)
      return {
        switched: false,
        seconds: 0,
        note: 'the endpoint was not switched: set environments.STAGING.endpoint (a Route 53 record) in the DR config',
      };
    const route53 = deps.route53?.() ?? new Route53Client({});
    const started = Date.now();
    const original = await currentRecord(route53, endpoint);
    if (!original)
      throw new WorkflowError(
        'NoEndpointRecord',
        `record ${endpoint.recordName} not found in zone ${endpoint.hostedZoneId}`,
      );
    // Kept in the test's entry before the change: failback restores it on every path.
    await updateDrTest(cp, state.testId, (record) => ({ ...record, failover: { endpoint, original } }));
    const test = await getDrTest(cp, state.testId);
    const standbyHost = await standbyHostOf(cp, test, state);
    const standby: ResourceRecordSet = {
      Name: original.Name,
      Type: 'CNAME',
      TTL: 60,
      ResourceRecords: [{ Value: standbyHost }],
    };
    await replaceRecord(
      route53,
      endpoint.hostedZoneId,
      original,
      standby,
      'DR Automation FAILOVER_TEST: to the standby',
    );
    return { switched: true, standby: standbyHost, seconds: (Date.now() - started) / 1000 };
  },
  'test.failover.health': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const started = Date.now();
    const issues: string[] = [];
    const client = await connect(await standbyDatabase(cp, test, state));
    try {
      await client.query('SELECT 1');
      if (state.promoted?.endpoint) {
        // A promoted standby takes writes, and holds the application's tables.
        const recovery = await client.query<{ reading: boolean }>('SELECT pg_is_in_recovery() AS reading');
        if (recovery.rows[0]?.reading)
          issues.push('the standby is still read-only (in recovery) after the failover');
        const tables = await client.query<{ count: string }>(
          `SELECT count(*)::text AS count FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')`,
        );
        if (Number(tables.rows[0]?.count ?? 0) === 0) issues.push('the standby holds no tables');
      }
    } finally {
      await client.end();
    }
    if (state.switch?.switched && test.failover) {
      const route53 = deps.route53?.() ?? new Route53Client({});
      const now = await currentRecord(route53, test.failover.endpoint);
      const standbyHost = await standbyHostOf(cp, test, state);
      if (now?.ResourceRecords?.[0]?.Value !== standbyHost)
        issues.push(
          `endpoint ${test.failover.endpoint.recordName} does not point at the standby after the switch`,
        );
    }
    return {
      ok: issues.length === 0,
      issues,
      seconds: (Date.now() - started) / 1000,
      usableAt: cp.now().toISOString(),
    };
  },
  'test.failover.back': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    if (!test.failover) return { restored: false, seconds: 0 };
    const route53 = deps.route53?.() ?? new Route53Client({});
    const started = Date.now();
    const { endpoint, original } = test.failover;
    const current = await currentRecord(route53, endpoint);
    // Back to what it was, in one change
    await replaceRecord(
      route53,
      endpoint.hostedZoneId,
      current,
      original as ResourceRecordSet,
      'DR Automation FAILOVER_TEST: failback',
    );
    return { restored: true, seconds: (Date.now() - started) / 1000 };
  },
});

/**
 * The standby's database: the STAGING database on the promoted RDS standby (STAGING's credentials), or the
 * standby database restored from the newest backup on the STAGING server.
 */
async function standbyDatabase(
  cp: ControlPlane,
  test: DrTestRecord,
  state: State,
): Promise<DatabaseConnection> {
  if (state.promoted?.endpoint) {
    const staging = await environmentConnection(cp, 'STAGING');
    if (!staging) throw new WorkflowError('NoEnvironment', 'environment STAGING has no database configured');
    return connectionFrom(atEndpoint(staging.url, state.promoted.endpoint), staging.password);
  }
  return withDatabase(await serverOf(cp, test, state), required(state.scratch, 'scratch').database);
}

async function standbyHostOf(cp: ControlPlane, test: DrTestRecord, state: State): Promise<string> {
  return new URL((await standbyDatabase(cp, test, state)).url).hostname;
}

// ------------------------------------------------------------------------------------------ RDS standby

/** The tag an operator puts on an RDS standby that FAILOVER_TEST may promote, delete and re-create. */
export const STANDBY_TAG = 'dr-automation:standby';

type StandbyConfig = NonNullable<
  NonNullable<NonNullable<DrConfigInput['environments']>['STAGING']>['standby']
>;

async function standbyConfig(cp: ControlPlane): Promise<StandbyConfig> {
  const standby = (await findConfig(cp))?.environments?.STAGING?.standby;
  if (!standby) throw new WorkflowError('NoStandby', 'environments.STAGING.standby is no longer configured');
  return standby;
}

export const standbySteps = group(testState, {
  'test.standby.promote': async (cp, deps, state) => {
    const standby = await standbyConfig(cp);
    const startedAt = cp.now().toISOString();
    if (standby.type === 'rds-replica') {
      const rds = rdsClient(deps, standby.region);
      const replica = (
        await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: standby.instanceIdentifier }))
      ).DBInstances?.[0];
      if (!replica?.ReadReplicaSourceDBInstanceIdentifier)
        throw new WorkflowError('NotAReplica', `${standby.instanceIdentifier} is not a read replica`);
      if (!replica.TagList?.some((tag) => tag.Key === STANDBY_TAG && tag.Value === 'true'))
        throw new WorkflowError(
          'StandbyNotTagged',
          `${standby.instanceIdentifier} is not tagged ${STANDBY_TAG}=true: tag it to let FAILOVER_TEST promote and re-create it`,
        );
      // Kept in the test's entry before anything changes: the failback re-creates the replica from it.
      await updateDrTest(cp, state.testId, (record) => ({
        ...record,
        standby: {
          type: 'rds-replica',
          ...(standby.region ? { region: standby.region } : {}),
          instance: standby.instanceIdentifier,
          source: replica.ReadReplicaSourceDBInstanceIdentifier!,
          ...(replica.DBInstanceClass ? { instanceClass: replica.DBInstanceClass } : {}),
          ...(replica.DBSubnetGroup?.DBSubnetGroupName
            ? { subnetGroup: replica.DBSubnetGroup.DBSubnetGroupName }
            : {}),
          securityGroups: securityGroupsOf(replica.VpcSecurityGroups).VpcSecurityGroupIds ?? [],
        },
      }));
      await rds.send(new PromoteReadReplicaCommand({ DBInstanceIdentifier: standby.instanceIdentifier }));
      await markPromoted(cp, state.testId, startedAt);
      return { startedAt };
    }
    const rds = rdsClient(deps, regionOfArn(standby.secondaryClusterArn));
    const global = (
      await rds.send(
        new DescribeGlobalClustersCommand({ GlobalClusterIdentifier: standby.globalClusterIdentifier }),
      )
    ).GlobalClusters?.[0];
    const primary = global?.GlobalClusterMembers?.find((member) => member.IsWriter)?.DBClusterArn;
    if (!primary)
      throw new WorkflowError('NoPrimary', `${standby.globalClusterIdentifier} has no writer cluster`);
    if (primary === standby.secondaryClusterArn)
      throw new WorkflowError(
        'StandbyIsPrimary',
        `${standby.secondaryClusterArn} is already the primary of ${standby.globalClusterIdentifier}`,
      );
    if (!global?.GlobalClusterMembers?.some((member) => member.DBClusterArn === standby.secondaryClusterArn))
      throw new WorkflowError(
        'NotAMember',
        `${standby.secondaryClusterArn} is not a member of ${standby.globalClusterIdentifier}`,
      );
    await updateDrTest(cp, state.testId, (record) => ({
      ...record,
      standby: {
        type: 'aurora-global',
        globalCluster: standby.globalClusterIdentifier,
        primaryArn: primary,
        secondaryArn: standby.secondaryClusterArn,
      },
    }));
    await rds.send(
      new SwitchoverGlobalClusterCommand({
        GlobalClusterIdentifier: standby.globalClusterIdentifier,
        TargetDbClusterIdentifier: standby.secondaryClusterArn,
      }),
    );
    await markPromoted(cp, state.testId, startedAt);
    return { startedAt };
  },
  'test.standby.promoted': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const polls = (state.promoted?.polls ?? 0) + 1;
    const checkedAt = cp.now().toISOString();
    const standby = test.standby!;
    if (standby.type === 'rds-replica') {
      const instance = (
        await rdsClient(deps, standby.region).send(
          new DescribeDBInstancesCommand({ DBInstanceIdentifier: standby.instance }),
        )
      ).DBInstances?.[0];
      const done =
        instance?.DBInstanceStatus === 'available' && !instance.ReadReplicaSourceDBInstanceIdentifier;
      const endpoint = endpointOf(instance?.Endpoint?.Address, instance?.Endpoint?.Port);
      return {
        done,
        polls,
        checkedAt,
        status: instance?.DBInstanceStatus,
        ...(endpoint ? { endpoint } : {}),
      };
    }
    const writer = await globalWriter(deps, standby);
    if (writer.arn !== standby.secondaryArn || !writer.settled) return { done: false, polls, checkedAt };
    const endpoint = await clusterEndpoint(deps, standby.secondaryArn!);
    return { done: endpoint !== undefined, polls, checkedAt, ...(endpoint ? { endpoint } : {}) };
  },
  'test.standby.restore': async (cp, _deps, state) => {
    // The failback of the standby itself, on every path: each poll of `test.standby.restored` takes the next
    // step from what the standby is now (not from what the test believes it did), so a promotion asked for
    // just before a crash is undone too, and a replica that was never promoted is left alone.
    const test = await getDrTest(cp, state.testId);
    return test.standby ? { startedAt: cp.now().toISOString() } : { skipped: true };
  },
  'test.standby.restored': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const polls = (state.standbyRestored?.polls ?? 0) + 1;
    const checkedAt = cp.now().toISOString();
    const standby = test.standby;
    if (!standby || state.standbyRestore?.skipped) return { done: true, polls, checkedAt };
    if (standby.type === 'aurora-global') {
      const writer = await globalWriter(deps, standby);
      if (writer.arn === standby.primaryArn) return { done: writer.settled, polls, checkedAt };
      if (writer.settled)
        await rdsClient(deps, regionOfArn(standby.secondaryArn!)).send(
          new SwitchoverGlobalClusterCommand({
            GlobalClusterIdentifier: standby.globalCluster,
            TargetDbClusterIdentifier: standby.primaryArn,
          }),
        );
      return { done: false, polls, checkedAt, status: 'switching back' };
    }
    const rds = rdsClient(deps, standby.region);
    const instance = await rds
      .send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: standby.instance }))
      .then((found) => found.DBInstances?.[0])
      .catch((error: unknown) => {
        if (/NotFound/.test((error as Error).name)) return undefined;
        throw error;
      });
    const status = instance?.DBInstanceStatus;
    if (instance?.ReadReplicaSourceDBInstanceIdentifier)
      // A replica: never promoted, or re-created; done once it is available.
      return { done: status === 'available', polls, checkedAt, status };
    if (!instance) {
      // Deleted: the replica is re-created with its former source and settings.
      const sourceRegion = standby.source?.startsWith('arn:') ? regionOfArn(standby.source) : undefined;
      await rds.send(
        new CreateDBInstanceReadReplicaCommand({
          DBInstanceIdentifier: standby.instance,
          SourceDBInstanceIdentifier: standby.source,
          ...(standby.instanceClass ? { DBInstanceClass: standby.instanceClass } : {}),
          ...(standby.subnetGroup ? { DBSubnetGroupName: standby.subnetGroup } : {}),
          ...(standby.securityGroups?.length ? { VpcSecurityGroupIds: [...standby.securityGroups] } : {}),
          ...(sourceRegion && sourceRegion !== standby.region ? { SourceRegion: sourceRegion } : {}),
          Tags: [{ Key: STANDBY_TAG, Value: 'true' }],
        }),
      );
      return { done: false, polls, checkedAt, status: 'creating' };
    }
    // Promoted: a standalone instance cannot replicate again. Deleted (a final snapshot kept) once it is
    // available, then re-created.
    if (status === 'available')
      await rds.send(
        new DeleteDBInstanceCommand({
          DBInstanceIdentifier: standby.instance,
          SkipFinalSnapshot: false,
          FinalDBSnapshotIdentifier: `dr-failover-${test.id.toLowerCase()}`,
        }),
      );
    return { done: false, polls, checkedAt, status };
  },
});

async function markPromoted(cp: ControlPlane, testId: string, at: string): Promise<void> {
  await updateDrTest(cp, testId, (record) => ({
    ...record,
    ...(record.standby ? { standby: { ...record.standby, promotedAt: at } } : {}),
  }));
}

/** The writer of the standby's Aurora global database, and whether no switchover is under way. */
async function globalWriter(
  deps: WorkflowDeps,
  standby: NonNullable<DrTestRecord['standby']>,
): Promise<{ arn?: string; settled: boolean }> {
  const global = (
    await rdsClient(deps, regionOfArn(standby.secondaryArn!)).send(
      new DescribeGlobalClustersCommand({ GlobalClusterIdentifier: standby.globalCluster }),
    )
  ).GlobalClusters?.[0];
  const arn = global?.GlobalClusterMembers?.find((member) => member.IsWriter)?.DBClusterArn;
  return {
    ...(arn ? { arn } : {}),
    settled: global?.Status === 'available' && global.FailoverState === undefined,
  };
}
