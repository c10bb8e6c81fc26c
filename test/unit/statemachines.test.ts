import aslValidator from 'asl-validator';
import { describe, expect, it } from 'vitest';
import {
  definition,
  fargateStates,
  rawDefinition,
  RUN_TASK,
  taskStates,
  WORKFLOW_NAMES,
  type Substitutions,
} from '../../functions/workflows/definitions.ts';
import { WORKFLOW_TASKS } from '../../functions/workflows/tasks.ts';
import type { WorkflowName } from '../../functions/core/context.ts';

/** The definitions in statemachines/: what Step Functions and the local interpreter both run. */
const ARN = 'arn:aws:lambda:us-east-1:123456789012:function:dr-worker';
const SUBSTITUTIONS: Substitutions = {
  WorkerFunctionArn: ARN,
  WorkerCluster: 'arn:aws:ecs:us-east-1:123456789012:cluster/dr',
  WorkerTaskDefinition: 'arn:aws:ecs:us-east-1:123456789012:task-definition/dr-worker:3',
  WorkerSubnets: 'subnet-a,subnet-b',
  WorkerSecurityGroups: 'sg-1',
  WorkerPublicIp: 'DISABLED',
};

/** The heavy steps each workflow can run on Fargate: the state's name, the step, where the size is read. */
const HEAVY: Record<string, Record<string, [task: string, bytes: string]>> = {
  restore: {
    RestoreDatabase: ['restore.database', '$.plan.bytes'],
    RestoreFiles: ['restore.files', '$.plan.bytes'],
  },
  'backup-verification': { Verify: ['test.verify', '$.item.bytes'] },
  'restore-test': {
    Restore: ['test.restore.run', '$.plan.bytes'],
    CheckConsistency: ['test.restore.check', '$.plan.bytes'],
  },
  'recovery-time-test': {
    Fetch: ['test.recovery.fetch', '$.plan.bytes'],
    RestoreDatabase: ['test.restore.run', '$.plan.bytes'],
    RestoreFiles: ['test.recovery.files', '$.plan.bytes'],
    Verify: ['test.restore.check', '$.plan.bytes'],
  },
  'failover-test': {
    BringUpStandby: ['test.restore.run', '$.plan.bytes'],
    CheckData: ['test.restore.check', '$.plan.bytes'],
  },
  failover: { Promote: ['failover.promote', '$.check.bytes'] },
};

type State = Record<string, any>;

/** The parameters of a step's Fargate task: the worker image told the step and where its state is staged. */
const runTask = (task: string, key: string) => ({
  Cluster: SUBSTITUTIONS.WorkerCluster,
  TaskDefinition: SUBSTITUTIONS.WorkerTaskDefinition,
  LaunchType: 'FARGATE',
  NetworkConfiguration: { AwsvpcConfiguration: { AssignPublicIp: 'DISABLED' } },
  Overrides: {
    ContainerOverrides: [
      {
        Name: 'worker',
        Environment: [
          { Name: 'WORKFLOW_TASK', Value: task },
          { Name: 'WORKFLOW_STATE', 'Value.$': key },
        ],
      },
    ],
  },
});
function allStates(node: State): [string, State][] {
  const found: [string, State][] = [];
  for (const [name, state] of Object.entries(node.States as Record<string, State>)) {
    found.push([name, state]);
    if (state.ItemProcessor) found.push(...allStates(state.ItemProcessor));
    for (const branch of state.Branches ?? []) found.push(...allStates(branch));
  }
  return found;
}

it('defines the DR workflows and the fan-out FULL, nothing else', () => {
  expect([...WORKFLOW_NAMES].sort()).toEqual([...Object.keys(HEAVY), 'backup-fanout'].sort());
});

