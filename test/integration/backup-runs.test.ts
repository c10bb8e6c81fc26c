import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Partition } from '../../functions/core/store/table.ts';
import { parseMasterKey } from '../../functions/engine/crypto.ts';
import { verify } from '../../functions/engine/maintenance.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase } from '../../functions/engine/restore.ts';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { makeFilesTree } from '../support/engine.ts';
import { readFile } from 'node:fs/promises';
import { checked } from '../../functions/storage/facade.ts';

/** Backups run through the local runtime's API: execute, the worker, the catalog. */
let api: TestApi;
let pg: TestPostgres;
let work: string;
let clock = Date.parse('2026-11-24T10:00:00Z');
beforeAll(async () => {
  [api, pg] = await Promise.all([startTestApi({ now: () => new Date(clock) }), startPostgres()]);
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  work = await mkdtemp(join(tmpdir(), 'dr-runs-'));
  const files = await makeFilesTree();
  expect(
    (
      await api.call('POST', '/api/dr/config', {
        rto: 4,
        rpo: 1,
        notificationEmails: ['ops@example.com'],
        source: { database: { url: pg.url('app') }, files: { type: 'directory', path: files } },
      })
    ).status,
  ).toBe(201);
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});

async function target(id: string, path: string): Promise<void> {
  const created = await api.call('POST', '/api/dr/targets', {
    id,
    name: id,
    targetType: 'LOCAL',
    config: { path },
  });
  expect(created.status).toBe(201);
}

async function schedule(id: string, scheduleType: string, targets: string[]): Promise<void> {
  const created = await api.call('POST', '/api/dr/schedules', {
    id,
    name: id,
    scheduleType,
    cronExpression: '0 2 * * *',
    targets,
  });
  expect(created.status).toBe(201);
}

async function finished(id: string): Promise<any> {
  await api.runtime.idle();
  const backup = await api.call('GET', `/api/dr/backups/${id}`);
  expect(backup.status).toBe(200);
  return backup.body;
}

