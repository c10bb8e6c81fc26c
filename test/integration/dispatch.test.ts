import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { finishRecord, releaseRun, getBackup } from '../../functions/core/services/backup-service.ts';
import { dispatch } from '../../functions/core/services/dispatch-service.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import type { RunLauncher } from '../../functions/core/ports.ts';

/**
 * Schedules that fire, with a controlled clock. The launcher stands in for the worker (the worker itself is
 * tested in backup-runs.test.ts): it records each launch and, unless told to hang, finishes the run at once.
 */
let clock = Date.parse('2026-11-24T00:00:00Z'); // a Tuesday
let api: TestApi;
const launched: string[] = [];
let hang = false;
const launcher: RunLauncher = {
  launch: async (backupId) => {
    launched.push(backupId);
    if (hang) return;
    const cp = api.runtime.controlPlane;
    const record = await getBackup(cp, backupId);
    await finishRecord(cp, backupId, { status: 'SUCCESS' });
    await releaseRun(cp, record.scheduleId, backupId);
  },
};

beforeAll(async () => {
  api = await startTestApi({ now: () => new Date(clock) });
  const work = await mkdtemp(join(tmpdir(), 'dr-dispatch-'));
  await api.call('POST', '/api/dr/config', {
    notificationEmails: ['ops@example.com'],
    source: { files: { type: 'directory', path: work } },
  });
  await api.call('POST', '/api/dr/targets', { id: 'disk', targetType: 'LOCAL', config: { path: work } });
});
afterAll(async () => {
  await api?.close();
});

async function createSchedule(id: string, cronExpression: string, active = true): Promise<void> {
  const created = await api.call('POST', '/api/dr/schedules', {
    id,
    name: id,
    scheduleType: 'FULL',
    cronExpression,
    active,
    targets: ['disk'],
  });
  expect(created.status).toBe(201);
}

async function firings(id: string): Promise<any[]> {
  return (await api.call('GET', `/api/dr/schedules/${id}/firings`)).body.items;
}

const tick = (options: { graceMs?: number } = {}) => dispatch(api.runtime.controlPlane, launcher, options);

