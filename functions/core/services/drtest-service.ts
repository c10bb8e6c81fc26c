import type { Actor } from '../audit.ts';
import type { ControlPlane, WorkflowName } from '../context.ts';
import { ConflictError, NotFoundError, ServiceUnavailableError, ValidationError } from '../errors.ts';
import type { HookRun, RunProgress, StepRecord } from '../records.ts';
import { DR_TEST_TYPES, type DrTestInput, type DrTestResultsInput } from '../schemas.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import { newBackupId } from './backup-service.ts';
import { runnerOf, startRunWorkflow, updateItem } from './common.ts';
import { environmentConnection, findConfig, findConfigItem } from './config-service.ts';

export type DrTestType = (typeof DR_TEST_TYPES)[number];
export type DrTestStatus = 'RUNNING' | 'PASSED' | 'FAILED';

/** The guide's result fields, plus what the workflows measure. */
export interface DrTestResults {
  readonly success: boolean;
  /** Hours. */
  readonly actualRTO?: number;
  /** Hours. */
  readonly actualRPO?: number;
  readonly issues: readonly string[];
  readonly notes?: string;
  readonly participants: readonly string[];
  /** Seconds per phase, where the workflow times them. */
  readonly phases?: Readonly<Record<string, number>>;
  readonly rtoViolated?: boolean;
  readonly rpoViolated?: boolean;
  /** RESTORE_TEST / RECOVERY_TIME_TEST with method rds: the snapshot the temporary instance came from. */
  readonly rdsSnapshot?: {
    readonly identifier: string;
    readonly createdAt: string;
    readonly instance: string;
  };
  /** BACKUP_VERIFICATION: bytes of stored data read and authenticated. */
  readonly bytesVerified?: number;
  /** The backup the test used (RESTORE_TEST), or verified (one per schedule and target). */
  readonly backups?: readonly {
    readonly backupId: string;
    readonly targetId?: string;
    readonly ok: boolean;
  }[];
}

export interface DrTestRecord {
  readonly id: string;
  /** While it runs: bytes restored, rate, time left (the tests that restore). */
  readonly progress?: RunProgress;
  /** Its workflow's steps as they ran. */
  readonly steps?: readonly StepRecord[];
  /** The application hooks it ran around the database work. */
  readonly hooks?: HookRun;
  readonly testType: DrTestType;
  readonly targetEnvironment: 'STAGING' | 'PRODUCTION';
  readonly notifyOnCompletion: boolean;
  readonly status: DrTestStatus;
  /** `workflow` when a state machine ran it, `manual` when its results were recorded by hand. */
  readonly mode: 'workflow' | 'manual';
  readonly actor: string;
  readonly startedAt: string;
  readonly finishedAt?: string;
  readonly executionArn?: string;
  /** The objectives in force when the test ran (hours). */
  readonly objectives?: { readonly rto: number; readonly rpo: number };
  /** FAILOVER_TEST: the endpoint record as it was before the switch (failback restores it). */
  readonly failover?: {
    readonly endpoint: { readonly hostedZoneId: string; readonly recordName: string };
    readonly original: {
      readonly Name?: string;
      readonly Type?: string;
      readonly TTL?: number;
      readonly ResourceRecords?: readonly { readonly Value?: string }[];
    };
  };
  /**
   * FAILOVER_TEST with an RDS standby: what it was before the test (the failback puts it back): the replica's
   * source and settings, or the Aurora global database's primary.
   */
  readonly standby?: {
    readonly type: 'rds-replica' | 'aurora-global';
    readonly region?: string;
    readonly instance?: string;
    readonly source?: string;
    readonly instanceClass?: string;
    readonly subnetGroup?: string;
    readonly securityGroups?: readonly string[];
    readonly globalCluster?: string;
    readonly primaryArn?: string;
    readonly secondaryArn?: string;
    /** Set once the failover was asked for: from then on the failback must undo it. */
    readonly promotedAt?: string;
  };
  /**
   * RESTORE_TEST / RECOVERY_TIME_TEST: `scratch` restores into a scratch database on the environment's server,
   * `rds` into one on a temporary instance restored from the RDS source's newest snapshot.
   */
  readonly method?: 'scratch' | 'rds';
  /** A scratch database the test created (dropped before it ends, on every path). */
  readonly scratchDatabase?: string;
  readonly results?: DrTestResults;
}

const WORKFLOW_OF: Partial<Record<DrTestType, WorkflowName>> = {
  BACKUP_VERIFICATION: 'backup-verification',
  RESTORE_TEST: 'restore-test',
  RECOVERY_TIME_TEST: 'recovery-time-test',
  FAILOVER_TEST: 'failover-test',
};

