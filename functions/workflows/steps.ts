import type { ECSClient } from '@aws-sdk/client-ecs';
import type { LambdaClient } from '@aws-sdk/client-lambda';
import type { RDSClient } from '@aws-sdk/client-rds';
import type { Route53Client } from '@aws-sdk/client-route-53';
import type { Manifest } from '../engine/manifest.ts';
import { PassThrough } from 'node:stream';
import { z } from 'zod';
import type { BackupSteps } from './backup-steps.ts';
import type { ControlPlane } from '../core/context.ts';
import type { BackupRecord, HookRun } from '../core/records.ts';
import { runAlertChecks } from '../core/services/alert-service.ts';
import { environmentConnection, findConfig } from '../core/services/config-service.ts';
import {
  getDrTest,
  updateDrTest,
  type DrTestRecord,
  type DrTestResults,
} from '../core/services/drtest-service.ts';
import { type RestorePlan } from '../core/services/restore-service.ts';
import { Partition } from '../core/store/table.ts';
import type { MasterKey } from '../engine/crypto.ts';
import { exportArchive } from '../engine/export.ts';
import {
  connect,
  connectionFrom,
  createDatabase,
  tocOf,
  withDatabase,
  type DatabaseConnection,
} from '../engine/postgres.ts';
import { type DatabaseRestoreResult } from '../engine/restore.ts';
import { mailBody, type MailMessage } from '../core/mail.ts';

/**
 * What every workflow shares: its dependencies, the state schema, the step registry's types, and the steps
 * every DR test ends with. Steps record what they learn in the restore's or test's entry as they go, so the
 * API shows progress and a failure leaves its reason. A step that fails throws an error whose name the state
 * machine can catch (`DestinationNotEmpty`, `NothingToTest`, `InvalidState`…).
 */
export interface WorkflowDeps {
  readonly masterKey: () => Promise<MasterKey>;
  /** The Route 53 client (tests: one pointed at a local Route 53 API server). */
  readonly route53?: () => Route53Client;
  /** The RDS client for a region (tests: one pointed at a local RDS-API server). */
  readonly rds?: (region: string | undefined) => RDSClient;
  /** Sends the completion email of a test (absent: the notification is recorded as not sent). */
  readonly notify?: (message: MailMessage) => Promise<void>;
  /**
   * Where a recovery-time test restores its scratch files (DR_SCRATCH_DIR; on AWS a mounted EFS access point,
   * never the Lambda's small /tmp). Default: the system's temporary directory.
   */
  readonly scratchDir?: string;
  /** The Lambda client for a region (hooks; tests: a mocked one). */
  readonly lambda?: (region: string | undefined) => LambdaClient;
  /** The ECS client for a region (hooks; tests: one pointed at moto). */
  readonly ecs?: (region: string | undefined) => ECSClient;
  /** How long polling loops inside a step wait between looks (default 5 s; tests: less). */
  readonly pollMs?: number;
  /** The backup worker's coordinator and parts of a fan-out FULL (backup-fanout.ts, backup-steps.ts). */
  readonly backups?: BackupSteps;
}

/**
 * The execution's state as the definitions build it: each step's result under its ResultPath. Parsed at the
 * task boundary (`runWorkflowTask`): a state that is not what the definitions build is refused by name,
 * not read as if it were.
 */
const stepError = z.looseObject({ Error: z.string().optional(), Cause: z.string().optional() });
const verifyItem = z.looseObject({ scheduleId: z.string(), backupId: z.string(), targetId: z.string() });
const verifyResult = verifyItem.extend({
  ok: z.boolean(),
  bytes: z.number(),
  problems: z.array(z.string()),
});
/** A Step Functions error as a Catch puts it under ResultPath. */
export type StepError = z.infer<typeof stepError>;
export type VerifyItem = z.infer<typeof verifyItem>;
export type VerifyResult = z.infer<typeof verifyResult>;
const count = z.number().optional();
const stamp = z.string().optional();

/**
 * A new RDS instance (or Aurora cluster with one instance, `<target>-1`) the workflow makes: from the
 * source's point-in-time restore (restores), or from its newest snapshot (restore and recovery-time tests).
 */
