import type { ControlPlane } from '../core/context.ts';
import { progressOf, progressWriter } from '../core/progress.ts';
import type { RunProgress, StepRecord } from '../core/records.ts';
import { updateDrTest } from '../core/services/drtest-service.ts';
import { updateFailover } from '../core/services/failover-service.ts';
import { updateRestore } from '../core/services/restore-service.ts';
import type { ProgressListener } from '../engine/progress.ts';

/** The restore, DR test or failover an execution runs for, by its state (none: a backup's fan-out steps). */
export interface RunOf {
  readonly restoreId?: string | undefined;
  readonly testId?: string | undefined;
  readonly failoverId?: string | undefined;
}

/** The steps an entry keeps (a verification's Map runs one step per backup and target). */
const MAX_STEPS = 200;

type Change = (record: { progress?: RunProgress; steps?: readonly StepRecord[] }) => {
  progress?: RunProgress;
  steps?: readonly StepRecord[];
};

async function update(cp: ControlPlane, run: RunOf, change: Change): Promise<void> {
  if (run.restoreId !== undefined)
    await updateRestore(cp, run.restoreId, (record) => ({ ...record, ...change(record) }));
  else if (run.testId !== undefined)
    await updateDrTest(cp, run.testId, (record) => ({ ...record, ...change(record) }));
  else if (run.failoverId !== undefined)
    await updateFailover(cp, run.failoverId, (record) => ({ ...record, ...change(record) }));
}

/**
 * Progress of a restore or test's long step, written into its entry every few seconds (the API's GET and the
 * dashboard's bars). `flush` before the step returns: the next step's writes then never race this one's.
 */
export function runProgress(
  cp: ControlPlane,
  run: RunOf,
): { onProgress: ProgressListener; flush(): Promise<void> } {
  const started = Date.now();
  const writer = progressWriter(
    (progress) => update(cp, run, () => ({ progress })),
    (error) => cp.logger.warn('progress not recorded', { ...run, error: (error as Error).message }),
  );
  return {
    onProgress: (event) => writer.report(progressOf(event, started, Date.now())),
    flush: () => writer.flush(),
  };
}

/**
 * Runs one workflow step of a restore or test and records it in the entry (task, status, start, seconds,
 * error), so the API shows the workflow step by step. Recording never fails the step: a write that cannot be
 * made (a busy entry) is logged.
 */
export async function recordedStep<T>(
  cp: ControlPlane,
  run: RunOf,
  task: string,
  body: () => Promise<T>,
): Promise<T> {
  if (run.restoreId === undefined && run.testId === undefined && run.failoverId === undefined) return body();
  const startedAt = cp.now().toISOString();
  const started = Date.now();
  const write = (step: StepRecord) =>
    update(cp, run, (record) => {
      const others = (record.steps ?? []).filter(
        (each) => each.task !== task || each.startedAt !== startedAt,
      );
      return { steps: [...others, step].slice(-MAX_STEPS) };
    }).catch((error: unknown) =>
      cp.logger.warn('workflow step not recorded', { ...run, task, error: (error as Error).message }),
    );
  await write({ task, status: 'RUNNING', startedAt });
  const ended = (status: StepRecord['status'], error?: string): StepRecord => ({
    task,
    status,
    startedAt,
    finishedAt: cp.now().toISOString(),
    seconds: (Date.now() - started) / 1000,
    ...(error === undefined ? {} : { error }),
  });
  try {
    const result = await body();
    await write(ended('SUCCEEDED'));
    return result;
  } catch (error) {
    await write(ended('FAILED', error instanceof Error ? error.message : String(error)));
    throw error;
  }
}
