import { z } from 'zod';
import { randomBytes } from 'node:crypto';
import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { ConfigurationError } from '../core/errors.ts';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import type { RunLauncher } from '../core/ports.ts';

/**
 * Starts the backup worker on AWS: an asynchronous invocation of the worker Lambda (the default: backups that
 * finish within Lambda's 15 minutes), or the same container image as an ECS Fargate task (`runner: fargate`,
 * for databases whose backup takes longer), started by the worker-task state machine (`ecs:runTask.sync`): the
 * API and the dispatcher start executions, only that machine's role may run the task. Retention always runs
 * in the worker Lambda (it only lists, deletes and collects).
 */
export interface AwsLauncherOptions {
  readonly workerFunction: string;
  readonly runner: 'lambda' | 'fargate';
  /** The state machine that runs the worker task with `{variable, value}` in its environment. */
  readonly taskMachine?: string;
  /** The backup-fanout state machine: a FULL's tables read by several Fargate tasks. */
  readonly fanOutMachine?: string;
  readonly lambda?: LambdaClient;
  readonly sfn?: SFNClient;
}

/**
 * What the worker is asked to do, checked when it arrives: anything else (an unknown action, a missing id)
 * is refused, never taken for a backup.
 */
export const workerEvent = z.discriminatedUnion('action', [
  z.strictObject({ action: z.literal('backup'), backupId: z.string().min(1) }),
  z.strictObject({ action: z.literal('export'), backupId: z.string().min(1) }),
  z.strictObject({ action: z.literal('retention') }),
  /** Measure the source's change stream (the worker reaches the database; the API and dispatcher may not). */
  z.strictObject({ action: z.literal('watch') }),
  /** A step of a restore or DR-test state machine (Step Functions invokes the worker directly). */
  z.strictObject({
    action: z.literal('workflow'),
    task: z.string().min(1),
    input: z.record(z.string(), z.unknown()),
  }),
]);
export type WorkerEvent = z.infer<typeof workerEvent>;

export function awsLauncher(options: AwsLauncherOptions): RunLauncher {
  const lambda = options.lambda ?? new LambdaClient({});
  const sfn = options.sfn ?? new SFNClient({});
  const invoke = async (event: WorkerEvent) => {
    const result = await lambda.send(
      new InvokeCommand({
        FunctionName: options.workerFunction,
        InvocationType: 'Event',
        Payload: Buffer.from(JSON.stringify(event)),
      }),
    );
    if (result.StatusCode !== 202) throw new Error(`the worker invocation answered ${result.StatusCode}`);
  };
  /** The worker image as a Fargate task, told what to do by one environment variable. */
  const runTask = async (variable: 'BACKUP_ID' | 'EXPORT_ID', backupId: string) => {
    await sfn.send(
      new StartExecutionCommand({
        stateMachineArn: options.taskMachine,
        // Unique for 90 days per machine: an export of one backup may be asked for again
        name: `${variable === 'BACKUP_ID' ? 'backup' : 'export'}-${backupId}-${randomBytes(3).toString('hex')}`,
        input: JSON.stringify({ variable, value: backupId }),
      }),
    );
  };
  const fargate = options.runner === 'fargate' && options.taskMachine !== undefined;
  /** The fan-out: its coordinator and parts are Fargate tasks of the backup-fanout machine. */
  const fanOut = async (backupId: string, workers: number) => {
    await sfn.send(
      new StartExecutionCommand({
        stateMachineArn: options.fanOutMachine,
        name: `backup-${backupId}`,
        input: JSON.stringify({ backupId, workers }),
      }),
    );
  };
  return {
    launch: (backupId, launch) =>
      (launch?.workers ?? 1) > 1 && options.fanOutMachine !== undefined
        ? fanOut(backupId, launch!.workers!)
        : fargate
          ? runTask('BACKUP_ID', backupId)
          : invoke({ action: 'backup', backupId }),
    // An export reads the whole backup like a restore: it runs where the backups run.
    export: (backupId) => (fargate ? runTask('EXPORT_ID', backupId) : invoke({ action: 'export', backupId })),
    retention: () => invoke({ action: 'retention' }),
    watch: () => invoke({ action: 'watch' }),
  };
}

/** The launcher from the environment the CDK stack sets (API and dispatcher functions). */
export function awsLauncherFromEnv(env: NodeJS.ProcessEnv = process.env): RunLauncher | undefined {
  const workerFunction = env.WORKER_FUNCTION;
  if (!workerFunction) return undefined;
  const runner = env.WORKER_RUNNER === 'fargate' ? 'fargate' : 'lambda';
  if (runner === 'fargate' && !env.WORKER_TASK_MACHINE)
    throw new ConfigurationError(
      'WORKER_RUNNER=fargate needs WORKER_TASK_MACHINE (the worker-task state machine)',
    );
  return awsLauncher({
    workerFunction,
    runner,
    ...(runner === 'fargate' ? { taskMachine: env.WORKER_TASK_MACHINE } : {}),
    ...(env.BACKUP_FANOUT_MACHINE ? { fanOutMachine: env.BACKUP_FANOUT_MACHINE } : {}),
  });
}
