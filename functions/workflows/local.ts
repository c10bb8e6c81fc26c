import { StateMachine } from 'aws-local-stepfunctions';
import type { ControlPlane, WorkflowLauncher, WorkflowName } from '../core/context.ts';
import { definition, taskStates, waitStates } from './definitions.ts';
import type { WorkflowDeps } from './steps.ts';
import { runWorkflowTask } from './tasks.ts';

/** The worker's ARN in the definitions the local runtime runs (any well-formed ARN would do). */
export const LOCAL_WORKER_ARN = 'arn:aws:lambda:local:000000000000:function:dr-worker';

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
  const machines = new Map<WorkflowName, { machine: StateMachine; tasks: string[]; waits: string[] }>();
  const machineOf = (name: WorkflowName) => {
    let found = machines.get(name);
    if (!found) {
      const parsed = definition(name, { WorkerFunctionArn: LOCAL_WORKER_ARN });
      found = {
        machine: new StateMachine(parsed as never),
        tasks: taskStates(parsed, LOCAL_WORKER_ARN),
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
  return {
    start: (workflow, name, input) => {
      const { machine, tasks, waits } = machineOf(workflow);
      const executionArn = `arn:aws:states:local:000000000000:execution:dr-${workflow}:${name}`;
      const handlers = Object.fromEntries(tasks.map((task) => [task, step]));
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
