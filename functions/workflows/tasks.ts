/**
 * The steps of the restore and DR-test state machines, by the names `statemachines/*.asl.json` give them.
 * Each Task state invokes the worker with `{action: "workflow", task, input}`; `input` is the execution's
 * state, parsed here with the schema of the step's workflow before the step runs, and what a step returns
 * lands where its ResultPath says. One module per workflow: restore.ts, backup-verification.ts,
 * restore-test.ts, recovery-time-test.ts, failover-test.ts; the RDS steps (rds.ts) and the steps every DR test
 * shares (steps.ts, with the state schema and the helpers).
 */
import { z } from 'zod';
import type { ControlPlane } from '../core/context.ts';
import { recordedStep, type RunOf } from './run-record.ts';
import { backupFanOut } from './backup-fanout.ts';
import { backupVerification } from './backup-verification.ts';
import { failoverSteps, standbySteps } from './failover-test.ts';
import { fargateSteps } from './fargate.ts';
import { failover } from './failover.ts';
import { hookSteps } from './hooks.ts';
import { rdsRestore, rdsSteps, rdsTest } from './rds.ts';
import { recoveryTimeTest } from './recovery-time-test.ts';
import { restoreTest } from './restore-test.ts';
import { restore } from './restore.ts';
import type { Step, WorkflowDeps } from './steps.ts';
import { testSteps, WorkflowError } from './steps.ts';
export async function runWorkflowTask(
  cp: ControlPlane,
  deps: WorkflowDeps,
  task: string,
  input: Record<string, unknown>,
): Promise<unknown> {
  const step = TASKS.get(task);
  if (!step) throw new WorkflowError('UnknownTask', `no workflow task ${task}`);
  const parsed = step.state.safeParse(input);
  if (!parsed.success)
    throw new WorkflowError(
      'InvalidState',
      `${task}: the execution's state is not what the workflow builds: ${z.prettifyError(parsed.error)}`,
    );
  const started = Date.now();
  const state = parsed.data as RunOf;
  try {
    return await recordedStep(
      cp,
      { restoreId: state.restoreId, testId: state.testId, failoverId: state.failoverId },
      task,
      async () => step.run(cp, deps, parsed.data),
    );
  } finally {
    cp.logger.info('workflow task', { task, ms: Date.now() - started });
  }
}

/** Every workflow's steps, by the name the state machines give them. */
const TASKS = registry([
  restore,
  rdsRestore,
  rdsTest,
  rdsSteps,
  backupVerification,
  restoreTest,
  recoveryTimeTest,
  failoverSteps,
  standbySteps,
  testSteps,
  fargateSteps,
  backupFanOut,
  hookSteps,
  failover,
]);

/** The steps of all groups by name; two groups naming the same step is a mistake, refused at load. */
export function registry(groups: readonly Record<string, Step>[]): Map<string, Step> {
  const steps = new Map<string, Step>();
  for (const group of groups)
    for (const [name, step] of Object.entries(group)) {
      if (steps.has(name)) throw new Error(`two workflow groups define the step ${name}`);
      steps.set(name, step);
    }
  return steps;
}

export const WORKFLOW_TASKS = [...TASKS.keys()];
