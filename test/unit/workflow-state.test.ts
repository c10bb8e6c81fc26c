import { describe, expect, it } from 'vitest';
import type { ControlPlane } from '../../functions/core/context.ts';
import { registry, runWorkflowTask, WORKFLOW_TASKS } from '../../functions/workflows/tasks.ts';
import { required, testState } from '../../functions/workflows/steps.ts';

/** The execution's state is parsed at the task boundary: what the definitions do not build is refused by name. */
const cp = {} as ControlPlane; // never reached: the state is refused before any step runs
const deps = { masterKey: () => Promise.reject(new Error('not used')) };

describe('workflow task boundary', () => {
  it('refuses a restore step whose state names no restore', async () => {
    await expect(runWorkflowTask(cp, deps, 'restore.finish', { plan: {} })).rejects.toMatchObject({
      name: 'InvalidState',
      message: expect.stringContaining('restoreId'),
    });
  });

  it('refuses a test step whose state has a result of the wrong shape', async () => {
    await expect(
      runWorkflowTask(cp, deps, 'test.finish', { testId: 't-1', check: { ok: 'yes' } }),
    ).rejects.toMatchObject({ name: 'InvalidState', message: expect.stringContaining('check.ok') });
  });

  it('refuses a task no workflow has', async () => {
    await expect(runWorkflowTask(cp, deps, 'restore.everything', {})).rejects.toMatchObject({
      name: 'UnknownTask',
    });
  });

  it('refuses two groups that name the same step, keeping every step otherwise', () => {
    const step = { state: testState, run: () => Promise.resolve(undefined) };
    expect(() => registry([{ 'test.finish': step }, { 'test.finish': step }])).toThrow(/test\.finish/);
    expect([...registry([{ a: step }, { b: step }]).keys()]).toEqual(['a', 'b']);
    expect(WORKFLOW_TASKS).toEqual(
      expect.arrayContaining(['restore.plan', 'test.verify', 'test.standby.promote']),
    );
  });

  it('names the part of the state an earlier step should have put there', () => {
    expect(() => required(undefined, 'plan.backupId')).toThrow(/plan\.backupId is missing/);
    expect(required('x', 'plan.backupId')).toBe('x');
  });
});
