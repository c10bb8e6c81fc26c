import { watch } from 'node:fs';
import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { HeavySteps } from '../../functions/core/env.ts';
import { Partition } from '../../functions/core/store/table.ts';
import { WorkflowError } from '../../functions/workflows/steps.ts';
import { describeTree, makeFilesTree } from '../support/engine.ts';
import { tableChecksums } from '../support/event-manager.ts';
import { deployWithOneBackup } from '../support/deployment.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * Heavy steps on Fargate, through the local runtime: the state machines' Fargate branch (stage the state,
 * run the step as a task, collect its result) taken when the execution's runner says so, the task's
 * RunTask mapped to the same step the container runs (runStagedStep). What is checked: the Fargate branch
 * is taken, the data is the same as on the Lambda path, and a failure inside the task reaches the same Catch
 * (the scratch database is dropped, the test recorded FAILED with the step's own error).
 */
let api: TestApi;
let pg: TestPostgres;
let files: string;
let backupId: string;
let sums: Record<string, string>;
/** Heavy steps that ran through the Fargate branch, in order (each staged state's step, collected). */
let staged: number;
let collected: number;
let failCheck = false;
let failRestore = false;
let failVerify = false;
let scratch: string;
const scratchSeen: string[] = [];

function runner(heavySteps: HeavySteps): void {
  (api.runtime.controlPlane as { heavySteps?: HeavySteps }).heavySteps = heavySteps;
}

beforeAll(async () => {
  pg = await startPostgres();
  scratch = await mkdtemp(join(tmpdir(), 'dr-scratch-volume-'));
  api = await startTestApi({
    heavySteps: { heavy: 'fargate', fromBytes: 0 },
    // As on AWS, where this is the mounted files volume
    scratchDir: scratch,
    taskWrappers: {
      'fargate.stage': async (_input, real) => {
        staged += 1;
        return real();
      },
      'fargate.result': async (_input, real) => {
        collected += 1;
        return real();
      },
      'test.recovery.files': async (_input, real) => {
        // The scratch files go under the scratch directory while the step runs, and are gone after it
        const seen: string[] = [];
        const watcher = watch(scratch, (_event, name) => name && seen.push(name));
        try {
          return await real();
        } finally {
          watcher.close();
          scratchSeen.push(...seen);
        }
      },
      'restore.database': async (_input, real) => {
        if (failRestore) throw new WorkflowError('DiskFull', 'no space left on the restore volume');
        return real();
      },
      'test.verify': async (_input, real) => {
        if (failVerify) throw new WorkflowError('CorruptData', 'pack 3f… failed authentication');
        return real();
      },
      'test.restore.check': async (_input, real) => {
        if (failCheck)
          throw new WorkflowError('Inconsistent', 'the scratch database differs from the backup');
        return real();
      },
    },
  });
  files = await makeFilesTree();
  backupId = await deployWithOneBackup(api, pg, { files });
  sums = await tableChecksums(pg, 'app');
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});
beforeEach(() => {
  staged = 0;
  collected = 0;
  failCheck = false;
  failRestore = false;
  failVerify = false;
  runner({ heavy: 'fargate', fromBytes: 0 });
});

async function run(path: string, body: unknown, id: string): Promise<any> {
  const started = await api.call('POST', path, body);
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `${path}/${started.body[id]}`)).body;
}

async function stepsLeft(): Promise<number> {
  return (await api.runtime.controlPlane.table.queryAll(Partition.step)).length;
}

async function databases(): Promise<string[]> {
  const found = await pg.sql('postgres', 'SELECT datname FROM pg_database ORDER BY 1');
  return found.rows.map((row: { datname: string }) => row.datname);
}

