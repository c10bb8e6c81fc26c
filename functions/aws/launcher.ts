import { z } from 'zod';
import { ECSClient, RunTaskCommand } from '@aws-sdk/client-ecs';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import type { RunLauncher } from '../core/ports.ts';

/**
 * Starts the backup worker on AWS: an asynchronous invocation of the worker Lambda (the default: backups that
 * finish within Lambda's 15 minutes), or the same container image as an ECS Fargate task (`runner: fargate`,
 * for databases whose backup takes longer). Retention always runs in the worker Lambda (it only lists,
 * deletes and collects).
 */
export interface AwsLauncherOptions {
  readonly workerFunction: string;
  readonly runner: 'lambda' | 'fargate';
  readonly fargate?: {
    readonly cluster: string;
    readonly taskDefinition: string;
    readonly containerName: string;
    readonly subnets: readonly string[];
    readonly securityGroups: readonly string[];
    readonly assignPublicIp: boolean;
  };
  readonly lambda?: LambdaClient;
  readonly ecs?: ECSClient;
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
  const ecs = options.ecs ?? new ECSClient({});
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
    const fargate = options.fargate!;
    const result = await ecs.send(
      new RunTaskCommand({
        cluster: fargate.cluster,
        taskDefinition: fargate.taskDefinition,
        launchType: 'FARGATE',
        count: 1,
        networkConfiguration: {
          awsvpcConfiguration: {
            subnets: [...fargate.subnets],
            securityGroups: [...fargate.securityGroups],
            assignPublicIp: fargate.assignPublicIp ? 'ENABLED' : 'DISABLED',
          },
        },
        overrides: {
          containerOverrides: [
            { name: fargate.containerName, environment: [{ name: variable, value: backupId }] },
          ],
        },
      }),
    );
    const failure = result.failures?.[0];
    if (failure || !result.tasks?.length)
      throw new Error(
        `the Fargate task did not start: ${failure?.reason ?? 'no task'} ${failure?.detail ?? ''}`.trim(),
      );
  };
  const fargate = options.runner === 'fargate' && options.fargate !== undefined;
  return {
    launch: (backupId) => (fargate ? runTask('BACKUP_ID', backupId) : invoke({ action: 'backup', backupId })),
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
  const list = (value: string | undefined) => (value ?? '').split(',').filter((item) => item !== '');
  return awsLauncher({
    workerFunction,
    runner,
    ...(runner === 'fargate'
      ? {
          fargate: {
            cluster: env.WORKER_CLUSTER ?? '',
            taskDefinition: env.WORKER_TASK_DEFINITION ?? '',
            containerName: env.WORKER_CONTAINER ?? 'worker',
            subnets: list(env.WORKER_SUBNETS),
            securityGroups: list(env.WORKER_SECURITY_GROUPS),
            assignPublicIp: env.WORKER_PUBLIC_IP === 'true',
          },
        }
      : {}),
  });
}
