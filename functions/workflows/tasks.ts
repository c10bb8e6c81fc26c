import { pathProblem } from '../core/paths.ts';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import {
  CreateDBInstanceCommand,
  type DBCluster,
  DeleteDBClusterCommand,
  DescribeDBClusterSnapshotsCommand,
  DescribeDBSnapshotsCommand,
  RestoreDBClusterFromSnapshotCommand,
  RestoreDBInstanceFromDBSnapshotCommand,
  DeleteDBInstanceCommand,
  DescribeDBClustersCommand,
  DescribeDBInstancesCommand,
  RDSClient,
  RestoreDBClusterToPointInTimeCommand,
  RestoreDBInstanceToPointInTimeCommand,
  CreateDBInstanceReadReplicaCommand,
  DescribeGlobalClustersCommand,
  PromoteReadReplicaCommand,
  SwitchoverGlobalClusterCommand,
} from '@aws-sdk/client-rds';
import {
  ChangeResourceRecordSetsCommand,
  ListResourceRecordSetsCommand,
  Route53Client,
  type ResourceRecordSet,
} from '@aws-sdk/client-route-53';
import type { ControlPlane } from '../core/context.ts';
import { runAlertChecks } from '../core/services/alert-service.ts';
import { mailBody, type MailMessage } from '../core/mail/ses-mailer.ts';
import { getBackup, isGood, isRestorePoint, listBackups } from '../core/services/backup-service.ts';
import { environmentConnection, findConfig } from '../core/services/config-service.ts';
import {
  getDrTest,
  updateDrTest,
  type DrTestRecord,
  type DrTestResults,
} from '../core/services/drtest-service.ts';
import {
  getRestore,
  updateRestore,
  type RestorePlan,
  type RestoreRecord,
} from '../core/services/restore-service.ts';
import type { DrConfigInput } from '../core/schemas.ts';
import { Partition, type StoredItem } from '../core/store/table.ts';
import type { MasterKey } from '../engine/crypto.ts';
import { exportArchive } from '../engine/export.ts';
import { verify } from '../engine/maintenance.ts';
import type { Manifest } from '../engine/manifest.ts';
import { readArchiveToc } from '../engine/pg-archive.ts';
import {
  connect,
  connectionFrom,
  createDatabase,
  userRelationCount,
  withDatabase,
  tocOf,
  type DatabaseConnection,
} from '../engine/postgres.ts';
import {
  checkTables,
  readStream,
  restoreDatabase,
  restoreFiles,
  type DatabaseRestoreResult,
} from '../engine/restore.ts';
import { withBackup } from '../core/services/open-backup.ts';
import type { BackupRecord, StoredSchedule } from '../core/records.ts';

/**
 * The steps of the restore and DR-test state machines. Each Task state of `statemachines/*.asl.json` invokes
 * the worker with `{action: "workflow", task, input}`; `input` is the execution's state, and what a step
 * returns lands where its ResultPath says. Steps record what they learn in the restore's or test's entry as
 * they go, so the API shows progress and a failure leaves its reason. A step that fails throws an error
 * whose name the state machine can catch (`DestinationNotEmpty`, `NothingToTest`…).
 */
export interface WorkflowDeps {
  readonly masterKey: () => Promise<MasterKey>;
  /** The Route 53 client (tests: one pointed at a local Route 53 API server). */
  readonly route53?: () => Route53Client;
  /** The RDS client for a region (tests: one pointed at a local RDS-API server). */
  readonly rds?: (region: string | undefined) => RDSClient;
  /** Sends the completion email of a test (absent: the notification is recorded as not sent). */
  readonly notify?: (message: MailMessage) => Promise<void>;
}

/** A Step Functions error as a Catch puts it under ResultPath. */
interface StepError {
  readonly Error?: string;
  readonly Cause?: string;
}

interface VerifyItem {
  readonly scheduleId: string;
  readonly backupId: string;
  readonly targetId: string;
}

interface VerifyResult extends VerifyItem {
  readonly ok: boolean;
  readonly bytes: number;
  readonly problems: readonly string[];
}

/** The execution's state as the definitions build it: each step's result under its ResultPath. */
interface State {
  readonly restoreId: string;
  readonly testId: string;
  readonly request?: { readonly dryRun?: boolean };
  readonly plan?: Omit<Partial<RestorePlan>, 'rds'> & {
    readonly rds?: RdsPlan;
    readonly actualRPO?: number;
    readonly items?: readonly VerifyItem[];
  };
  readonly database?: {
    readonly skipped?: boolean;
    readonly tables?: number;
    readonly rows?: number;
    readonly bytes?: number;
    readonly consistent?: boolean;
    readonly changes?: NonNullable<DatabaseRestoreResult['changes']>;
  };
  readonly files?: {
    readonly skipped?: boolean;
    readonly files?: number;
    readonly bytes?: number;
    readonly seconds?: number;
    readonly verifySeconds?: number;
    readonly issues?: readonly string[];
  };
  readonly scratch?: { readonly database: string };
  readonly restore?: {
    readonly usableAt?: string;
    readonly seconds?: number;
    readonly baseMismatch?: readonly string[];
  };
  readonly fetch?: { readonly seconds?: number };
  readonly switch?: { readonly switched?: boolean; readonly seconds?: number; readonly note?: string };
  readonly failback?: { readonly seconds?: number; readonly restored?: boolean };
  /** FAILOVER_TEST with an RDS standby (the execution's input names its type). */
  readonly standby?: { readonly type: string };
  readonly promote?: { readonly startedAt?: string };
  readonly promoted?: {
    readonly done?: boolean;
    readonly polls?: number;
    readonly endpoint?: string;
    readonly checkedAt?: string;
  };
  readonly standbyRestore?: { readonly startedAt?: string; readonly skipped?: boolean };
  readonly standbyRestored?: {
    readonly done?: boolean;
    readonly polls?: number;
    readonly checkedAt?: string;
  };
  readonly rds?: { readonly identifier: string; readonly cluster?: boolean; readonly startedAt?: string };
  readonly rdsStatus?: {
    readonly polls?: number;
    readonly endpoint?: string;
    readonly available?: boolean;
    readonly checkedAt?: string;
  };
  readonly health?: {
    readonly usableAt?: string;
    readonly seconds?: number;
    readonly ok?: boolean;
    readonly issues?: readonly string[];
  };
  readonly check?: { readonly ok?: boolean; readonly issues?: readonly string[]; readonly seconds?: number };
  readonly item?: VerifyItem;
  readonly verified?: readonly {
    readonly item: VerifyItem;
    readonly result?: VerifyResult;
    readonly error?: StepError;
  }[];
  readonly error?: StepError;
  readonly cleanupError?: StepError;
  readonly rdsCleanupError?: StepError;
}