describe('heavy steps on Fargate (local interpreter)', () => {
  it('restores database and files through the Fargate branch, to the same data as the Lambda path', async () => {
    const into = join(await mkdtemp(join(tmpdir(), 'dr-fargate-files-')), 'restored');
    const record = await run(
      '/api/dr/restore',
      { backupId, destination: { environment: 'STAGING', database: 'on_fargate', filesTo: into } },
      'restoreId',
    );
    expect(record.status, record.error).toBe('SUCCEEDED');
    // RestoreDatabase and RestoreFiles, each staged, run as a task and collected
    expect([staged, collected]).toEqual([2, 2]);
    expect(record.result.database).toMatchObject({ consistent: true });
    expect(await tableChecksums(pg, 'on_fargate')).toEqual(sums);
    expect(await describeTree(into)).toEqual(await describeTree(files));
    expect(await stepsLeft()).toBe(0);
  });

  it('records a restore failed inside its Fargate task with the step error, and leaves nothing staged', async () => {
    failRestore = true;
    const record = await run(
      '/api/dr/restore',
      {
        backupId,
        scope: { files: false },
        destination: { environment: 'STAGING', database: 'fails_on_fargate' },
      },
      'restoreId',
    );
    expect(record.status).toBe('FAILED');
    expect(record.error).toBe('DiskFull: no space left on the restore volume');
    expect([staged, collected]).toEqual([1, 1]);
    expect(await stepsLeft()).toBe(0);
  });

  it('chooses by the backup size in auto mode: below the threshold in the Lambda, at it on Fargate', async () => {
    runner({ heavy: 'auto', fromBytes: 10 ** 12 });
    const small = await run(
      '/api/dr/restore',
      { backupId, scope: { files: false }, destination: { environment: 'STAGING', database: 'auto_lambda' } },
      'restoreId',
    );
    expect(small.status, small.error).toBe('SUCCEEDED');
    expect(staged).toBe(0);
    runner({ heavy: 'auto', fromBytes: small.plan.bytes });
    const large = await run(
      '/api/dr/restore',
      {
        backupId,
        scope: { files: false },
        destination: { environment: 'STAGING', database: 'auto_fargate' },
      },
      'restoreId',
    );
    expect(large.status, large.error).toBe('SUCCEEDED');
    expect(staged).toBe(2);
    expect(await tableChecksums(pg, 'auto_fargate')).toEqual(sums);
  });

  it('runs a RESTORE_TEST with its restore and check on Fargate', async () => {
    const before = await databases();
    const test = await run(
      '/api/dr/test',
      { testType: 'RESTORE_TEST', targetEnvironment: 'STAGING' },
      'testId',
    );
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    expect([staged, collected]).toEqual([2, 2]);
    expect(await databases()).toEqual(before);
  });

  it('takes the same Catch when a step fails inside the task: scratch dropped, the step error recorded', async () => {
    failCheck = true;
    const before = await databases();
    const test = await run(
      '/api/dr/test',
      { testType: 'RESTORE_TEST', targetEnvironment: 'STAGING' },
      'testId',
    );
    expect(test.status).toBe('FAILED');
    expect(JSON.stringify(test)).toContain('the scratch database differs from the backup');
    expect(await databases()).toEqual(before);
    expect(await stepsLeft()).toBe(0);
  });

  it('verifies each backup of a BACKUP_VERIFICATION in its own task (inside the Map)', async () => {
    const test = await run('/api/dr/test', { testType: 'BACKUP_VERIFICATION' }, 'testId');
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    expect(test.results.backups).toEqual([{ backupId, targetId: 'primary', ok: true }]);
    expect([staged, collected]).toEqual([1, 1]);
  });

  it('records a verification that failed inside its task against that backup, the test FAILED', async () => {
    failVerify = true;
    const test = await run('/api/dr/test', { testType: 'BACKUP_VERIFICATION' }, 'testId');
    expect(test.status).toBe('FAILED');
    expect(test.results.backups).toEqual([{ backupId, targetId: 'primary', ok: false }]);
    expect(JSON.stringify(test.results.issues)).toContain('pack 3f… failed authentication');
  });

  it('runs the RECOVERY_TIME_TEST phases on Fargate, timed, and cleans up when one fails there', async () => {
    const before = await databases();
    const test = await run('/api/dr/test', { testType: 'RECOVERY_TIME_TEST' }, 'testId');
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    // Fetch, RestoreDatabase, RestoreFiles and Verify
    expect([staged, collected]).toEqual([4, 4]);
    expect(scratchSeen.some((name) => name.startsWith(`dr-test-${test.id}-`))).toBe(true);
    expect(await readdir(scratch)).toEqual([]);
    expect(test.results.phases.databaseRestore).toBeGreaterThan(0);
    failCheck = true;
    const failed = await run('/api/dr/test', { testType: 'RECOVERY_TIME_TEST' }, 'testId');
    expect(failed.status).toBe('FAILED');
    expect(JSON.stringify(failed)).toContain('the scratch database differs from the backup');
    expect(await databases()).toEqual(before);
    expect(await stepsLeft()).toBe(0);
  });

  it('answers FargateTaskLost for a task that stopped without leaving a result, and the test records it', async () => {
    // A task killed before it could write its outcome: the staged item is there, no result in it
    const { fargateSteps } = await import('../../functions/workflows/fargate.ts');
    const cp = api.runtime.controlPlane;
    const { key } = (await fargateSteps['fargate.stage']!.run(cp, {} as never, { testId: 'x' })) as {
      key: string;
    };
    await expect(
      fargateSteps['fargate.result']!.run(cp, {} as never, { fargate: { key } }),
    ).rejects.toMatchObject({
      name: 'FargateTaskLost',
    });
    expect(await stepsLeft()).toBe(0);
  });

  it('ends quietly a step whose staging was removed while it ran (the run gave up): no error to hide the real one', async () => {
    const { fargateSteps, runStagedStep } = await import('../../functions/workflows/fargate.ts');
    const cp = api.runtime.controlPlane;
    const { key } = (await fargateSteps['fargate.stage']!.run(cp, {} as never, { testId: 'y' })) as {
      key: string;
    };
    // A fan-out's coordinator saw another part fail and removed the staged items while this part ran
    await runStagedStep(cp, 'fanout.part', key, async () => {
      const item = await cp.table.get(Partition.step, key);
      await cp.table.delete(item!);
      return { pieces: 1 };
    });
    expect(await stepsLeft()).toBe(0);
    // Another writer's change (the item still there) is still an error
    const second = (await fargateSteps['fargate.stage']!.run(cp, {} as never, { testId: 'z' })) as {
      key: string;
    };
    await expect(
      runStagedStep(cp, 'fanout.part', second.key, async () => {
        const item = await cp.table.get<Record<string, unknown>>(Partition.step, second.key);
        await cp.table.replace(item!, { ...item!.data, touched: true }, new Date());
        return null;
      }),
    ).rejects.toThrow(/changed by another request/);
    await cp.table.delete((await cp.table.get(Partition.step, second.key))!);
  });
});
