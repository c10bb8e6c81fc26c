import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { holders, planRetention, type RetentionBackup } from '../../functions/core/retention.ts';

const NOW = new Date('2026-11-24T12:00:00Z');
const DAY = 24 * 60 * 60 * 1000;

/**
 * Random histories: runs of two schedules over 120 days to targets A and B, as the worker makes them — an
 * INCREMENTAL builds on the newest earlier restore point (any schedule), a FULL on nothing; some runs fail
 * or are flagged; a PARTIAL run reached some of its targets only.
 */
const history = fc
  .array(
    fc.record({
      schedule: fc.constantFrom('daily', 'hourly'),
      type: fc.constantFrom('FULL', 'INCREMENTAL', 'INCREMENTAL', 'SCHEMA'),
      status: fc.constantFrom('SUCCESS', 'SUCCESS', 'SUCCESS', 'PARTIAL', 'FAILED', 'RUNNING'),
      flagged: fc.integer({ min: 0, max: 9 }),
      verified: fc.integer({ min: 0, max: 7 }),
      gapHours: fc.integer({ min: 1, max: 72 }),
      targets: fc.constantFrom(['A'], ['B'], ['A', 'B'], ['A', 'B']),
      reached: fc.integer({ min: 0, max: 1 }),
    }),
    { maxLength: 60 },
  )
  .map((runs) => {
    let at = NOW.getTime() - 120 * DAY;
    const backups: RetentionBackup[] = [];
    runs.forEach((run, index) => {
      at += run.gapHours * 60 * 60 * 1000;
      if (at > NOW.getTime()) return;
      const previous = [...backups]
        .reverse()
        .find((b) => b.type !== 'SCHEMA' && (b.status === 'SUCCESS' || b.status === 'PARTIAL') && !b.review);
      const type = run.type === 'INCREMENTAL' && !previous ? 'FULL' : run.type;
      const id = `${new Date(at).toISOString().replace(/[-:.]/g, '')}-${String(index).padStart(6, '0')}`;
      // PARTIAL: one target reached (of two; with one target the run is PARTIAL only in name)
      const status = run.status === 'PARTIAL' && run.targets.length === 1 ? 'SUCCESS' : run.status;
      const targetStatus = (target: string, position: number) =>
        status === 'SUCCESS'
          ? 'SUCCESS'
          : status === 'PARTIAL'
            ? position === run.reached
              ? 'SUCCESS'
              : 'FAILED'
            : status === 'RUNNING'
              ? 'RUNNING'
              : 'FAILED';
      backups.push({
        id,
        scheduleId: run.schedule,
        type,
        status,
        targets: run.targets.map((targetId, position) => ({
          targetId,
          status: targetStatus(targetId, position),
        })),
        startedAt: new Date(at).toISOString(),
        ...(type === 'INCREMENTAL' && previous ? { parent: previous.id } : {}),
        ...(run.flagged === 0 ? { review: 'shrank' } : {}),
        ...(run.verified === 0 ? { verifiedAt: new Date(at + 1000).toISOString() } : {}),
      });
    });
    return backups;
  });
const policy = fc.record({
  daily: fc.integer({ min: 1, max: 60 }),
  hourly: fc.integer({ min: 1, max: 60 }),
  ceiling: fc.integer({ min: 7, max: 365 }),
});

const good = (b: RetentionBackup) => (b.status === 'SUCCESS' || b.status === 'PARTIAL') && !b.review;
const restorePoint = (b: RetentionBackup) => good(b) && b.type !== 'SCHEMA';
/** The newest good backup of a schedule on a target, of data (or of structure only). */
const newestOn = (backups: RetentionBackup[], schedule: string, target: string, schema: boolean) =>
  backups
    .filter(
      (b) =>
        b.scheduleId === schedule &&
        good(b) &&
        (b.type === 'SCHEMA') === schema &&
        holders(b).includes(target),
    )
    .at(-1);