/**
 * A new RDS instance (or Aurora cluster with one instance, `<target>-1`) the workflow makes: from the
 * source's point-in-time restore (restores), or from its newest snapshot (restore and recovery-time tests).
 */
interface RdsPlan {
  readonly region?: string;
  readonly sourceInstance?: string;
  readonly sourceCluster?: string;
  readonly target: string;
  readonly restoreTime?: string;
  readonly latestRestorableTime?: string;
  readonly snapshot?: string;
  readonly snapshotTime?: string;
}

type Task = (cp: ControlPlane, deps: WorkflowDeps, state: State) => Promise<unknown>;

export class WorkflowError extends Error {
  constructor(name: string, message: string) {
    super(message);
    this.name = name;
  }
}

export async function runWorkflowTask(
  cp: ControlPlane,
  deps: WorkflowDeps,
  task: string,
  input: Record<string, unknown>,
): Promise<unknown> {
  const state = input as unknown as State;
  const step = TASKS[task];
  if (!step) throw new WorkflowError('UnknownTask', `no workflow task ${task}`);
  const started = Date.now();
  try {
    return await step(cp, deps, state);
  } finally {
    cp.logger.info('workflow task', { task, ms: Date.now() - started });
  }
}

// ------------------------------------------------------------------------------------------ restore

async function planRestore(
  cp: ControlPlane,
  deps: WorkflowDeps,
  restore: RestoreRecord,
): Promise<RestorePlan> {
  const request = restore.request;
  const rdsSource = (await findConfig(cp))?.source?.rds;
  if (request.pointInTime !== undefined && request.method !== 'backup' && rdsSource)
    return planRdsRestore(deps, restore, rdsSource);
  let backup: BackupRecord;
  let gapSeconds: number | undefined;
  let until: string | undefined;
  if (request.backupId !== undefined) {
    backup = await getBackup(cp, request.backupId);
    if (!isGood(backup))
      throw new WorkflowError(
        'BackupNotRestorable',
        `backup ${backup.id} is ${backup.status}: it cannot be restored`,
      );
  } else {
    const at = Date.parse(request.pointInTime!);
    const candidates = await restorePointsBefore(cp, at, request.scheduleId);
    if (!candidates)
      throw new WorkflowError(
        'NoRestorePoint',
        `no backup${request.scheduleId ? ` of schedule ${request.scheduleId}` : ''} restores to ${request.pointInTime} or earlier`,
      );
    backup = candidates;
    gapSeconds = Math.round((at - Date.parse(backup.restorePoint!)) / 1000);
    if (backup.changes) {
      // Change-stream chain: its newest backup, applied up to the asked instant (the apply stops at the first
      // commit after it, so a later backup of the chain is always as good, and never misses a late commit).
      backup = (await newestOfChain(cp, backup.changes.base)) ?? backup;
      until = request.pointInTime;
      gapSeconds = undefined;
    }
  }
  const chain: string[] = [];
  for (let parent = backup.parent; parent !== undefined;) {
    chain.push(parent);
    parent = (await cp.table.get<BackupRecord>(Partition.backup, parent))?.data.parent;
  }
  return {
    method: 'backup',
    backupId: backup.id,
    type: backup.type,
    restorePoint: backup.restorePoint ?? backup.startedAt,
    ...(gapSeconds === undefined ? {} : { gapSeconds }),
    ...(until === undefined ? {} : { until }),
    chain,
    bytes: backup.sizes?.sourceBytes ?? 0,
    database: request.scope.database && backup.database !== undefined,
    files: request.scope.files && backup.files !== undefined && request.destination.filesTo !== undefined,
    destination: {
      environment: request.destination.environment,
      ...(request.destination.database ? { database: request.destination.database } : {}),
      ...(request.destination.filesTo ? { filesTo: request.destination.filesTo } : {}),
    },
  };
}

/**
 * The newest restore point of a change-stream chain (the FULL `base` and the INCREMENTALs on it, of any
 * schedule: the FULL and the INCREMENTALs are usually different schedules).
 */
function newestOfChain(cp: ControlPlane, base: string): Promise<BackupRecord | undefined> {
  return newestWhere(
    cp,
    undefined,
    (backup) => backup.changes?.base === base,
    (backup) => backup.id < base,
  );
}

/** The newest restore point whose restore point is at or before `at`. */
function restorePointsBefore(
  cp: ControlPlane,
  at: number,
  scheduleId?: string,
): Promise<BackupRecord | undefined> {
  return newestWhere(
    cp,
    scheduleId,
    (backup) => backup.restorePoint !== undefined && Date.parse(backup.restorePoint) <= at,
  );
}

/** The newest restore point that `wanted` accepts, newest first, until one that `past` says is too old. */
async function newestWhere(
  cp: ControlPlane,
  scheduleId: string | undefined,
  wanted: (backup: BackupRecord) => boolean,
  past: (backup: BackupRecord) => boolean = () => false,
): Promise<BackupRecord | undefined> {
  let nextToken: string | undefined;
  do {
    const page = await listBackups(cp, {
      ...(scheduleId ? { scheduleId } : {}),
      limit: 100,
      ...(nextToken ? { nextToken } : {}),
    });
    for (const backup of page.items) {
      if (past(backup)) return undefined;
      if (isRestorePoint(backup) && wanted(backup)) return backup;
    }
    nextToken = page.nextToken;
  } while (nextToken !== undefined);
  return undefined;
}

/** The destination database of a restore: the environment's server, the named database on it. */
async function destinationOf(cp: ControlPlane, restore: RestoreRecord): Promise<DatabaseConnection> {
  const server = await environmentConnection(cp, restore.request.destination.environment);
  if (!server)
    throw new WorkflowError(
      'NoDestination',
      `environment ${restore.request.destination.environment} has no database configured`,
    );
  const base = connectionFrom(server.url, server.password);
  return restore.request.destination.database
    ? withDatabase(base, restore.request.destination.database)
    : base;
}