const rdsPlan = z.looseObject({
  region: z.string().optional(),
  sourceInstance: z.string().optional(),
  sourceCluster: z.string().optional(),
  target: z.string(),
  restoreTime: stamp,
  latestRestorableTime: stamp,
  snapshot: z.string().optional(),
  snapshotTime: stamp,
});
export type RdsPlan = z.infer<typeof rdsPlan>;

/** The plan a restore or a test made (the restore's plan is a RestorePlan; a test's adds what it tests). */
const plan = z
  .looseObject({
    rds: rdsPlan.optional(),
    actualRPO: count,
    items: z.array(verifyItem).optional(),
  })
  .transform((value) => value as Omit<Partial<RestorePlan>, 'rds'> & typeof value);

export const workflowState = z.looseObject({
  restoreId: z.string().optional(),
  testId: z.string().optional(),
  request: z.looseObject({ dryRun: z.boolean().optional() }).optional(),
  plan: plan.optional(),
  database: z
    .looseObject({
      skipped: z.boolean().optional(),
      tables: count,
      rows: count,
      bytes: count,
      consistent: z.boolean().optional(),
    })
    .transform((value) => value as typeof value & { changes?: DatabaseRestoreResult['changes'] })
    .optional(),
  files: z
    .looseObject({
      skipped: z.boolean().optional(),
      files: count,
      bytes: count,
      seconds: count,
      verifySeconds: count,
      issues: z.array(z.string()).optional(),
    })
    .optional(),
  scratch: z.looseObject({ database: z.string() }).optional(),
  restore: z
    .looseObject({ usableAt: stamp, seconds: count, baseMismatch: z.array(z.string()).optional() })
    .optional(),
  fetch: z.looseObject({ seconds: count }).optional(),
  switch: z
    .looseObject({ switched: z.boolean().optional(), seconds: count, note: z.string().optional() })
    .optional(),
  failback: z.looseObject({ seconds: count, restored: z.boolean().optional() }).optional(),
  /** FAILOVER_TEST with an RDS standby (the execution's input names its type). */
  standby: z.looseObject({ type: z.string() }).optional(),
  promote: z.looseObject({ startedAt: stamp }).optional(),
  promoted: z
    .looseObject({
      done: z.boolean().optional(),
      polls: count,
      endpoint: z.string().optional(),
      checkedAt: stamp,
    })
    .optional(),
  standbyRestore: z.looseObject({ startedAt: stamp, skipped: z.boolean().optional() }).optional(),
  standbyRestored: z.looseObject({ done: z.boolean().optional(), polls: count, checkedAt: stamp }).optional(),
  rds: z
    .looseObject({ identifier: z.string(), cluster: z.boolean().optional(), startedAt: stamp })
    .optional(),
  /** A heavy step handed to a Fargate task: where its state and outcome are kept (fargate.ts). */
  fargate: z.looseObject({ key: z.string() }).optional(),
  rdsStatus: z
    .looseObject({
      polls: count,
      endpoint: z.string().optional(),
      available: z.boolean().optional(),
      checkedAt: stamp,
    })
    .optional(),
  health: z
    .looseObject({
      usableAt: stamp,
      seconds: count,
      ok: z.boolean().optional(),
      issues: z.array(z.string()).optional(),
    })
    .optional(),
  check: z
    .looseObject({ ok: z.boolean().optional(), issues: z.array(z.string()).optional(), seconds: count })
    .optional(),
  item: verifyItem.optional(),
  verified: z
    .array(z.looseObject({ item: verifyItem, result: verifyResult.optional(), error: stepError.optional() }))
    .optional(),
  error: stepError.optional(),
  cleanupError: stepError.optional(),
  /** The start hooks' step failed as a whole (caught: the run is still recorded). */
  hookError: stepError.optional(),
  rdsCleanupError: stepError.optional(),
});
/** The state of any execution (the RDS steps serve restores and tests alike). */
export type State = z.infer<typeof workflowState>;
/** A restore's execution: its catalog entry named. */
export const restoreState = workflowState.extend({ restoreId: z.string() });
export type RestoreState = z.infer<typeof restoreState>;
/** A DR test's execution: its record named. */
export const testState = workflowState.extend({ testId: z.string() });
export type TestState = z.infer<typeof testState>;