describe('POST /api/dr/schedules/{id}/execute', () => {
  it('runs a FULL then an INCREMENTAL to a target, recorded in the catalog', async () => {
    await target('primary', join(work, 'primary'));
    await schedule('nightly-full', 'FULL', ['primary']);
    await schedule('hourly', 'INCREMENTAL', ['primary']);

    const started = await api.call('POST', '/api/dr/schedules/nightly-full/execute');
    expect(started.status).toBe(202);
    expect(started.body).toMatchObject({ status: 'RUNNING', scheduleId: 'nightly-full', type: 'FULL' });
    expect(started.headers.get('location')).toBe(`/api/dr/backups/${started.body.id}`);
    const full = await finished(started.body.id);
    expect(full).toMatchObject({
      status: 'SUCCESS',
      type: 'FULL',
      trigger: { kind: 'manual' },
      targets: [{ targetId: 'primary', targetType: 'LOCAL', status: 'SUCCESS' }],
      database: { name: 'app' },
    });
    expect(full.sizes.sourceBytes).toBeGreaterThan(full.sizes.storedBytes);
    expect(full.sizes.dedupRatio).toBeGreaterThan(1);
    // Compression: the new chunks take more bytes than what the repository stored for them.
    expect(full.sizes.newBytes).toBeGreaterThan(full.sizes.storedBytes);
    expect(Date.parse(full.restorePoint)).not.toBeNaN();
    expect(full.files.entries).toBeGreaterThan(0);

    clock += 60_000;
    await pg.sql('app', "INSERT INTO audit_log (at, payload) SELECT now(), '{}' FROM generate_series(1, 50)");
    const next = await api.call('POST', '/api/dr/schedules/hourly/execute');
    const incremental = await finished(next.body.id);
    expect(incremental).toMatchObject({ status: 'SUCCESS', type: 'INCREMENTAL', parent: full.id });
    expect(incremental.sizes.storedBytes).toBeLessThan(full.sizes.storedBytes / 5);
    // It read the dump but not the unchanged files; it protects both (what the metrics report per target)
    expect(incremental.sizes.protectedBytes).toBeGreaterThan(incremental.sizes.sourceBytes);
    const storage = (await api.call('GET', '/api/dr/metrics')).body.storage;
    expect(storage.primary.bytesProtected).toBe(incremental.sizes.protectedBytes);

    // The repository is a normal one: drctl (the engine) restores it with the runtime's master key.
    const key = parseMasterKey(await readFile(join(api.dataDir, 'master.key'), 'utf8'));
    const repository = await Repository.open(checked(new LocalStorage(join(work, 'primary'))), key);
    const manifest = await repository.loadManifest(incremental.id);
    const restored = await pg.createDatabase('restored_primary');
    expect((await restoreDatabase(repository, manifest, { target: restored })).consistent).toBe(true);
    expect(await tableChecksums(pg, 'restored_primary')).toEqual(await tableChecksums(pg, 'app'));
  });

  it('refuses a second run of a schedule while one is active (409)', async () => {
    const first = await api.call('POST', '/api/dr/schedules/nightly-full/execute');
    expect(first.status).toBe(202);
    const second = await api.call('POST', '/api/dr/schedules/nightly-full/execute');
    expect(second.status).toBe(409);
    expect(second.body.error.message).toContain(`already running (backup ${first.body.id}`);
    expect((await finished(first.body.id)).status).toBe('SUCCESS');
    expect((await api.call('POST', '/api/dr/schedules/nightly-full/execute')).status).toBe(202);
    await api.runtime.idle();
  });

  it('writes one read of the source to every target: PARTIAL when one fails, with its reason', async () => {
    const file = join(work, 'a-file');
    await writeFile(file, 'not a directory');
    await target('copy-a', join(work, 'copy-a'));
    await target('broken', join(file, 'repo'));
    await target('copy-b', join(work, 'copy-b'));
    await schedule('fan-out', 'FULL', ['copy-a', 'broken', 'copy-b']);
    const started = await api.call('POST', '/api/dr/schedules/fan-out/execute');
    const backup = await finished(started.body.id);
    expect(backup.status).toBe('PARTIAL');
    expect(backup.targets.map((t: any) => [t.targetId, t.status])).toEqual([
      ['copy-a', 'SUCCESS'],
      ['broken', 'FAILED'],
      ['copy-b', 'SUCCESS'],
    ]);
    expect(backup.targets[1].error.message).toContain('ENOTDIR');
    // Both good copies hold the same repository and the whole backup.
    const key = parseMasterKey(await readFile(join(api.dataDir, 'master.key'), 'utf8'));
    for (const copy of ['copy-a', 'copy-b']) {
      const repository = await Repository.open(checked(new LocalStorage(join(work, copy))), key);
      expect((await repository.loadManifest(backup.id)).id).toBe(backup.id);
    }
  });

  it('adds a new target to an existing repository by copying its keys', async () => {
    await target('late', join(work, 'late'));
    const current = await api.call('GET', '/api/dr/schedules/hourly');
    await api.call('PUT', '/api/dr/schedules/hourly', {
      name: 'hourly',
      scheduleType: 'INCREMENTAL',
      cronExpression: '0 * * * *',
      targets: ['primary', 'late'],
      version: current.body.version,
    });
    clock += 60_000;
    const started = await api.call('POST', '/api/dr/schedules/hourly/execute');
    const backup = await finished(started.body.id);
    // 'late' holds none of the earlier backups: no parent both hold, so this run is a FULL, and says so.
    expect(backup).toMatchObject({ status: 'SUCCESS', type: 'FULL', requestedType: 'INCREMENTAL' });
    expect(backup.notice).toContain('taken as a FULL');
    const primary = await readFile(join(work, 'primary', 'config'));
    expect((await readFile(join(work, 'late', 'config'))).equals(primary)).toBe(true);
  });

  it('marks a run whose worker died as FAILED and lets the schedule run again', async () => {
    const cp = api.runtime.controlPlane;
    const now = new Date(clock);
    const deadId = '20261124T095900000Z-dead00';
    await cp.table.create(
      Partition.backup,
      deadId,
      {
        id: deadId,
        scheduleId: 'hourly',
        scheduleName: 'hourly',
        requestedType: 'INCREMENTAL',
        type: 'INCREMENTAL',
        status: 'RUNNING',
        trigger: { kind: 'schedule' },
        startedAt: now.toISOString(),
        heartbeatAt: now.toISOString(),
        targets: [{ targetId: 'primary', name: 'primary', targetType: 'LOCAL', status: 'RUNNING' }],
      },
      now,
      'exists',
    );
    await cp.table.putIfAbsent({
      pk: Partition.run,
      sk: 'hourly',
      version: 1,
      createdAt: now.toISOString(),
      updatedAt: now.toISOString(),
      data: {
        scheduleId: 'hourly',
        backupId: deadId,
        startedAt: now.toISOString(),
        heartbeatAt: now.toISOString(),
      },
    });
    expect((await api.call('POST', '/api/dr/schedules/hourly/execute')).status).toBe(409);
    clock += 6 * 60_000; // past STALE_AFTER_MS without a heartbeat
    const again = await api.call('POST', '/api/dr/schedules/hourly/execute');
    expect(again.status).toBe(202);
    const dead = (await api.call('GET', `/api/dr/backups/${deadId}`)).body;
    expect(dead).toMatchObject({ status: 'FAILED', targets: [{ status: 'FAILED' }] });
    expect(dead.error).toContain('stopped responding');
    expect((await finished(again.body.id)).status).toBe('SUCCESS');
  });
});