const restoreTasks: Record<string, Task> = {
  'restore.plan': async (cp, _deps, state) => {
    const restore = await getRestore(cp, state.restoreId);
    const plan = await planRestore(cp, _deps, restore);
    await updateRestore(cp, restore.id, (record) => ({ ...record, plan }));
    return plan;
  },
  'restore.prepare': async (cp, _deps, state) => {
    const restore = await getRestore(cp, state.restoreId);
    const plan = state.plan as RestorePlan;
    const prepared: Record<string, unknown> = {};
    if (plan.database) {
      const target = await destinationOf(cp, restore);
      const exists = await databaseExists(target);
      if (!exists) {
        await createDatabase(withDatabase(target, 'postgres'), databaseNameOf(target));
        prepared.createdDatabase = databaseNameOf(target);
      } else if (
        !restore.request.overwrite &&
        (await userRelationCount(target)) > 0 &&
        !partialScope(restore)
      )
        throw new WorkflowError(
          'DestinationNotEmpty',
          `database ${databaseNameOf(target)} on ${restore.request.destination.environment} is not empty: restore into an empty database, or ask for overwrite`,
        );
    }
    if (plan.files && plan.destination.filesTo) {
      const problem = await pathProblem(plan.destination.filesTo, cp.paths);
      if (problem !== undefined)
        throw new WorkflowError('DestinationRefused', `directory ${plan.destination.filesTo} ${problem}`);
      const entries = await readdir(plan.destination.filesTo).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return [];
        throw error;
      });
      if (entries.length > 0 && !restore.request.overwrite)
        throw new WorkflowError(
          'DestinationNotEmpty',
          `directory ${plan.destination.filesTo} is not empty: restore into an empty directory, or ask for overwrite`,
        );
      await mkdir(plan.destination.filesTo, { recursive: true });
    }
    return prepared;
  },
  'restore.database': async (cp, deps, state) => {
    const plan = state.plan as RestorePlan;
    if (!plan.database) return { skipped: true };
    const restore = await getRestore(cp, state.restoreId);
    const target = await destinationOf(cp, restore);
    const started = Date.now();
    const result = await withBackup(cp, plan.backupId!, deps.masterKey, (repository, manifest) =>
      restoreDatabase(repository, manifest, {
        target,
        clean: restore.request.overwrite,
        ...(plan.until ? { until: plan.until } : {}),
        ...(restore.request.scope.tables ? { tables: restore.request.scope.tables } : {}),
        ...(restore.request.scope.schemas ? { schemas: restore.request.scope.schemas } : {}),
      }),
    );
    if (!result.consistent)
      throw new WorkflowError(
        'InconsistentRestore',
        `restored tables differ from the backup: ${result.checks
          .filter((check) => !check.ok)
          .map((check) => check.table)
          .join(', ')}`,
      );
    return {
      tables: result.tables,
      rows: result.rows,
      bytes: result.bytes,
      consistent: result.consistent,
      ...(result.changes ? { changes: result.changes } : {}),
      seconds: (Date.now() - started) / 1000,
    };
  },
  'restore.files': async (cp, deps, state) => {
    const plan = state.plan as RestorePlan;
    if (!plan.files || !plan.destination.filesTo) return { skipped: true };
    const restore = await getRestore(cp, state.restoreId);
    const started = Date.now();
    const result = await withBackup(cp, plan.backupId!, deps.masterKey, (repository, manifest) =>
      restoreFiles(repository, manifest, {
        destination: plan.destination.filesTo!,
        ...(restore.request.scope.include ? { include: restore.request.scope.include } : {}),
        ...(restore.request.preserveSpecialBits ? { preserveSpecialBits: true } : {}),
      }),
    );
    return { ...result, seconds: (Date.now() - started) / 1000 };
  },
  'restore.finish': async (cp, _deps, state) => {
    const failed = state.error !== undefined;
    const dryRun = !failed && state.request?.dryRun === true;
    const now = cp.now();
    const record = await updateRestore(cp, state.restoreId, (current) => ({
      ...current,
      status: failed ? 'FAILED' : dryRun ? 'PLANNED' : 'SUCCEEDED',
      finishedAt: now.toISOString(),
      ...(state.plan ? { plan: state.plan as RestorePlan } : {}),
      ...(failed
        ? {
            error: [
              errorMessage(state.error),
              ...(state.cleanupError ? [`cleanup failed: ${errorMessage(state.cleanupError)}`] : []),
            ].join('; '),
          }
        : dryRun
          ? {}
          : {
              result: {
                ...(state.database && !state.database.skipped
                  ? {
                      database: {
                        tables: state.database.tables ?? 0,
                        rows: state.database.rows ?? 0,
                        bytes: state.database.bytes ?? 0,
                        consistent: state.database.consistent === true,
                        ...(state.database.changes ? { changes: state.database.changes } : {}),
                      },
                    }
                  : {}),
                ...(state.files && !state.files.skipped
                  ? { files: { files: state.files.files ?? 0, bytes: state.files.bytes ?? 0 } }
                  : {}),
                ...(state.rds
                  ? {
                      rds: {
                        identifier: state.rds.identifier,
                        cluster: state.rds.cluster === true,
                        ...(state.rdsStatus?.endpoint ? { endpoint: state.rdsStatus.endpoint } : {}),
                      },
                    }
                  : {}),
                seconds: (now.getTime() - Date.parse(current.startedAt)) / 1000,
              },
            }),
    }));
    await cp.audit.append(
      { principal: 'workflow:restore' },
      {
        action: 'restore.finish',
        resource: `restore/${record.id}`,
        details: { status: record.status, ...(record.plan ? { backupId: record.plan.backupId } : {}) },
      },
    );
    return { status: record.status };
  },
};

function partialScope(restore: RestoreRecord): boolean {
  return (restore.request.scope.tables?.length ?? 0) > 0 || (restore.request.scope.schemas?.length ?? 0) > 0;
}

// ------------------------------------------------------------------------------------------ RDS

/** An RDS client for the source's region (tests give one pointed at a local RDS-API server). */
function rdsClient(deps: WorkflowDeps, region: string | undefined): RDSClient {
  return deps.rds?.(region) ?? new RDSClient(region ? { region } : {});
}

async function planRdsRestore(
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
  const target = `dr-restore-${restore.id.toLowerCase()}`;
  return {
    method: 'rds',
    rds: {
      ...(source.region ? { region: source.region } : {}),
      ...(source.clusterIdentifier
        ? { sourceCluster: source.clusterIdentifier }
        : { sourceInstance: source.instanceIdentifier! }),
      target,
      restoreTime: asked.toISOString(),
      ...(latest ? { latestRestorableTime: latest.toISOString() } : {}),
    },
    restorePoint: asked.toISOString(),
    gapSeconds: 0,
    chain: [],
    bytes: 0,
    database: true,
    files: false,
    destination: { environment: 'RDS', database: target },
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
      Tags: tags,
    }),
  );
}

