/**
 * Heavy steps on Fargate. A state machine runs a heavy step (a database or files restore, a verification, a
 * consistency check, the recovery-time test's phases) as an ECS Fargate task (`ecs:runTask.sync`) when the
 * deployment says so, or when the backup is large: see `statemachines/README.md`. Three states stand for the
 * one Lambda task:
 * - `fargate.stage` (Lambda) keeps the execution's state in the table and answers its key (a task's
 *   environment holds at most 8 KB, a state can be larger);
 * - the Fargate task runs the worker image with WORKFLOW_TASK (the step) and WORKFLOW_STATE (the key):
 *   `runStagedStep` runs the same step the Lambda would, and keeps its output, or its error, under the key;
 * - `fargate.result` (Lambda) answers that output where the step's ResultPath puts it, or throws the step's
 *   error under its own name, so the state machine's Catch paths are the same on both runners. A task that
 *   stopped without leaving either (killed, out of memory) is `FargateTaskLost`.
 */
import { randomUUID } from 'node:crypto';
import type { ControlPlane } from '../core/context.ts';
import { ConflictError } from '../core/errors.ts';
import { Partition } from '../core/store/table.ts';
import { group, required, WorkflowError, workflowState } from './steps.ts';

interface StagedStep {
  readonly state: Record<string, unknown>;
  readonly task?: string;
  readonly output?: unknown;
  readonly error?: { readonly name: string; readonly message: string };
  readonly finishedAt?: string;
}

export const fargateSteps = group(workflowState, {
  'fargate.stage': async (cp, _deps, state) => {
    const key = randomUUID();
    const { fargate: _previous, ...rest } = state;
    await cp.table.create<StagedStep>(Partition.step, key, { state: rest }, cp.now(), `step ${key} exists`);
    return { key };
  },
  'fargate.result': async (cp, _deps, state) => {
    const key = required(state.fargate?.key, 'fargate.key');
    const item = await cp.table.get<StagedStep>(Partition.step, key);
    if (!item) throw new WorkflowError('FargateTaskLost', `the staged step ${key} is gone`);
    await cp.table.delete(item);
    const { output, error, task } = item.data;
    if (error) throw new WorkflowError(error.name, error.message);
    if (item.data.finishedAt === undefined)
      throw new WorkflowError(
        'FargateTaskLost',
        `the Fargate task of ${task ?? 'the step'} stopped without a result (killed, or out of memory: its log has more)`,
      );
    return output ?? null;
  },
});

/**
 * What the Fargate task runs (and the local runtime in its place): the step `task` on the state staged
 * under `key`, its output or error kept under the same key. Fails only if the outcome cannot be kept.
 */
export async function runStagedStep(
  cp: ControlPlane,
  task: string,
  key: string,
  run: (task: string, state: Record<string, unknown>) => Promise<unknown>,
): Promise<void> {
  const staged = await cp.table.get<StagedStep>(Partition.step, key);
  if (!staged) throw new Error(`no staged step ${key}`);
  let outcome: Pick<StagedStep, 'output' | 'error'>;
  try {
    outcome = { output: (await run(task, staged.data.state)) ?? null };
  } catch (error) {
    const failure = error as Error;
    outcome = { error: { name: failure.name || 'Error', message: failure.message } };
    cp.logger.warn('fargate step failed', { task, error: failure.message });
  }
  try {
    await cp.table.replace(
      staged,
      { ...staged.data, task, ...outcome, finishedAt: cp.now().toISOString() },
      cp.now(),
    );
  } catch (error) {
    // Whoever waited for it gave up and removed it (a fan-out whose other part failed): nobody reads this
    // outcome, and failing here would only hide the run's real error behind this one.
    if (!(error instanceof ConflictError) || (await cp.table.get(Partition.step, key)) !== undefined)
      throw error;
    cp.logger.warn('fargate step outcome not kept: its staging was removed', { task, key });
  }
}