describe('GET /api/dr/backups', () => {
  it('never answers a SCHEMA backup (structure only, no files) as latest', async () => {
    await schedule('structure', 'SCHEMA', ['primary']);
    clock += 60_000;
    const run = await api.call('POST', '/api/dr/schedules/structure/execute');
    expect(run.status).toBe(202);
    const done = await finished(run.body.id);
    expect(done).toMatchObject({ type: 'SCHEMA', status: 'SUCCESS' });
    // The source has files; a SCHEMA backup leaves them out (the guide: "structure only")
    expect(done.files).toBeUndefined();
    expect(done.database).toMatchObject({ name: expect.any(String), tables: expect.any(Number) });
    const newest = (await api.call('GET', '/api/dr/backups?limit=1')).body.items[0];
    expect(newest.id).toBe(run.body.id);
    const latest = (await api.call('GET', '/api/dr/backups?latest=true')).body.items;
    expect(latest.length).toBeGreaterThan(0);
    expect(latest.map((b: any) => b.type)).not.toContain('SCHEMA');
  });

  it('filters by type, status, schedule and target, pages, and answers latest=true', async () => {
    const all = (await api.call('GET', '/api/dr/backups?limit=100')).body.items as any[];
    expect(all.length).toBeGreaterThanOrEqual(6);
    expect(all.map((b) => b.id)).toEqual([...all.map((b) => b.id)].sort().reverse());

    const latestFull = await api.call('GET', '/api/dr/backups?type=FULL&latest=true');
    expect(latestFull.body.items).toHaveLength(1);
    const newestFull = all.find(
      (b) => b.type === 'FULL' && (b.status === 'SUCCESS' || b.status === 'PARTIAL'),
    );
    expect(latestFull.body.items[0].id).toBe(newestFull.id);

    const partial = await api.call('GET', '/api/dr/backups?status=PARTIAL');
    expect(partial.body.items.every((b: any) => b.status === 'PARTIAL')).toBe(true);
    const onBroken = await api.call('GET', '/api/dr/backups?targetId=broken');
    expect(onBroken.body.items.map((b: any) => b.scheduleId)).toEqual(['fan-out']);
    const hourly = await api.call('GET', '/api/dr/backups?scheduleId=hourly');
    expect(hourly.body.items.every((b: any) => b.scheduleId === 'hourly')).toBe(true);

    const first = await api.call('GET', '/api/dr/backups?limit=2');
    expect(first.body.items).toHaveLength(2);
    const second = await api.call('GET', `/api/dr/backups?limit=2&nextToken=${first.body.nextToken}`);
    expect(second.body.items[0].id).toBe(all[2].id);

    const window = await api.call(
      'GET',
      `/api/dr/backups?from=${encodeURIComponent(all[1].startedAt)}&to=${encodeURIComponent(all[1].startedAt)}`,
    );
    expect(window.body.items.every((b: any) => b.startedAt === all[1].startedAt)).toBe(true);
  });

  it('says which filter is wrong, and 404s an unknown backup', async () => {
    const bad = await api.call('GET', '/api/dr/backups?type=WEEKLY&from=yesterday');
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad).sort()).toEqual(['from', 'type']);
    expect((await api.call('GET', '/api/dr/backups?nextToken=bogus')).status).toBe(400);
    expect((await api.call('GET', '/api/dr/backups/20200101T000000000Z-000000')).status).toBe(404);
  });
});