export type Task<S = State> = (cp: ControlPlane, deps: WorkflowDeps, state: S) => Promise<unknown>;

/** A step as the registry holds it: the state it is given, parsed before it runs. */
export interface Step {
  readonly state: z.ZodType;
  run(cp: ControlPlane, deps: WorkflowDeps, state: unknown): Promise<unknown>;
}

/** A workflow's steps, each given the state `state` parses (the registry parses before it runs one). */
export function group<S>(state: z.ZodType<S>, tasks: Record<string, Task<S>>): Record<string, Step> {
  return Object.fromEntries(
    Object.entries(tasks).map(([name, run]) => [
      name,
      { state, run: (cp, deps, parsed) => run(cp, deps, parsed as S) },
    ]),
  );
}

export class WorkflowError extends Error {
  constructor(name: string, message: string) {
    super(message);
    this.name = name;
  }
}

/**
 * The test's environment server, connected to its maintenance database (where scratch databases are made):
 * the temporary RDS instance once it answers (with the source's credentials, which its snapshot holds), else
 * the target environment's server.
 */
export async function serverOf(
  cp: ControlPlane,
  test: DrTestRecord,
  state?: State,
): Promise<DatabaseConnection> {
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
  issues.push(...(hookIssues(test.hooks, state.hookError).issues ?? []));
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

export async function databaseExists(connection: DatabaseConnection): Promise<boolean> {
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

export function databaseNameOf(connection: DatabaseConnection): string {
  return decodeURIComponent(new URL(connection.url).pathname.slice(1));
}

/** A Step Functions error (`{Error, Cause}`; on AWS the Cause is the Lambda's JSON error) as one line. */
export function errorMessage(failure: StepError | undefined): string {
  let cause = failure?.Cause ?? '';
  try {
    const parsed = JSON.parse(cause) as { errorMessage?: string };
    if (parsed.errorMessage) cause = parsed.errorMessage;
  } catch {
    // a plain message
  }
  return `${failure?.Error ?? 'Error'}: ${cause}`.trim();
}

export function round(hours: number): number {
  return Math.round(hours * 10_000) / 10_000;
}

export const testSteps = group(testState, {
  'test.scratch.create': async (cp, _deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const server = await serverOf(cp, test, state);
    const name = `dr_test_${test.id.toLowerCase().replace(/[^a-z0-9]/g, '_')}`;
    // Recorded before it exists: a cleanup after any failure knows what to drop.
    await updateDrTest(cp, test.id, (record) => ({ ...record, scratchDatabase: name }));
    await createDatabase(server, name);
    return { database: name };
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
});

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

/** A connection URL moved to another `host:port`. */
export function atEndpoint(connectionUrl: string, endpoint: string): string {
  const url = new URL(connectionUrl);
  const colon = endpoint.lastIndexOf(':');
  url.hostname = endpoint.slice(0, colon);
  url.port = endpoint.slice(colon + 1);
  return url.toString();
}

/** A part of the state an earlier step puts there: refused by name when it is missing, never assumed. */
export function required<T>(value: T | undefined, what: string): T {
  if (value === undefined)
    throw new WorkflowError('InvalidState', `${what} is missing from the execution's state`);
  return value;
}

/**
 * The database archive of a backup as `pg_restore --list` sees it. pg_restore reads the header and TOC and
 * stops reading: the rest of the archive meets a closed pipe, which is expected (the data itself is what
 * `verify` authenticates).
 */
export async function archiveListing(
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

/** A run's failed start hooks as its issues (the application may not be running). */
export function hookIssues(hooks: HookRun | undefined, hookError?: StepError): { issues?: string[] } {
  const issues = (hooks?.start ?? [])
    .filter((outcome) => !outcome.ok)
    .map((outcome) => `the start hook ${outcome.name} failed: ${outcome.error}`);
  // The start step itself failed: the hooks stop ran for may not have been started.
  if (hookError && (hooks?.stop.length ?? 0) > 0)
    issues.push(`the start hooks did not run: ${errorMessage(hookError)}; start the application by hand`);
  return issues.length === 0 ? {} : { issues };
}