describe.each(Object.keys(HEAVY))('statemachines/%s.asl.json', (name) => {
  const parsed = definition(name as WorkflowName, SUBSTITUTIONS);

  it('is valid Amazon States Language (asl-validator), with only the worker and its task as placeholders', () => {
    const result = aslValidator(parsed);
    expect(result.errorsText('\n')).toBe('');
    expect(result.isValid).toBe(true);
    expect(
      [...rawDefinition(name as WorkflowName).matchAll(/\$\{(\w+)\}/g)].map((match) => match[1]),
    ).toSatisfy((keys: string[]) => keys.every((key) => key in SUBSTITUTIONS));
  });

  it('invokes only worker steps that exist, each with a timeout, and has a time limit of its own', () => {
    expect(parsed.TimeoutSeconds).toBeGreaterThan(0);
    const all = allStates(parsed).filter(([, state]) => state.Type === 'Task');
    const tasks = all.filter(([, state]) => state.Resource !== RUN_TASK);
    expect(tasks.length).toBeGreaterThan(0);
    expect(taskStates(parsed, ARN).sort()).toEqual(tasks.map(([task]) => task).sort());
    expect(fargateStates(parsed).length + tasks.length).toBe(all.length);
    for (const [task, state] of tasks) {
      expect(state.Resource, task).toBe(ARN);
      expect(WORKFLOW_TASKS, task).toContain(state.Parameters.task);
      expect(state.Parameters.action, task).toBe('workflow');
      expect(state.TimeoutSeconds, task).toBeGreaterThan(0);
      expect(state.TimeoutSeconds, task).toBeLessThanOrEqual(900);
    }
  });

  it('runs each heavy step in the worker Lambda or, as the runner says, as a Fargate task with the same Catch', () => {
    const states = Object.fromEntries(allStates(parsed));
    const heavy = HEAVY[name]!;
    expect(fargateStates(parsed).sort()).toEqual(
      Object.keys(heavy)
        .map((state) => `${state}OnFargate`)
        .sort(),
    );
    for (const [state, [task, bytes]] of Object.entries(heavy)) {
      const choice = states[state]!;
      const [lambda, stage, fargate, result] = ['OnLambda', 'Stage', 'OnFargate', 'Result'].map(
        (suffix) => states[`${state}${suffix}`]!,
      );
      // Without a runner (or with lambda), and in auto mode below the threshold: the Lambda step as before.
      expect(choice.Type).toBe('Choice');
      expect(choice.Default).toBe(`${state}OnLambda`);
      expect(choice.Choices).toEqual([
        { Variable: '$.runner.heavy', IsPresent: false, Next: `${state}OnLambda` },
        { Variable: '$.runner.heavy', StringEquals: 'fargate', Next: `${state}Stage` },
        { Variable: bytes, IsPresent: false, Next: `${state}OnLambda` },
        {
          And: [
            { Variable: '$.runner.heavy', StringEquals: 'auto' },
            { Variable: bytes, NumericGreaterThanEqualsPath: '$.runner.fromBytes' },
          ],
          Next: `${state}Stage`,
        },
      ]);
      expect(lambda!.Parameters.task).toBe(task);
      expect(stage!.Parameters.task).toBe('fargate.stage');
      expect(stage!.Next).toBe(`${state}OnFargate`);
      expect(fargate!.Parameters).toMatchObject(runTask(task, '$.fargate.key'));
      expect(fargate!.Next).toBe(`${state}Result`);
      expect(result!.Parameters.task).toBe('fargate.result');
      // The result lands where the Lambda step's would, and the way on is the same
      expect(result!.ResultPath).toBe(lambda!.ResultPath);
      expect(result!.Next ?? 'END').toBe(lambda!.Next ?? 'END');
      for (const other of [stage, fargate, result]) expect(other!.Catch).toEqual(lambda!.Catch);
    }
  });

  it('records a failure on every path: each step that can fail is caught and leads to a recording step', () => {
    const states = Object.fromEntries(allStates(parsed));
    const recorders = new Set([
      'restore.finish',
      'test.finish',
      'test.notify',
      'failover.finish',
      'failback.finish',
    ]);
    for (const [task, state] of Object.entries(states)) {
      if (state.Type !== 'Task' || recorders.has(state.Parameters.task)) continue;
      expect(state.Catch, `${task} has no Catch`).toEqual(
        expect.arrayContaining([expect.objectContaining({ Next: expect.any(String) })]),
      );
      // Every way on from the catch (through cleanup steps, waits and choices) reaches a recording step
      // before the execution can end.
      const seen = new Set<string>();
      const queue: string[] = [state.Catch[0].Next];
      while (queue.length > 0) {
        const name = queue.shift()!;
        if (seen.has(name)) continue;
        seen.add(name);
        const next = states[name];
        if (!next) throw new Error(`${task}: ${name} is not a state`);
        if (next.Type === 'Task' && recorders.has(next.Parameters.task)) continue;
        if (next.Type === 'Pass' && next.Next === undefined) continue; // a Map item's failure, recorded after the Map
        expect(['Succeed', 'Fail'], `${task}'s failure ends at ${name} unrecorded`).not.toContain(next.Type);
        expect(next.End, `${task}'s failure ends at ${name} unrecorded`).not.toBe(true);
        if (next.Type === 'Choice')
          queue.push(...next.Choices.map((choice: { Next: string }) => choice.Next), next.Default);
        else queue.push(next.Next);
      }
    }
  });
});