describe('retention', () => {
  it('shows a dry run, then deletes expired backups from the targets and the catalog, keeping what is needed', async () => {
    const before = (await api.call('GET', '/api/dr/backups?limit=100')).body.items as any[];
    clock += 40 * 24 * 60 * 60_000; // every backup is now past the config's 30 days
    const plan = (await api.call('GET', '/api/dr/retention')).body;
    const keptIds = plan.keep.map((k: any) => k.id);
    // Each schedule's newest restore point stays, with the chain it builds on.
    for (const scheduleId of ['nightly-full', 'hourly', 'fan-out']) {
      const newest = before.find(
        (b) => b.scheduleId === scheduleId && ['SUCCESS', 'PARTIAL'].includes(b.status),
      );
      expect(plan.keep).toContainEqual({ id: newest.id, reason: 'newest restore point' });
      if (newest.parent) expect(keptIds).toContain(newest.parent);
    }
    expect(plan.delete.length + plan.keep.length).toBe(before.length);
    expect(plan.delete.length).toBeGreaterThan(0);
    // A dry run changes nothing.
    expect((await api.call('GET', '/api/dr/backups?limit=100')).body.items).toHaveLength(before.length);

    const applied = await api.call('POST', '/api/dr/retention/apply');
    expect(applied.status).toBe(202);
    await api.runtime.idle();
    const after = (await api.call('GET', '/api/dr/backups?limit=100')).body.items as any[];
    expect(after.map((b) => b.id).sort()).toEqual([...keptIds].sort());
    // The data went with the entries: deleted manifests are gone from the target, kept ones verify.
    const key = parseMasterKey(await readFile(join(api.dataDir, 'master.key'), 'utf8'));
    const repository = await Repository.open(checked(new LocalStorage(join(work, 'primary'))), key);
    const onPrimary = await repository.backupIds();
    for (const gone of plan.delete) expect(onPrimary).not.toContain(gone.id);
    for (const id of onPrimary) expect((await verify(repository, id)).ok).toBe(true);
    expect(
      (await api.call('GET', '/api/dr/audit')).body.items.some((e: any) => e.action === 'backup.delete'),
    ).toBe(true);
  });
});

describe('POST /api/dr/backups/{id}/confirm', () => {
  it('keeps a shrunken FULL out of latest until an operator confirms it', async () => {
    await pg.sql('postgres', 'CREATE DATABASE app_before_shrink TEMPLATE app');
    await pg.sql('app', 'DELETE FROM tickets; DELETE FROM registrations; DELETE FROM audit_log');
    try {
      clock += 60_000;
      const run = await api.call('POST', '/api/dr/schedules/nightly-full/execute');
      expect(run.status).toBe(202);
      const flagged = await finished(run.body.id);
      expect(flagged.status).toBe('SUCCESS');
      expect(flagged.review).toMatch(/under 50% of the \d+ of FULL /);
      const latest = async () =>
        (await api.call('GET', '/api/dr/backups?scheduleId=nightly-full&latest=true')).body.items[0]?.id;
      expect(await latest()).not.toBe(flagged.id);

      const confirmed = await api.call('POST', `/api/dr/backups/${flagged.id}/confirm`);
      expect(confirmed.status, confirmed.text).toBe(200);
      expect(confirmed.body.review).toBeUndefined();
      expect(confirmed.body.reviewConfirmed).toMatchObject({ reason: flagged.review });
      expect(await latest()).toBe(flagged.id);
      expect((await api.call('POST', `/api/dr/backups/${flagged.id}/confirm`)).status).toBe(409);
      const audit = (await api.call('GET', '/api/dr/audit?limit=1')).body.items[0];
      expect(audit).toMatchObject({ action: 'backup.confirm', resource: `backup/${flagged.id}` });
    } finally {
      await pg.sql('postgres', 'DROP DATABASE app');
      await pg.sql('postgres', 'ALTER DATABASE app_before_shrink RENAME TO app');
    }
  });
});