/** POST /api/dr/test: records the test and starts its workflow; 202 with the id and the execution ARN. */
export async function startDrTest(cp: ControlPlane, input: DrTestInput, actor: Actor): Promise<DrTestRecord> {
  const { manual, method: askedMethod, ...fields } = input;
  const workflow = manual ? undefined : WORKFLOW_OF[input.testType];
  if (workflow && !cp.workflows)
    throw new ServiceUnavailableError('DR tests are not deployed here (no workflows)');
  const config = await findConfig(cp);
  if (!config) throw new ConflictError('there is no DR config yet (POST /api/dr/config first)');
  if (workflow && input.testType === 'FAILOVER_TEST' && input.targetEnvironment === 'PRODUCTION')
    throw ValidationError.forField(
      'targetEnvironment',
      'the FAILOVER_TEST workflow runs against STAGING only: fail production over by hand (POST with manual: true, then record the results)',
    );
  const restores = input.testType === 'RESTORE_TEST' || input.testType === 'RECOVERY_TIME_TEST';
  const rdsSource = config.source?.rds;
  if (askedMethod !== 'auto' && !restores)
    throw ValidationError.forField('method', 'applies to RESTORE_TEST and RECOVERY_TIME_TEST only');
  if (askedMethod === 'rds' && !rdsSource)
    throw ValidationError.forField(
      'method',
      'rds needs an RDS/Aurora source: set source.rds in the DR config (or use scratch)',
    );
  const resolved = askedMethod === 'auto' ? (rdsSource ? 'rds' : 'scratch') : askedMethod;
  const method = restores ? resolved : undefined;
  if (workflow && method === 'rds' && !(await environmentConnection(cp, 'PRODUCTION')))
    throw ValidationError.forField(
      'method',
      'rds connects to the instance restored from the snapshot with the source credentials: set source.database in the DR config',
    );
  if (
    workflow &&
    input.testType !== 'BACKUP_VERIFICATION' &&
    method !== 'rds' &&
    !(await environmentConnection(cp, input.targetEnvironment))
  )
    throw ValidationError.forField(
      'targetEnvironment',
      input.targetEnvironment === 'STAGING'
        ? 'has no database to restore into: set environments.STAGING.database in the DR config, or name PRODUCTION explicitly'
        : 'has no database: set source.database in the DR config',
    );
  const now = cp.now();
  const id = newBackupId(now);
  const record: DrTestRecord = {
    id,
    ...fields,
    ...(method ? { method } : {}),
    status: 'RUNNING',
    mode: workflow ? 'workflow' : 'manual',
    actor: actor.principal,
    startedAt: now.toISOString(),
    objectives: { rto: config.rto, rpo: config.rpo },
  };
  const item = await cp.table.create(Partition.drTest, id, record, now, `DR test ${id} exists`);
  await cp.audit.append(actor, {
    action: 'drtest.start',
    resource: `drtest/${id}`,
    details: { testType: input.testType, targetEnvironment: input.targetEnvironment, mode: record.mode },
  });
  // A type without a workflow is run by people: the entry waits for POST /api/dr/test/{id}/results.
  if (!workflow || !cp.workflows) return record;
  return startRunWorkflow(
    cp,
    item,
    workflow,
    {
      testId: id,
      runner: runnerOf(cp),
      testType: input.testType,
      targetEnvironment: input.targetEnvironment,
      notifyOnCompletion: input.notifyOnCompletion,
      ...(method ? { method } : {}),
      ...(input.testType === 'FAILOVER_TEST' && config.environments?.STAGING?.standby
        ? { standby: { type: config.environments.STAGING.standby.type } }
        : {}),
    },
    (reason) => ({
      ...record,
      status: 'FAILED',
      finishedAt: cp.now().toISOString(),
      results: { success: false, issues: [reason], participants: [] },
    }),
  );
}

export async function getDrTest(cp: ControlPlane, id: string): Promise<DrTestRecord> {
  const item = await cp.table.get<DrTestRecord>(Partition.drTest, id);
  if (!item) throw new NotFoundError(`DR test ${id} not found`);
  return item.data;
}

/** Changes a test's entry (the workflow's steps), re-reading on a concurrent change. */
export async function updateDrTest(
  cp: ControlPlane,
  id: string,
  change: (record: DrTestRecord) => DrTestRecord,
): Promise<DrTestRecord> {
  return updateItem<DrTestRecord>(cp, Partition.drTest, id, `DR test ${id}`, change);
}

/** When each type last passed, and whether it is overdue by the config's testFrequencyDays. */
export interface TestCompliance {
  readonly testFrequencyDays: number;
  readonly types: Readonly<
    Record<
      DrTestType,
      {
        readonly lastPassedAt?: string;
        readonly lastTestId?: string;
        readonly dueAt?: string;
        readonly overdue: boolean;
      }
    >
  >;
  /** True when any type is overdue. */
  readonly overdue: boolean;
}

