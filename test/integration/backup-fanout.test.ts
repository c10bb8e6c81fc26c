import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Partition } from '../../functions/core/store/table.ts';
import { parseMasterKey } from '../../functions/engine/crypto.ts';
import { partIndexName } from '../../functions/engine/fanout.ts';
import type { Manifest } from '../../functions/engine/manifest.ts';
import { listKeys, Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase } from '../../functions/engine/restore.ts';
import { checked } from '../../functions/storage/facade.ts';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * Issue 20: a FULL schedule with `workers` runs as the backup-fanout workflow on the local interpreter (the
 * same definition Step Functions runs, its Fargate tasks run in this process): the coordinator and one part
 * per worker, each part reading its tables in the coordinator's snapshot.
 */
let api: TestApi;
let pg: TestPostgres;
let repoDir: string;
let killPart: number | undefined;

beforeAll(async () => {
  [api, pg] = await Promise.all([
    startTestApi({
      workflowWaitMs: 20,
      taskWrappers: {
        'fanout.part': async (input, real) => {
          if (input.part === killPart) throw new Error(`part ${killPart} was killed`);
          return real();
        },
      },
    }),
    startPostgres(),
  ]);
  await pg.createDatabase('app');
  await createEventManager(pg, 'app', 2);
  repoDir = join(await mkdtemp(join(tmpdir(), 'dr-fanout-')), 'repo');
  const calls = [
    await api.call('POST', '/api/dr/config', {
      rto: 4,
      rpo: 1,
      notificationEmails: ['ops@example.com'],
      source: { database: { url: pg.url('app') } },
    }),
    await api.call('POST', '/api/dr/targets', {
      id: 'primary',
      name: 'primary',
      targetType: 'LOCAL',
      config: { path: repoDir },
    }),
  ];
  for (const [id, workers] of [
    ['single', 1],
    ['fanned', 3],
  ] as const)
    calls.push(
      await api.call('POST', '/api/dr/schedules', {
        id,
        name: id,
        scheduleType: 'FULL',
        cronExpression: '0 2 * * *',
        targets: ['primary'],
        workers,
        jobs: 2,
      }),
    );
  for (const call of calls) expect(call.status).toBe(201);
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});

async function run(schedule: string): Promise<any> {
  const started = await api.call('POST', `/api/dr/schedules/${schedule}/execute`);
  expect(started.status).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/backups/${started.body.id}`)).body;
}

async function repository(): Promise<Repository> {
  const key = parseMasterKey(await readFile(join(api.dataDir, 'master.key'), 'utf8'));
  return Repository.open(checked(new LocalStorage(repoDir)), key);
}

const contentOf = (manifest: Manifest) =>
  manifest.database!.tables.map(({ schema, name, rows, sha256, size, chunks }) => ({
    table: `${schema}.${name}`,
    rows,
    sha256,
    size,
    chunks,
  }));

describe('a FULL fanned out over workers', () => {
  it('holds the same content as a single worker backup, written in parts, and restores', async () => {
    const single = await run('single');
    expect(single.status).toBe('SUCCESS');
    const fanned = await run('fanned');
    expect(fanned).toMatchObject({ status: 'SUCCESS', type: 'FULL', targets: [{ status: 'SUCCESS' }] });
    expect(fanned.sizes.sourceBytes).toBe(single.sizes.sourceBytes);

    const repo = await repository();
    const [one, many] = await Promise.all([repo.loadManifest(single.id), repo.loadManifest(fanned.id)]);
    expect(contentOf(many)).toEqual(contentOf(one));
    expect(many.restorePoint).not.toBe(one.restorePoint);
    // Each part wrote its own index file; the coordinator, the schema archives' one
    const indexes = (await listKeys(repo.storage, 'index/')).filter((key) => key.includes(fanned.id));
    expect(indexes.sort()).toEqual(
      [`index/${fanned.id}`, ...[0, 1, 2].map((part) => `index/${partIndexName(fanned.id, part)}`)].sort(),
    );
    // Nothing of the fan-out is left staged
    expect(await api.runtime.controlPlane.table.queryAll(Partition.step)).toEqual([]);

    const target = await pg.createDatabase('restored');
    const restored = await restoreDatabase(repo, many, { target, jobs: 2 });
    expect(restored.consistent).toBe(true);
    expect(await tableChecksums(pg, 'restored')).toEqual(await tableChecksums(pg, 'app'));
  });

  it('fails the run when one part is killed: no backup is listed, and the schedule runs again', async () => {
    killPart = 1;
    try {
      const failed = await run('fanned');
      expect(failed.status).toBe('FAILED');
      expect(failed.error).toContain('part 1 was killed');
      const repo = await repository();
      expect(await repo.backupIds()).not.toContain(failed.id);
    } finally {
      killPart = undefined;
    }
    expect((await run('fanned')).status).toBe('SUCCESS');
  });

  it('refuses jobs and workers out of range, naming the field', async () => {
    const bad = await api.call('POST', '/api/dr/schedules', {
      name: 'bad',
      scheduleType: 'FULL',
      cronExpression: '0 2 * * *',
      targets: ['primary'],
      jobs: 0,
      workers: 17,
    });
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad).sort()).toEqual(['jobs', 'workers']);
    // Saved, with the reason it will not fan out
    const incremental = await api.call('POST', '/api/dr/schedules', {
      name: 'hourly',
      scheduleType: 'INCREMENTAL',
      cronExpression: '0 * * * *',
      targets: ['primary'],
      workers: 4,
    });
    expect(incremental.status).toBe(201);
    expect(incremental.body.warnings).toContain(
      'workers: only FULL runs fan out; INCREMENTAL runs use one worker',
    );
  });
});