it('asl-validator refuses a broken definition (the check is live)', () => {
  const broken = definition('restore', SUBSTITUTIONS) as State;
  broken.States.Plan.Next = 'NoSuchState';
  expect(aslValidator(broken).isValid).toBe(false);
});

describe('statemachines/backup-fanout.asl.json', () => {
  const parsed = definition('backup-fanout', SUBSTITUTIONS) as State;
  const states = Object.fromEntries(allStates(parsed));

  it('is valid Amazon States Language and invokes only worker steps that exist, each with a timeout', () => {
    const result = aslValidator(parsed);
    expect(result.errorsText('\n')).toBe('');
    expect(parsed.TimeoutSeconds).toBeGreaterThan(0);
    for (const [task, state] of allStates(parsed).filter(
      ([, each]) => each.Type === 'Task' && each.Resource !== RUN_TASK,
    )) {
      expect(state.Resource, task).toBe(ARN);
      expect(WORKFLOW_TASKS, task).toContain(state.Parameters.task);
      expect(state.TimeoutSeconds, task).toBeLessThanOrEqual(900);
    }
  });

  it('runs the coordinator beside a Map of parts, each a Fargate task, and records a failure of either', () => {
    expect(states.Stage!.Parameters.task).toBe('fargate.stage');
    const fanOut = states.FanOut!;
    expect(fanOut.Type).toBe('Parallel');
    const [coordinator, parts] = fanOut.Branches as State[];
    expect(coordinator!.States.CoordinatorOnFargate.Parameters).toMatchObject(
      runTask('fanout.coordinate', '$.fargate.key'),
    );
    expect(parts!.States.Plan.Parameters.task).toBe('fanout.plan');
    expect(parts!.States.Parts).toMatchObject({ Type: 'Map', ItemsPath: '$.fanOut.parts' });
    expect(states.PartOnFargate!.Parameters).toMatchObject(runTask('fanout.part', '$.key'));
    expect(fargateStates(parsed).sort()).toEqual(['CoordinatorOnFargate', 'PartOnFargate']);
    // A failure anywhere in the fan-out is recorded, then the execution fails
    expect(fanOut.Catch).toEqual([
      { ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'RecordFailure' },
    ]);
    expect(states.RecordFailure!.Parameters.task).toBe('fanout.failed');
    expect(states[states.RecordFailure!.Next]!.Type).toBe('Fail');
    expect(states.Result!.Parameters.task).toBe('fargate.result');
    expect(states.Result!.Catch[0].Next).toBe('RecordFailure');
  });
});