/** The source's VPC security groups for a copy of it (omitted when it has none listed). */
function securityGroupsOf(groups: readonly { VpcSecurityGroupId?: string }[] | undefined): {
  VpcSecurityGroupIds?: string[];
} {
  const ids = (groups ?? []).flatMap((group) => (group.VpcSecurityGroupId ? [group.VpcSecurityGroupId] : []));
  return ids.length > 0 ? { VpcSecurityGroupIds: ids } : {};
}

/** The newest available snapshot (automated or manual) of the RDS/Aurora source. */
async function newestSnapshot(
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

const rdsTasks: Record<string, Task> = {
  'restore.rds.start': async (_cp, deps, state) => {
    const plan = state.plan!.rds!;
    const rds = rdsClient(deps, plan.region);
    const tags = [{ Key: 'dr-automation:restore', Value: state.restoreId }];
    if (plan.sourceCluster) {
      const cluster = await rds.send(
        new DescribeDBClustersCommand({ DBClusterIdentifier: plan.sourceCluster }),
      );
      const writer = cluster.DBClusters?.[0];
      await rds.send(
        new RestoreDBClusterToPointInTimeCommand({
          SourceDBClusterIdentifier: plan.sourceCluster,
          DBClusterIdentifier: plan.target,
          RestoreToTime: new Date(plan.restoreTime!),
          Tags: tags,
        }),
      );
      await addClusterInstance(rds, writer, plan.target, tags);
      return { identifier: plan.target, cluster: true };
    }
    await rds.send(
      new RestoreDBInstanceToPointInTimeCommand({
        SourceDBInstanceIdentifier: plan.sourceInstance,
        TargetDBInstanceIdentifier: plan.target,
        RestoreTime: new Date(plan.restoreTime!),
        Tags: tags,
      }),
    );
    return { identifier: plan.target, cluster: false };
  },
  'test.rds.start': async (cp, deps, state) => {
    // A temporary copy of the source from its newest snapshot, in the source's subnets and security groups,
    // private and without deletion protection (the test deletes it on every path).
    const plan = state.plan!.rds!;
    const rds = rdsClient(deps, plan.region);
    const tags = [{ Key: 'dr-automation:test', Value: state.testId }];
    const startedAt = cp.now().toISOString();
    if (plan.sourceCluster) {
      const source = (
        await rds.send(new DescribeDBClustersCommand({ DBClusterIdentifier: plan.sourceCluster }))
      ).DBClusters?.[0];
      await rds.send(
        new RestoreDBClusterFromSnapshotCommand({
          DBClusterIdentifier: plan.target,
          SnapshotIdentifier: plan.snapshot,
          Engine: source?.Engine ?? 'aurora-postgresql',
          ...(source?.EngineVersion ? { EngineVersion: source.EngineVersion } : {}),
          ...(source?.DBSubnetGroup ? { DBSubnetGroupName: source.DBSubnetGroup } : {}),
          ...securityGroupsOf(source?.VpcSecurityGroups),
          DeletionProtection: false,
          Tags: tags,
        }),
      );
      await addClusterInstance(rds, source, plan.target, tags);
      return { identifier: plan.target, cluster: true, startedAt };
    }
    const source = (
      await rds.send(new DescribeDBInstancesCommand({ DBInstanceIdentifier: plan.sourceInstance }))
    ).DBInstances?.[0];
    await rds.send(
      new RestoreDBInstanceFromDBSnapshotCommand({
        DBInstanceIdentifier: plan.target,
        DBSnapshotIdentifier: plan.snapshot,
        ...(source?.DBInstanceClass ? { DBInstanceClass: source.DBInstanceClass } : {}),
        ...(source?.DBSubnetGroup?.DBSubnetGroupName
          ? { DBSubnetGroupName: source.DBSubnetGroup.DBSubnetGroupName }
          : {}),
        ...securityGroupsOf(source?.VpcSecurityGroups),
        PubliclyAccessible: false,
        MultiAZ: false,
        DeletionProtection: false,
        Tags: tags,
      }),
    );
    return { identifier: plan.target, cluster: false, startedAt };
  },
  'restore.rds.status': async (cp, deps, state) => {
    const plan = state.plan!.rds!;
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
};

// ------------------------------------------------------------------------------------------ failover

/** The environment's endpoint record as it is now (the first record set of that name), if any. */
async function currentRecord(
  route53: Route53Client,
  endpoint: { hostedZoneId: string; recordName: string },
): Promise<ResourceRecordSet | undefined> {
  const name = endpoint.recordName.endsWith('.') ? endpoint.recordName : `${endpoint.recordName}.`;
  const found = await route53.send(
    new ListResourceRecordSetsCommand({
      HostedZoneId: endpoint.hostedZoneId,
      StartRecordName: name,
      MaxItems: 1,
    }),
  );
  const record = found.ResourceRecordSets?.[0];
  return record?.Name === name ? record : undefined;
}

const failoverTasks: Record<string, Task> = {
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
    // A name holds one CNAME and nothing else: a record of another type is replaced in the same change.
    await route53.send(
      new ChangeResourceRecordSetsCommand({
        HostedZoneId: endpoint.hostedZoneId,
        ChangeBatch: {
          Comment: 'DR Automation FAILOVER_TEST: to the standby',
          Changes:
            original.Type === 'CNAME'
              ? [{ Action: 'UPSERT', ResourceRecordSet: standby }]
              : [
                  { Action: 'DELETE', ResourceRecordSet: original },
                  { Action: 'CREATE', ResourceRecordSet: standby },
                ],
        },
      }),
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
    // Back to what it was, in one change (a record of another type replaces ours).
    await route53.send(
      new ChangeResourceRecordSetsCommand({
        HostedZoneId: endpoint.hostedZoneId,
        ChangeBatch: {
          Comment: 'DR Automation FAILOVER_TEST: failback',
          Changes:
            current && current.Type !== original.Type
              ? [
                  { Action: 'DELETE', ResourceRecordSet: current },
                  { Action: 'CREATE', ResourceRecordSet: original as ResourceRecordSet },
                ]
              : [{ Action: 'UPSERT', ResourceRecordSet: original as ResourceRecordSet }],
        },
      }),
    );
    return { restored: true, seconds: (Date.now() - started) / 1000 };
  },
};

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
  return withDatabase(await serverOf(cp, test, state), state.scratch!.database);
}

async function standbyHostOf(cp: ControlPlane, test: DrTestRecord, state: State): Promise<string> {
  return new URL((await standbyDatabase(cp, test, state)).url).hostname;
}

/** A connection URL moved to another `host:port`. */
function atEndpoint(connectionUrl: string, endpoint: string): string {
  const url = new URL(connectionUrl);
  const colon = endpoint.lastIndexOf(':');
  url.hostname = endpoint.slice(0, colon);
  url.port = endpoint.slice(colon + 1);
  return url.toString();
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

function regionOfArn(arn: string): string {
  return arn.split(':')[3]!;
}

function endpointOf(address: string | undefined, port: number | undefined): string | undefined {
  return address ? `${address}:${port ?? 5432}` : undefined;
}

const standbyTasks: Record<string, Task> = {
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
};

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

async function clusterEndpoint(deps: WorkflowDeps, clusterArn: string): Promise<string | undefined> {
  const cluster = (
    await rdsClient(deps, regionOfArn(clusterArn)).send(
      new DescribeDBClustersCommand({ DBClusterIdentifier: clusterArn }),
    )
  ).DBClusters?.[0];
  return endpointOf(cluster?.Endpoint, cluster?.Port);
}

// ------------------------------------------------------------------------------------------ DR tests

const testTasks: Record<string, Task> = {
  'test.verification.plan': async (cp) => {
    const schedules = await cp.table.queryAll<StoredItem<StoredSchedule>>(Partition.schedule);
    const items: { scheduleId: string; backupId: string; targetId: string }[] = [];
    for (const { data: schedule } of schedules) {
      const newest = (await listBackups(cp, { scheduleId: schedule.id, latest: true })).items[0];
      if (!newest) continue;
      for (const target of newest.targets)
        if (target.status === 'SUCCESS')
          items.push({ scheduleId: schedule.id, backupId: newest.id, targetId: target.targetId });
    }
    return { items };
  },
  'test.verify': async (cp, deps, state) => {
    const item = state.item!;
    return withBackup(
      cp,
      item.backupId,
      deps.masterKey,
      async (repository, manifest) => {
        const report = await verify(repository, item.backupId);
        const problems = report.problems.map((problem) => `${problem.object}: ${problem.message}`);
        if (report.ok && manifest.database && !manifest.database.schemaOnly) {
          const listing = await archiveListing(repository, manifest).catch((error: unknown) => {
            problems.push(`pg_restore --list refused the database archive: ${(error as Error).message}`);
            return undefined;
          });
          const tables = listing?.split('\n').filter((line) => / TABLE DATA /.test(line)).length;
          if (listing !== undefined && tables !== manifest.database.tables.length)
            problems.push(
              `pg_restore --list shows ${tables} tables, the backup holds ${manifest.database.tables.length}`,
            );
        }
        return {
          ...item,
          ok: problems.length === 0,
          bytes: report.bytes,
          chunks: report.chunks,
          problems,
          brokenItems: report.brokenItems,
        };
      },
      item.targetId,
    );
  },
  'test.restore.plan': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const newest = (await listBackups(cp, { latest: true, limit: 1 })).items.find(
      (backup) => backup.database,
    );
    const backup = newest ?? (await newestWithDatabase(cp));
    if (!backup) throw new WorkflowError('NothingToTest', 'no backup with a database can be restored yet');
    const rpoHours =
      (Date.parse(test.startedAt) - Date.parse(backup.restorePoint ?? backup.startedAt)) / 3_600_000;
    const planned = { backupId: backup.id, restorePoint: backup.restorePoint, actualRPO: round(rpoHours) };
    if (test.method !== 'rds') return { ...planned, method: 'backup' };
    // The environment is a temporary copy of the RDS source, from its newest snapshot.
    const source = (await findConfig(cp))?.source?.rds;
    if (!source) throw new WorkflowError('NoRdsSource', 'the DR config no longer names an RDS/Aurora source');
    const snapshot = await newestSnapshot(rdsClient(deps, source.region), source).catch((error: unknown) => {
      throw new WorkflowError('RdsSourceNotFound', `RDS source: ${(error as Error).message}`);
    });
    if (!snapshot)
      throw new WorkflowError(
        'NoSnapshot',
        `${source.clusterIdentifier ?? source.instanceIdentifier} has no available snapshot to restore a temporary instance from`,
      );
    return {
      ...planned,
      method: 'rds',
      rds: {
        ...(source.region ? { region: source.region } : {}),
        ...(source.clusterIdentifier
          ? { sourceCluster: source.clusterIdentifier }
          : { sourceInstance: source.instanceIdentifier! }),
        target: `dr-restore-${test.id.toLowerCase()}`,
        snapshot: snapshot.identifier,
        snapshotTime: snapshot.createdAt.toISOString(),
      },
    };
  },
  'test.scratch.create': async (cp, _deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const server = await serverOf(cp, test, state);
    const name = `dr_test_${test.id.toLowerCase().replace(/[^a-z0-9]/g, '_')}`;
    // Recorded before it exists: a cleanup after any failure knows what to drop.
    await updateDrTest(cp, test.id, (record) => ({ ...record, scratchDatabase: name }));
    await createDatabase(server, name);
    return { database: name };
  },
  'test.restore.run': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const target = withDatabase(await serverOf(cp, test, state), state.scratch!.database);
    const started = Date.now();
    // A change-stream backup is checked while it restores: the FULL's tables against their checksums before
    // the changes go on (the check step cannot: no checksum exists for the state after them).
    const result = await withBackup(cp, state.plan!.backupId!, deps.masterKey, (repository, manifest) =>
      restoreDatabase(repository, manifest, {
        target,
        noOwner: true,
        check: (manifest.changes?.sets.length ?? 0) > 0,
      }),
    );
    // Usable: the restore finished (the test's start to here is the measured RTO).
    const usableAt = cp.now().toISOString();
    return {
      tables: result.tables,
      rows: result.rows,
      bytes: result.bytes,
      ...(result.changes ? { changes: result.changes.transactions } : {}),
      ...(result.checks.some((check) => !check.ok)
        ? { baseMismatch: result.checks.filter((check) => !check.ok).map((check) => check.table) }
        : {}),
      seconds: (Date.now() - started) / 1000,
      usableAt,
    };
  },
  'test.restore.check': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const server = await serverOf(cp, test, state);
    const target = withDatabase(server, state.scratch!.database);
    const started = Date.now();
    return withBackup(cp, state.plan!.backupId!, deps.masterKey, async (repository, manifest) => {
      const issues: string[] = [];
      const database = manifest.database!;
      const applied = (manifest.changes?.sets.length ?? 0) > 0;
      for (const table of state.restore?.baseMismatch ?? [])
        issues.push(`table ${table}: the FULL's rows differ from the backup (checksum mismatch)`);
      const checks = applied ? [] : await checkTables(target, database.tables);
      for (const check of checks.filter((one) => !one.ok))
        issues.push(
          check.rows === check.expectedRows
            ? `table ${check.table}: the rows differ from the backup (checksum mismatch)`
            : `table ${check.table}: ${check.rows} rows, the backup holds ${check.expectedRows}`,
        );
      issues.push(...(await schemaIssues(repository, manifest, target)));
      const snapshot =
        state.plan?.method === 'rds' ? await snapshotHealth(server, state.plan.rds?.snapshot) : undefined;
      if (snapshot?.issue) issues.push(snapshot.issue);
      return {
        ok: issues.length === 0,
        ...(snapshot ? { snapshotRelations: snapshot.relations } : {}),
        tablesChecked: checks.length,
        issues,
        seconds: (Date.now() - started) / 1000,
      };
    });
  },
  'test.recovery.fetch': async (cp, deps, state) => {
    // Opening the repository and reading the backup's manifest and index: what a recovery does first.
    const started = Date.now();
    const found = await withBackup(
      cp,
      state.plan!.backupId!,
      deps.masterKey,
      async (repository, manifest) => {
        await repository.loadIndex(true);
        return { files: manifest.files?.entries.length ?? 0, tables: manifest.database?.tables.length ?? 0 };
      },
    );
    return { ...found, seconds: (Date.now() - started) / 1000 };
  },
  'test.recovery.files': async (cp, deps, state) => {
    // Restored, checked and removed in one step: steps may run in different worker instances.
    return withBackup(cp, state.plan!.backupId!, deps.masterKey, async (repository, manifest) => {
      if (!manifest.files) return { skipped: true, seconds: 0, verifySeconds: 0 };
      const scratch = await mkdtemp(join(tmpdir(), `dr-test-${state.testId}-`));
      try {
        const started = Date.now();
        const result = await restoreFiles(repository, manifest, { destination: scratch });
        const restoredAt = Date.now();
        const expected = manifest.files.entries.filter((entry) => entry.type === 'file').length;
        const found = (await readdir(scratch, { recursive: true, withFileTypes: true })).filter((entry) =>
          entry.isFile(),
        ).length;
        const issues = found === expected ? [] : [`files: ${found} restored, the backup holds ${expected}`];
        return {
          files: result.files,
          bytes: result.bytes,
          seconds: (restoredAt - started) / 1000,
          verifySeconds: (Date.now() - restoredAt) / 1000,
          issues,
        };
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    });
  },
  'test.recovery.health': async (cp, _deps, state) => {
    // The application's view: connect, run a query, read the largest table's row count.
    const test = await getDrTest(cp, state.testId);
    const target = withDatabase(await serverOf(cp, test, state), state.scratch!.database);
    const started = Date.now();
    const client = await connect(target);
    try {
      await client.query('SELECT 1');
      const tables = await client.query<{ name: string }>(
        `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY c.relpages DESC, 1 LIMIT 1`,
      );
      if (tables.rows[0]) await client.query(`SELECT count(*) FROM ${tables.rows[0].name}`);
      return { ok: true, seconds: (Date.now() - started) / 1000, usableAt: cp.now().toISOString() };
    } finally {
      await client.end();
    }
  },
  'test.scratch.drop': async (cp, _deps, state) => {
    const test = await getDrTest(cp, state.testId);
    if (!test.scratchDatabase) return { dropped: false };
    // A temporary instance that never answered holds nothing: deleting it is the cleanup.
    if (state.plan?.method === 'rds' && !state.rdsStatus?.endpoint) return { dropped: false };
    const server = await serverOf(cp, test, state);
    const client = await connect(server);
    try {
      await client.query(
        `DROP DATABASE IF EXISTS ${client.escapeIdentifier(test.scratchDatabase)} WITH (FORCE)`,
      );
    } finally {
      await client.end();
    }
    return { dropped: test.scratchDatabase };
  },
  'test.finish': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const results = resultsOf(test, state, cp.now());
    const record = await updateDrTest(cp, test.id, (current) => ({
      ...current,
      status: results.success ? 'PASSED' : 'FAILED',
      finishedAt: cp.now().toISOString(),
      results,
    }));
    if (results.success && test.testType !== 'BACKUP_VERIFICATION' && state.plan?.backupId)
      await markVerified(cp, state.plan.backupId);
    if (results.success && test.testType === 'BACKUP_VERIFICATION')
      for (const backup of results.backups ?? []) if (backup.ok) await markVerified(cp, backup.backupId);
    await cp.audit.append(
      { principal: `workflow:${test.testType}` },
      { action: 'drtest.finish', resource: `drtest/${test.id}`, details: { status: record.status } },
    );
    // An RTO violation, or an overdue type that passed again, is alerted now rather than at the next minute.
    await runAlertChecks(cp, deps.notify).catch((error: unknown) =>
      cp.logger.error('alert checks failed', { error: (error as Error).message }),
    );
    return { success: results.success, status: record.status };
  },
  'test.notify': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const config = await findConfig(cp);
    const to = config?.notificationEmails ?? [];
    if (to.length === 0) return { sent: false, reason: 'no notificationEmails in the DR config' };
    if (!deps.notify) return { sent: false, reason: 'no mail service in this deployment' };
    const results = test.results;
    const subject = `DR test ${test.testType} ${results?.success ? 'passed' : 'FAILED'} (${test.id})`;
    const lines = [
      `DR test ${test.id}: ${test.testType} on ${test.targetEnvironment}`,
      `Result: ${results?.success ? 'passed' : 'failed'}`,
      ...(results?.actualRTO === undefined
        ? []
        : [
            `Actual RTO: ${results.actualRTO} h (objective ${test.objectives?.rto} h)${results.rtoViolated ? ' — VIOLATED' : ''}`,
          ]),
      ...(results?.actualRPO === undefined
        ? []
        : [
            `Actual RPO: ${results.actualRPO} h (objective ${test.objectives?.rpo} h)${results.rpoViolated ? ' — VIOLATED' : ''}`,
          ]),
      ...(results?.issues.length ? ['Issues:', ...results.issues.map((issue) => `- ${issue}`)] : []),
    ];
    await deps.notify({ to, subject, ...mailBody(lines) });
    return { sent: true, to: to.length };
  },
};

