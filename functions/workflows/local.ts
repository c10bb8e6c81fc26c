import { StateMachine } from 'aws-local-stepfunctions';
import type { ControlPlane, WorkflowLauncher, WorkflowName } from '../core/context.ts';
import { z } from 'zod';
import { definition, fargateStates, taskStates, waitStates, type Substitutions } from './definitions.ts';
import { runStagedStep } from './fargate.ts';
import type { WorkflowDeps } from './steps.ts';
import { runWorkflowTask } from './tasks.ts';

/** The worker's ARN in the definitions the local runtime runs (any well-formed ARN would do). */
export const LOCAL_WORKER_ARN = 'arn:aws:lambda:local:000000000000:function:dr-worker';

/** What the definitions' placeholders stand for locally: heavy steps' Fargate tasks run in this process. */
export const LOCAL_SUBSTITUTIONS: Substitutions = {
  WorkerFunctionArn: LOCAL_WORKER_ARN,
  WorkerCluster: 'arn:aws:ecs:local:000000000000:cluster/dr-local',
  WorkerTaskDefinition: 'arn:aws:ecs:local:000000000000:task-definition/dr-worker:1',
  WorkerSubnets: 'subnet-local',
  WorkerSecurityGroups: 'sg-local',
  WorkerPublicIp: 'DISABLED',
};

/** The step and staged state a heavy step's RunTask parameters give its container (fargate.ts). */
const runTaskParameters = z.object({
  Overrides: z.object({
    ContainerOverrides: z
      .array(z.object({ Environment: z.array(z.object({ Name: z.string(), Value: z.string() })) }))
      .length(1),
  }),
});

export interface LocalWorkflowOptions extends WorkflowDeps {
  /** Keeps track of running executions (the runtime waits for them on idle and close). */
  readonly track: (name: string, work: () => Promise<unknown>) => void;
  /**
   * Wraps steps by task name (tests: tamper with a restore between two steps, slow a step down). The
   * wrapper gets the real step to call.
   */
  /** Every Wait state waits this long instead (tests). */
  readonly waitMs?: number;
  readonly taskWrappers?: Readonly<
    Record<string, (input: Record<string, unknown>, real: () => Promise<unknown>) => Promise<unknown>>
  >;
}

/**
 * Runs the workflows in this process with a local interpreter of the Amazon States Language
 * (aws-local-stepfunctions): the same definition files Step Functions runs, every Task state that invokes
 * the worker mapped to the same step functions the worker Lambda runs.
 */
export function localWorkflows(cp: ControlPlane, options: LocalWorkflowOptions): WorkflowLauncher {
  const machines = new Map<
    WorkflowName,
    { machine: StateMachine; tasks: string[]; fargate: string[]; waits: string[] }
  >();
  const machineOf = (name: WorkflowName) => {
    let found = machines.get(name);
    if (!found) {
      const parsed = definition(name, LOCAL_SUBSTITUTIONS);
      found = {
        machine: new StateMachine(parsed as never),
        tasks: taskStates(parsed, LOCAL_WORKER_ARN),
        fargate: fargateStates(parsed),
        waits: waitStates(parsed),
      };
      machines.set(name, found);
    }
    return found;
  };
  const step = async (payload: { task: string; input: Record<string, unknown> }) => {
    const real = () => runWorkflowTask(cp, options, payload.task, payload.input);
    const wrapper = options.taskWrappers?.[payload.task];
    return wrapper ? wrapper(payload.input, real) : real();
  };
  // A heavy step's Fargate task: the same staged step the container runs (runStagedStep), in this process.
  const runTask = async (parameters: unknown) => {
    const environment = runTaskParameters.parse(parameters).Overrides.ContainerOverrides[0]!.Environment;
    const value = (name: string) => environment.find((variable) => variable.Name === name)?.Value ?? '';
    await runStagedStep(cp, value('WORKFLOW_TASK'), value('WORKFLOW_STATE'), (task, input) =>
      step({ task, input }),
    );
    return { LastStatus: 'STOPPED', Containers: [{ ExitCode: 0 }] };
  };
  return {
    start: (workflow, name, input) => {
      const { machine, tasks, fargate, waits } = machineOf(workflow);
      const executionArn = `arn:aws:states:local:000000000000:execution:dr-${workflow}:${name}`;
      const handlers = {
        ...Object.fromEntries(tasks.map((task) => [task, step])),
        ...Object.fromEntries(fargate.map((task) => [task, runTask])),
      };
      options.track(`workflow ${workflow} ${name}`, async () => {
        const execution = machine.run(input as never, {
          overrides: {
            taskResourceLocalHandlers: handlers as never,
            ...(options.waitMs === undefined
              ? {}
              : { waitTimeOverrides: Object.fromEntries(waits.map((wait) => [wait, options.waitMs!])) }),
          },
          context: {
            Execution: { Id: executionArn, Name: name, Input: input, StartTime: cp.now().toISOString() },
          } as never,
        });
        try {
          await execution.result;
          cp.logger.info('workflow finished', { workflow, name });
        } catch (error) {
          // A failed execution is the workflow's answer: its steps recorded why in the entry.
          cp.logger.warn('workflow failed', { workflow, name, error: (error as Error).message });
        }
      });
      return Promise.resolve({ executionArn });
    },
  };
}