describe('the dispatcher', () => {
  it('fires every cron example of the guide at exactly its times over two weeks', async () => {
    const examples = {
      hourly: '0 * * * *',
      'daily-2am': '0 2 * * *',
      'every-6h': '0 */6 * * *',
      'weekly-sunday-3am': '0 3 * * 0',
      'monthly-1st': '0 0 1 * *',
    };
    for (const [id, cron] of Object.entries(examples)) await createSchedule(id, cron);
    const end = Date.parse('2026-12-08T00:00:00Z');
    // Ticks 37 minutes apart (never on a firing minute), with a grace longer than a tick: all on time.
    const started: Record<string, string[]> = {};
    for (clock += 37 * 60_000; clock < end + 37 * 60_000; clock += 37 * 60_000) {
      clock = Math.min(clock, end);
      const result = await tick({ graceMs: 60 * 60_000 });
      expect(result.missed).toEqual([]);
      for (const run of result.started) (started[run.scheduleId] ??= []).push(run.firingTime);
      if (clock === end) break;
    }
    expect(started['weekly-sunday-3am']).toEqual(['2026-11-29T03:00:00.000Z', '2026-12-06T03:00:00.000Z']);
    expect(started['monthly-1st']).toEqual(['2026-12-01T00:00:00.000Z']);
    expect(started['daily-2am']).toHaveLength(14);
    expect(started['daily-2am']!.every((time) => time.endsWith('T02:00:00.000Z'))).toBe(true);
    expect(started['every-6h']).toHaveLength(56);
    expect(new Set(started['every-6h']!.map((time) => time.slice(11, 16)))).toEqual(
      new Set(['00:00', '06:00', '12:00', '18:00']),
    );
    expect(started.hourly).toHaveLength(14 * 24);
    expect(started.hourly!.every((time) => time.slice(13) === ':00:00.000Z')).toBe(true);
    expect(new Set(started.hourly).size).toBe(14 * 24);
    // Each started firing is a backup in the catalog, triggered by the schedule.
    const backups = (await api.call('GET', '/api/dr/backups?scheduleId=weekly-sunday-3am')).body.items;
    expect(backups.map((b: any) => b.trigger)).toEqual([
      { kind: 'schedule', firingTime: '2026-12-06T03:00:00.000Z' },
      { kind: 'schedule', firingTime: '2026-11-29T03:00:00.000Z' },
    ]);
    for (const id of Object.keys(examples)) {
      const current = await api.call('GET', `/api/dr/schedules/${id}`);
      await api.call('DELETE', `/api/dr/schedules/${id}`, undefined, {
        headers: { 'if-match': String(current.body.version) },
      });
    }
  }, 120_000);

  it('starts one backup when the same firing is delivered twice', async () => {
    await createSchedule('twice', '*/5 * * * *');
    clock += 5 * 60_000 - (clock % (5 * 60_000));
    const before = launched.length;
    const [first, second] = await Promise.all([tick(), tick()]);
    expect(first.started.length + second.started.length).toBe(1);
    expect(launched.length - before).toBe(1);
    const again = await tick(); // a third, later delivery of the same minute
    expect(again.started).toEqual([]);
    expect((await firings('twice')).filter((f) => f.status === 'STARTED')).toHaveLength(1);
  });

  it('skips a firing while the previous run is still going, and records why', async () => {
    hang = true;
    clock += 5 * 60_000;
    const running = await tick();
    expect(running.started.map((run) => run.scheduleId)).toEqual(['twice']);
    clock += 5 * 60_000;
    const overlapping = await tick();
    expect(overlapping.started).toEqual([]);
    expect(overlapping.skipped[0]).toMatchObject({ scheduleId: 'twice' });
    expect((await firings('twice'))[0]).toMatchObject({ status: 'SKIPPED' });
    expect((await firings('twice'))[0].reason).toContain('already running');
    hang = false;
  });

  it('marks a run whose worker died FAILED on the next tick, and the schedule fires again', async () => {
    const stuck = launched.at(-1)!;
    clock += 6 * 60_000; // no heartbeat for longer than STALE_AFTER_MS
    const result = await tick({ graceMs: 60 * 60_000 });
    expect(result.reaped).toEqual([stuck]);
    expect((await getBackup(api.runtime.controlPlane, stuck)).status).toBe('FAILED');
    expect(result.started.map((run) => run.scheduleId)).toEqual(['twice']);
  });

  it('records firings missed while it was down, and runs the newest one late', async () => {
    const current = await api.call('GET', '/api/dr/schedules/twice');
    await api.call('DELETE', '/api/dr/schedules/twice', undefined, {
      headers: { 'if-match': String(current.body.version) },
    });
    clock = Date.parse('2026-12-09T00:30:00Z');
    await createSchedule('down', '0 * * * *');
    await tick();
    clock = Date.parse('2026-12-09T05:20:00Z'); // down from 00:30 to 05:20: 01:00 … 05:00 were due
    const result = await tick();
    expect(result.missed.map((m) => m.firingTime.slice(11, 16))).toEqual([
      '01:00',
      '02:00',
      '03:00',
      '04:00',
      '05:00',
    ]);
    expect(result.started.map((run) => run.firingTime)).toEqual(['2026-12-09T05:00:00.000Z']);
    const recorded = await firings('down');
    expect(recorded.map((f) => [f.firingTime.slice(11, 16), f.status])).toEqual([
      ['05:00', 'MISSED'],
      ['04:00', 'MISSED'],
      ['03:00', 'MISSED'],
      ['02:00', 'MISSED'],
      ['01:00', 'MISSED'],
    ]);
    expect(recorded[0].backupId).toMatch(/^\d{8}T\d{9}Z-[0-9a-f]{6}$/);
    const late = await getBackup(api.runtime.controlPlane, recorded[0].backupId);
    expect(late.trigger).toMatchObject({ kind: 'schedule', late: true });
  });

  it('accrues nothing while a schedule is paused', async () => {
    await createSchedule('paused', '*/10 * * * *', false);
    clock += 3 * 60 * 60_000;
    expect((await tick()).started.filter((run) => run.scheduleId === 'paused')).toEqual([]);
    const current = await api.call('GET', '/api/dr/schedules/paused');
    await api.call('PUT', '/api/dr/schedules/paused', {
      name: 'paused',
      scheduleType: 'FULL',
      cronExpression: '*/10 * * * *',
      targets: ['disk'],
      active: true,
      version: current.body.version,
    });
    clock += 60_000;
    const resumed = await tick();
    expect(resumed.missed.filter((m) => m.scheduleId === 'paused')).toEqual([]);
    clock += 10 * 60_000;
    expect((await tick()).started.filter((run) => run.scheduleId === 'paused')).toHaveLength(1);
  });
});