/** The source database as the snapshot brought it back on the temporary instance: it answers, with tables. */
async function snapshotHealth(
  server: DatabaseConnection,
  snapshotId: string | undefined,
): Promise<{ relations: number; issue?: string }> {
  const name = databaseNameOf(server);
  try {
    const relations = await userRelationCount(server);
    return relations > 0
      ? { relations }
      : { relations, issue: `snapshot ${snapshotId}: database ${name} has no tables` };
  } catch (error) {
    return {
      relations: 0,
      issue: `snapshot ${snapshotId}: database ${name} does not answer: ${(error as Error).message}`,
    };
  }
}

async function newestWithDatabase(cp: ControlPlane): Promise<BackupRecord | undefined> {
  let nextToken: string | undefined;
  do {
    const page = await listBackups(cp, { limit: 100, ...(nextToken ? { nextToken } : {}) });
    const found = page.items.find((backup) => isRestorePoint(backup) && backup.database);
    if (found) return found;
    nextToken = page.nextToken;
  } while (nextToken !== undefined);
  return undefined;
}

/**
 * The test's environment server, connected to its maintenance database (where scratch databases are made):
 * the temporary RDS instance once it answers (with the source's credentials, which its snapshot holds), else
 * the target environment's server.
 */
async function serverOf(cp: ControlPlane, test: DrTestRecord, state?: State): Promise<DatabaseConnection> {
  if (state?.plan?.method === 'rds') {
    const endpoint = state.rdsStatus?.endpoint;
    const source = await environmentConnection(cp, 'PRODUCTION');
    if (!endpoint || !source)
      throw new WorkflowError('NoEnvironment', 'the temporary RDS instance has no endpoint yet');
    return connectionFrom(atEndpoint(source.url, endpoint), source.password);
  }
  const server = await environmentConnection(cp, test.targetEnvironment);
  if (!server)
    throw new WorkflowError(
      'NoEnvironment',
      `environment ${test.targetEnvironment} has no database configured`,
    );
  return connectionFrom(server.url, server.password);
}

