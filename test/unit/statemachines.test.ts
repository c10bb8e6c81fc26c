import aslValidator from 'asl-validator';
import { describe, expect, it } from 'vitest';
import {
  definition,
  rawDefinition,
  taskStates,
  WORKFLOW_NAMES,
} from '../../functions/workflows/definitions.ts';
import { WORKFLOW_TASKS } from '../../functions/workflows/tasks.ts';

/** The definitions in statemachines/: what Step Functions and the local interpreter both run. */
const ARN = 'arn:aws:lambda:us-east-1:123456789012:function:dr-worker';

type State = Record<string, any>;
function allStates(node: State): [string, State][] {
  const found: [string, State][] = [];
  for (const [name, state] of Object.entries(node.States as Record<string, State>)) {
    found.push([name, state]);
    if (state.ItemProcessor) found.push(...allStates(state.ItemProcessor));
    for (const branch of state.Branches ?? []) found.push(...allStates(branch));
  }
  return found;
}

describe.each(WORKFLOW_NAMES)('statemachines/%s.asl.json', (name) => {
  const parsed = definition(name, { WorkerFunctionArn: ARN });

  it('is valid Amazon States Language (asl-validator), with only the worker as a placeholder', () => {
    const result = aslValidator(parsed);
    expect(result.errorsText('\n')).toBe('');
    expect(result.isValid).toBe(true);
    expect([...rawDefinition(name).matchAll(/\$\{(\w+)\}/g)].map((match) => match[1])).toSatisfy(
      (keys: string[]) => keys.every((key) => key === 'WorkerFunctionArn'),
    );
  });

  it('invokes only worker steps that exist, each with a timeout, and has a time limit of its own', () => {
    expect(parsed.TimeoutSeconds).toBeGreaterThan(0);
    const tasks = allStates(parsed).filter(([, state]) => state.Type === 'Task');
    expect(tasks.length).toBeGreaterThan(0);
    expect(taskStates(parsed, ARN).sort()).toEqual(tasks.map(([task]) => task).sort());
    for (const [task, state] of tasks) {
      expect(state.Resource, task).toBe(ARN);
      expect(WORKFLOW_TASKS, task).toContain(state.Parameters.task);
      expect(state.Parameters.action, task).toBe('workflow');
      expect(state.TimeoutSeconds, task).toBeGreaterThan(0);
      expect(state.TimeoutSeconds, task).toBeLessThanOrEqual(900);
    }
  });

  it('records a failure on every path: each step that can fail is caught and leads to a recording step', () => {
    const states = Object.fromEntries(allStates(parsed));
    const recorders = new Set(['restore.finish', 'test.finish', 'test.notify']);
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
  const broken = definition('restore', { WorkerFunctionArn: ARN }) as State;
  broken.States.Plan.Next = 'NoSuchState';
  expect(aslValidator(broken).isValid).toBe(false);
});