describe('planRetention', () => {
  it('never deletes a backup that a kept backup builds on', () => {
    fc.assert(
      fc.property(history, policy, (backups, days) => {
        const plan = planRetention(backups, { retentionDays: days, defaultDays: days.ceiling }, NOW);
        const deleted = new Set(plan.delete.map((d) => d.id));
        for (const kept of plan.keep) {
          const backup = backups.find((b) => b.id === kept.id)!;
          if (backup.parent !== undefined) expect(deleted.has(backup.parent)).toBe(false);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('never deletes, per target, the newest good backup of a schedule there, the newest verified one, or a running one', () => {
    fc.assert(
      fc.property(history, policy, (backups, days) => {
        const plan = planRetention(backups, { retentionDays: days, defaultDays: days.ceiling }, NOW);
        const deleted = new Set(plan.delete.map((d) => d.id));
        for (const schedule of ['daily', 'hourly'])
          for (const target of ['A', 'B'])
            for (const schema of [false, true]) {
              const newest = newestOn(backups, schedule, target, schema);
              if (newest) expect(deleted.has(newest.id)).toBe(false);
            }
        const verified = backups.filter((b) => b.verifiedAt && restorePoint(b)).at(-1);
        if (verified) expect(deleted.has(verified.id)).toBe(false);
        for (const running of backups.filter((b) => b.status === 'RUNNING'))
          expect(deleted.has(running.id)).toBe(false);
      }),
      { numRuns: 300 },
    );
  });

  it('deletes exactly what is past its age and needed by nothing kept', () => {
    fc.assert(
      fc.property(history, policy, (backups, days) => {
        const plan = planRetention(backups, { retentionDays: days, defaultDays: days.ceiling }, NOW);
        expect(plan.keep.length + plan.delete.length).toBe(backups.length);
        const keptIds = new Set(plan.keep.map((k) => k.id));
        for (const backup of backups) {
          const limit = Math.min(days[backup.scheduleId as 'daily' | 'hourly'], days.ceiling);
          const young = NOW.getTime() - Date.parse(backup.startedAt) <= limit * DAY;
          if (young) expect(keptIds.has(backup.id)).toBe(true);
          // Anything kept while old has a reason beyond its age, and that reason holds.
          const reason = plan.keep.find((k) => k.id === backup.id)?.reason;
          if (!young && reason !== undefined) {
            if (reason === 'needed by a kept backup')
              expect(backups.some((b) => b.parent === backup.id && keptIds.has(b.id))).toBe(true);
            else if (reason === 'newest restore point' || reason === 'newest structure backup')
              expect(
                holders(backup).some(
                  (target) =>
                    newestOn(backups, backup.scheduleId, target, reason === 'newest structure backup') ===
                    backup,
                ),
              ).toBe(true);
            else if (reason === 'newest verified')
              expect(backups.filter((b) => b.verifiedAt && restorePoint(b)).at(-1)).toBe(backup);
            else expect(reason).toBe('running');
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('keeps the last copy on a target that later PARTIAL runs missed, and never counts a SCHEMA backup as a restore point', () => {
    const day = (n: number) => new Date(NOW.getTime() - n * DAY).toISOString();
    const on = (...held: string[]) =>
      ['A', 'B'].map((targetId) => ({ targetId, status: held.includes(targetId) ? 'SUCCESS' : 'FAILED' }));
    const backups: RetentionBackup[] = [
      {
        id: 'a-40',
        scheduleId: 'daily',
        type: 'FULL',
        status: 'SUCCESS',
        startedAt: day(40),
        targets: on('A', 'B'),
      },
      {
        id: 'b-35',
        scheduleId: 'daily',
        type: 'FULL',
        status: 'PARTIAL',
        startedAt: day(35),
        targets: on('A'),
      },
      {
        id: 'c-33',
        scheduleId: 'daily',
        type: 'FULL',
        status: 'PARTIAL',
        startedAt: day(33),
        targets: on('A'),
      },
      {
        id: 'd-32',
        scheduleId: 'daily',
        type: 'SCHEMA',
        status: 'SUCCESS',
        startedAt: day(32),
        targets: on('A', 'B'),
      },
    ];
    const plan = planRetention(backups, { retentionDays: {}, defaultDays: 30 }, NOW);
    expect(plan.keep).toEqual([
      { id: 'd-32', reason: 'newest structure backup' },
      { id: 'c-33', reason: 'newest restore point' },
      { id: 'a-40', reason: 'newest restore point' },
    ]);
    expect(plan.delete.map((d) => d.id)).toEqual(['b-35']);
  });

  it('explains a small history', () => {
    const day = (n: number) => new Date(NOW.getTime() - n * DAY).toISOString();
    const backups: RetentionBackup[] = [
      { id: 'a-40', scheduleId: 'daily', type: 'FULL', status: 'SUCCESS', startedAt: day(40) },
      {
        id: 'b-39',
        scheduleId: 'daily',
        type: 'INCREMENTAL',
        status: 'SUCCESS',
        startedAt: day(39),
        parent: 'a-40',
      },
      { id: 'c-20', scheduleId: 'daily', type: 'FULL', status: 'FAILED', startedAt: day(20) },
      { id: 'd-10', scheduleId: 'daily', type: 'FULL', status: 'SUCCESS', startedAt: day(10) },
      {
        id: 'e-09',
        scheduleId: 'daily',
        type: 'INCREMENTAL',
        status: 'SUCCESS',
        startedAt: day(9),
        parent: 'd-10',
      },
    ];
    const plan = planRetention(backups, { retentionDays: { daily: 9.5 }, defaultDays: 30 }, NOW);
    expect(plan.delete.map((d) => d.id)).toEqual(['c-20', 'b-39', 'a-40']);
    expect(plan.keep).toEqual([
      { id: 'e-09', reason: 'newest restore point' },
      { id: 'd-10', reason: 'needed by a kept backup' },
    ]);
  });
});