function resultsOf(test: DrTestRecord, state: State, now: Date): DrTestResults {
  const issues: string[] = [];
  if (state.error !== undefined) issues.push(errorMessage(state.error));
  if (state.cleanupError !== undefined) issues.push(`cleanup failed: ${errorMessage(state.cleanupError)}`);
  if (state.rdsCleanupError !== undefined)
    issues.push(
      `the temporary instance ${state.plan?.rds?.target} was not deleted: ${errorMessage(state.rdsCleanupError)}`,
    );
  const base = { issues, participants: [] as string[] };
  if (test.testType === 'BACKUP_VERIFICATION') {
    const verified = state.verified ?? [];
    const backups = verified.map((entry) => ({
      backupId: entry.item.backupId,
      targetId: entry.item.targetId,
      ok: entry.result?.ok === true,
    }));
    for (const entry of verified) {
      if (entry.error)
        issues.push(`backup ${entry.item.backupId} on ${entry.item.targetId}: ${errorMessage(entry.error)}`);
      for (const problem of entry.result?.problems ?? [])
        issues.push(`backup ${entry.item.backupId} on ${entry.item.targetId}: ${problem}`);
    }
    if (state.plan && verified.length === 0)
      issues.push('no backup to verify: no schedule has a restore point yet');
    const bytesVerified = verified.reduce((sum, entry) => sum + (entry.result?.bytes ?? 0), 0);
    return { ...base, success: issues.length === 0, bytesVerified, backups };
  }
  // RESTORE_TEST and RECOVERY_TIME_TEST: usable when the database is restored (and, for a recovery, the
  // files too and the health check passed); RTO from the test's start to then.
  if (state.check?.issues) issues.push(...state.check.issues);
  if (state.files?.issues) issues.push(...state.files.issues);
  if (state.health?.issues) issues.push(...state.health.issues);
  if (state.switch?.note) issues.push(state.switch.note);
  const usableAt = test.testType === 'RESTORE_TEST' ? state.restore?.usableAt : state.health?.usableAt;
  const actualRTO =
    usableAt === undefined
      ? undefined
      : round((Date.parse(usableAt) - Date.parse(test.startedAt)) / 3_600_000);
  const actualRPO = state.plan?.actualRPO;
  const phases: Record<string, number> = {};
  if (state.rds?.startedAt && state.rdsStatus?.available && state.rdsStatus.checkedAt)
    phases.instanceRestore = (Date.parse(state.rdsStatus.checkedAt) - Date.parse(state.rds.startedAt)) / 1000;
  if (state.fetch?.seconds !== undefined) phases.fetch = state.fetch.seconds;
  if (state.restore?.seconds !== undefined) phases.databaseRestore = state.restore.seconds;
  if (state.files?.seconds !== undefined && !state.files.skipped) phases.filesRestore = state.files.seconds;
  if (state.check?.seconds !== undefined)
    phases.verification = state.check.seconds + (state.files?.verifySeconds ?? 0);
  if (state.health?.seconds !== undefined) phases.healthCheck = state.health.seconds;
  if (state.switch?.seconds !== undefined) phases.switchEndpoint = state.switch.seconds;
  if (state.failback?.seconds !== undefined) phases.failback = state.failback.seconds;
  if (state.promote?.startedAt && state.promoted?.done && state.promoted.checkedAt)
    phases.promoteStandby =
      (Date.parse(state.promoted.checkedAt) - Date.parse(state.promote.startedAt)) / 1000;
  if (state.standbyRestore?.startedAt && state.standbyRestored?.done && state.standbyRestored.checkedAt)
    phases.restoreStandby =
      (Date.parse(state.standbyRestored.checkedAt) - Date.parse(state.standbyRestore.startedAt)) / 1000;
  phases.total = (now.getTime() - Date.parse(test.startedAt)) / 1000;
  const recovery = test.testType === 'RECOVERY_TIME_TEST';
  const failover = test.testType === 'FAILOVER_TEST';
  // With an RDS standby the data is staging's own (no backup to compare with): the health check is the
  // check, and the standby must be back as it was (replicating again, or the primary switched back).
  const rdsStandby = failover && state.standby !== undefined;
  const complete = recovery
    ? state.health !== undefined
    : failover
      ? state.health?.ok === true &&
        (state.switch?.switched !== true || state.failback?.restored === true) &&
        (!rdsStandby || state.standbyRestored?.done === true)
      : true;
  // A recovery slower than the objective fails the recovery-time test (a restore test only flags it).
  if (recovery && actualRTO !== undefined && test.objectives && actualRTO > test.objectives.rto)
    issues.push(`recovery took ${actualRTO} h, more than the RTO of ${test.objectives.rto} h`);
  return {
    ...base,
    success: issues.length === 0 && (state.check?.ok === true || rdsStandby) && complete,
    ...(actualRTO === undefined
      ? {}
      : { actualRTO, rtoViolated: actualRTO > (test.objectives?.rto ?? Infinity) }),
    ...(actualRPO === undefined
      ? {}
      : { actualRPO, rpoViolated: actualRPO > (test.objectives?.rpo ?? Infinity) }),
    phases,
    ...(state.plan?.backupId
      ? { backups: [{ backupId: state.plan.backupId, ok: state.check?.ok === true }] }
      : {}),
    ...(state.plan?.rds?.snapshot && state.plan.rds.snapshotTime
      ? {
          rdsSnapshot: {
            identifier: state.plan.rds.snapshot,
            createdAt: state.plan.rds.snapshotTime,
            instance: state.plan.rds.target,
          },
        }
      : {}),
  };
}