/** GET /api/dr/test: newest first, paged, with the compliance of each type. */
export async function listDrTests(
  cp: ControlPlane,
  filter: { limit?: number; nextToken?: string; testType?: DrTestType; status?: DrTestStatus },
): Promise<{ items: DrTestRecord[]; nextToken?: string; compliance: TestCompliance }> {
  const all = await cp.table.queryAll<StoredItem<DrTestRecord>>(Partition.drTest);
  const newest = all.map((item) => item.data).sort((a, b) => (a.id < b.id ? 1 : -1));
  const matching = newest.filter(
    (test) =>
      (filter.testType === undefined || test.testType === filter.testType) &&
      (filter.status === undefined || test.status === filter.status),
  );
  const start = filter.nextToken === undefined ? 0 : await decodeOffset(cp, filter.nextToken);
  const limit = filter.limit ?? 50;
  const items = matching.slice(start, start + limit);
  const next = start + limit < matching.length ? await cp.table.sealToken(String(start + limit)) : undefined;
  return { items, ...(next ? { nextToken: next } : {}), compliance: await compliance(cp, newest) };
}

async function decodeOffset(cp: ControlPlane, token: string): Promise<number> {
  const value = Number(await cp.table.openToken(token));
  if (!Number.isInteger(value) || value < 0)
    throw ValidationError.forField('nextToken', 'is not a token this API gave');
  return value;
}

/**
 * A type is due `testFrequencyDays` after it last passed; one that never passed, that long after the DR
 * config was created (a new deployment is not overdue on its first day).
 */
async function compliance(cp: ControlPlane, newestFirst: readonly DrTestRecord[]): Promise<TestCompliance> {
  const config = await findConfigItem(cp);
  const frequency = config?.data.testFrequencyDays ?? 90;
  const since = config?.createdAt;
  const now = cp.now().getTime();
  const types = Object.fromEntries(
    DR_TEST_TYPES.map((type) => {
      const passed = newestFirst.find((test) => test.testType === type && test.status === 'PASSED');
      if (!passed?.finishedAt) {
        if (since === undefined) return [type, { overdue: true }];
        const due = Date.parse(since) + frequency * 86_400_000;
        return [type, { dueAt: new Date(due).toISOString(), overdue: due < now }];
      }
      const due = Date.parse(passed.finishedAt) + frequency * 86_400_000;
      return [
        type,
        {
          lastPassedAt: passed.finishedAt,
          lastTestId: passed.id,
          dueAt: new Date(due).toISOString(),
          overdue: due < now,
        },
      ];
    }),
  ) as TestCompliance['types'];
  return { testFrequencyDays: frequency, types, overdue: Object.values(types).some((type) => type.overdue) };
}

/**
 * POST /api/dr/test/{testId}/results: the results of a test run by hand (started with POST /api/dr/test).
 * A test its workflow runs, or one that already has results, is refused with 409.
 */
export async function recordDrTestResults(
  cp: ControlPlane,
  testId: string,
  input: DrTestResultsInput,
  actor: Actor,
): Promise<DrTestRecord> {
  const current = await cp.table.get<DrTestRecord>(Partition.drTest, testId);
  if (!current) throw new NotFoundError(`DR test ${testId} not found (start it with POST /api/dr/test)`);
  if (current.data.mode === 'workflow')
    throw new ConflictError(`DR test ${testId} is run by its workflow, which records its results`);
  if (current.data.results) throw new ConflictError(`DR test ${testId} already has results`);
  const config = await findConfig(cp);
  const now = cp.now();
  // Judged against the objectives in force when the test started (else the config's now)
  const rto = current.data.objectives?.rto ?? config?.rto;
  const rpo = current.data.objectives?.rpo ?? config?.rpo;
  const rtoViolated = rto !== undefined && input.actualRTO !== undefined && input.actualRTO > rto;
  const rpoViolated = rpo !== undefined && input.actualRPO !== undefined && input.actualRPO > rpo;
  const results: DrTestResults = {
    success: input.success,
    ...(input.actualRTO === undefined ? {} : { actualRTO: input.actualRTO }),
    ...(input.actualRPO === undefined ? {} : { actualRPO: input.actualRPO }),
    issues: [
      ...input.issues,
      ...(rtoViolated ? [`actual RTO ${input.actualRTO} h exceeds the objective of ${rto} h`] : []),
      ...(rpoViolated ? [`actual RPO ${input.actualRPO} h exceeds the objective of ${rpo} h`] : []),
    ],
    ...(input.notes === undefined ? {} : { notes: input.notes }),
    participants: input.participants,
    ...(rto !== undefined && input.actualRTO !== undefined ? { rtoViolated } : {}),
    ...(rpo !== undefined && input.actualRPO !== undefined ? { rpoViolated } : {}),
  };
  const record: DrTestRecord = {
    ...current.data,
    // A test that missed an objective did not pass, whatever the participants reported
    status: input.success && !rtoViolated && !rpoViolated ? 'PASSED' : 'FAILED',
    finishedAt: now.toISOString(),
    results,
  };
  await cp.table.replace(current, record, now);
  await cp.audit.append(actor, {
    action: 'drtest.results',
    resource: `drtest/${testId}`,
    details: { success: input.success, testType: record.testType },
  });
  return record;
}