async function markVerified(cp: ControlPlane, backupId: string): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const item = await cp.table.get<BackupRecord>(Partition.backup, backupId);
    if (!item) return;
    try {
      await cp.table.replace(item, { ...item.data, verifiedAt: cp.now().toISOString() }, cp.now());
      return;
    } catch {
      // changed meanwhile: read again
    }
  }
}

/**
 * The database archive of a backup as `pg_restore --list` sees it. pg_restore reads the header and TOC and
 * stops reading: the rest of the archive meets a closed pipe, which is expected (the data itself is what
 * `verify` authenticates).
 */
async function archiveListing(
  repository: Parameters<typeof exportArchive>[0],
  manifest: Manifest,
): Promise<string> {
  // A change-stream INCREMENTAL holds its FULL's dump (`database`) plus row changes (checked by verify):
  // the archive listed is the FULL's.
  const { changes: _changes, ...dump } = manifest;
  const archive = new PassThrough();
  exportArchive(repository, dump, archive).then(
    () => archive.end(),
    (error: unknown) => archive.destroy(error as Error),
  );
  try {
    // tocOf stops pg_restore if it hangs, and ends its input on every path
    return await tocOf(archive);
  } finally {
    archive.destroy();
  }
}

/** Schema objects the backup defines (from its archives) that the restored database lacks. */
async function schemaIssues(
  repository: Parameters<typeof exportArchive>[0],
  manifest: Manifest,
  target: DatabaseConnection,
): Promise<string[]> {
  const database = manifest.database!;
  const expected = new Map<string, number>();
  for (const record of [database.preData, database.postData, database.schemaOnly]) {
    if (!record) continue;
    const parts: Buffer[] = [];
    for await (const part of readStream(repository, record, 'schema')) parts.push(part);
    for (const entry of readArchiveToc(Buffer.concat(parts)).entries) {
      const kind = KIND_OF[entry.desc ?? ''];
      if (kind) expected.set(kind, (expected.get(kind) ?? 0) + 1);
    }
  }
  const client = await connect(target);
  try {
    const found = await client.query<{ kind: string; count: string }>(SCHEMA_COUNTS);
    const actual = new Map(found.rows.map((row) => [row.kind, Number(row.count)]));
    const issues: string[] = [];
    for (const [kind, count] of expected) {
      const have = actual.get(kind) ?? 0;
      if (have < count) issues.push(`schema: ${count} ${kind} in the backup, ${have} restored`);
    }
    return issues;
  } finally {
    await client.end();
  }
}

/** TOC entry kinds compared after a restore test, and how to count them in the catalog. */
const KIND_OF: Record<string, string> = {
  TABLE: 'tables',
  INDEX: 'indexes',
  SEQUENCE: 'sequences',
  VIEW: 'views',
  TRIGGER: 'triggers',
  'FK CONSTRAINT': 'foreign keys',
};
const SCHEMA_COUNTS = `
  WITH user_ns AS (SELECT oid FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema') AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%')
  SELECT 'tables' AS kind, count(*)::text AS count FROM pg_class WHERE relkind IN ('r','p') AND relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'indexes', count(*)::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace IN (SELECT oid FROM user_ns) AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p','u','x'))
  UNION ALL SELECT 'sequences', count(*)::text FROM pg_class WHERE relkind = 'S' AND relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'views', count(*)::text FROM pg_class WHERE relkind = 'v' AND relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'triggers', count(*)::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'foreign keys', count(*)::text FROM pg_constraint WHERE contype = 'f' AND connamespace IN (SELECT oid FROM user_ns)`;

// ------------------------------------------------------------------------------------------ helpers

async function databaseExists(connection: DatabaseConnection): Promise<boolean> {
  const client = await connect(withDatabase(connection, 'postgres'));
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [
      databaseNameOf(connection),
    ]);
    return (found.rowCount ?? 0) > 0;
  } finally {
    await client.end();
  }
}

function databaseNameOf(connection: DatabaseConnection): string {
  return decodeURIComponent(new URL(connection.url).pathname.slice(1));
}

/** A Step Functions error (`{Error, Cause}`; on AWS the Cause is the Lambda's JSON error) as one line. */
export function errorMessage(failure: StepError): string {
  let cause = failure.Cause ?? '';
  try {
    const parsed = JSON.parse(cause) as { errorMessage?: string };
    if (parsed.errorMessage) cause = parsed.errorMessage;
  } catch {
    // a plain message
  }
  return `${failure.Error ?? 'Error'}: ${cause}`.trim();
}

function round(hours: number): number {
  return Math.round(hours * 10_000) / 10_000;
}

const TASKS: Record<string, Task> = {
  ...restoreTasks,
  ...rdsTasks,
  ...failoverTasks,
  ...standbyTasks,
  ...testTasks,
};

export const WORKFLOW_TASKS = Object.keys(TASKS);
