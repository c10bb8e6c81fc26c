import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  achievedRpo,
  durations,
  rpoViolations,
  rtoViolations,
  successRate,
  type BackupFact,
} from '../../functions/core/metrics.ts';

const H = 3_600_000;
const T0 = Date.parse('2026-11-01T00:00:00Z');
const at = (hours: number) => new Date(T0 + hours * H).toISOString();

/** A good backup of `schedule` that started at `start` h, restores to `start` h and took `took` h. */
function backup(
  start: number,
  took = 0.1,
  status: BackupFact['status'] = 'SUCCESS',
  schedule = 'hourly',
): BackupFact {
  return {
    id: `b${start}`,
    scheduleId: schedule,
    status,
    startedAt: at(start),
    finishedAt: at(start + took),
    restorePoint: at(start),
    targets: [{ targetId: 'primary', status: status === 'FAILED' ? 'FAILED' : 'SUCCESS' }],
  };
}

/** Runs that start within `start` minutes of T0 and take up to `took` minutes, some failed. */
function runsArbitrary(start: number, took: number, maxLength: number) {
  return fc.array(
    fc.record({
      start: fc.integer({ min: 0, max: start }),
      took: fc.integer({ min: 0, max: took }),
      ok: fc.boolean(),
    }),
    { maxLength },
  );
}

/** Random runs (minutes after T0) as backups of one schedule, each restoring to its start. */
function historyOf(runs: readonly { start: number; took: number; ok: boolean }[]): BackupFact[] {
  const minute = 60_000;
  return runs.map((run, index) => ({
    id: `b${index}`,
    scheduleId: 's',
    status: run.ok ? 'SUCCESS' : 'FAILED',
    startedAt: new Date(T0 + run.start * minute).toISOString(),
    finishedAt: new Date(T0 + (run.start + run.took) * minute).toISOString(),
    restorePoint: new Date(T0 + run.start * minute).toISOString(),
    targets: [],
  }));
}

describe('RPO violations', () => {
  const range = { from: T0, to: T0 + 48 * H };

  it('finds each gap longer than the RPO, from when the newest point turned too old to the next good backup', () => {
    // Hourly backups taking 6 minutes, RPO 1.5 h; 4 h and 5 h failed, 3 h, 6 h and 7 h were missed.
    const history = [0, 1, 2, 8, 9]
      .map((h) => backup(h))
      .concat([backup(4, 0.2, 'FAILED'), backup(5, 0.2, 'FAILED')]);
    const violations = rpoViolations(history, 1.5, range, T0 + 9.5 * H, [T0 + 3 * H, T0 + 6 * H, T0 + 7 * H]);
    expect(violations).toEqual([
      {
        kind: 'RPO',
        start: at(3.5),
        end: at(8.1),
        ongoing: false,
        objective: 1.5,
        achieved: 6.1,
        startsBeforeRange: false,
        endsAfterRange: false,
        missedFirings: 2,
      },
    ]);
    // With an RPO of exactly 1 h, hourly backups that take 6 minutes leave 6 stale minutes every hour.
    expect(
      rpoViolations([backup(0), backup(1), backup(2)], 1, range, T0 + 2.5 * H).map((v) => [v.start, v.end]),
    ).toEqual([
      [at(1), at(1.1)],
      [at(2), at(2.1)],
    ]);
  });

  it('reports a violation still going on, and one that spans the start of the range', () => {
    const history = [backup(0), backup(1), backup(10)];
    const violations = rpoViolations(history, 2, { from: T0 + 5 * H, to: T0 + 20 * H }, T0 + 15 * H);
    expect(violations).toEqual([
      expect.objectContaining({
        start: at(3),
        end: at(10.1),
        ongoing: false,
        startsBeforeRange: true,
        endsAfterRange: false,
        achieved: 9.1,
      }),
      expect.objectContaining({ start: at(12), ongoing: true, endsAfterRange: true, achieved: 5 }),
    ]);
    expect(violations[1]!.end).toBeUndefined();
    // The range ends before the second: only the first remains.
    expect(rpoViolations(history, 2, { from: T0, to: T0 + 11 * H }, T0 + 15 * H)).toHaveLength(1);
  });

  it('counts a slow backup: one whose own restore point is already too old when it finishes', () => {
    // Restore point at 0, finished at 3 h, RPO 1 h: stale from 1 h (no earlier backup: from its finish) on.
    const violations = rpoViolations([backup(0, 3), backup(3.5, 0.1)], 1, range, T0 + 4 * H);
    expect(violations).toEqual([expect.objectContaining({ start: at(3), end: at(3.6), achieved: 3.6 })]);
  });

  it('ignores failed, flagged, running and SCHEMA backups as restore points, and nothing before the first one', () => {
    const flagged = { ...backup(2), review: 'empty' };
    const running: BackupFact = { ...backup(3), status: 'RUNNING', finishedAt: undefined };
    // Structure only: no rows to restore, so it neither ends a violation nor counts for the achieved RPO
    const schema: BackupFact = { ...backup(3.5), id: 'schema', type: 'SCHEMA' };
    expect(
      rpoViolations([backup(0), backup(2, 0.1, 'FAILED'), flagged, running, schema], 1, range, T0 + 4 * H),
    ).toEqual([expect.objectContaining({ start: at(1), ongoing: true, achieved: 4 })]);
    expect(achievedRpo([backup(0), schema], { from: T0 + 3.9 * H, to: T0 + 4 * H }, T0 + 4 * H)).toBe(4);
    expect(rpoViolations([], 1, range, T0 + 4 * H)).toEqual([]);
  });

  it('agrees with staleness computed minute by minute, on random histories', () => {
    fc.assert(
      fc.property(
        runsArbitrary(600, 120, 20),
        fc.integer({ min: 15, max: 240 }),
        fc.integer({ min: 0, max: 800 }),
        (runs, rpoMinutes, nowMinute) => {
          const minute = 60_000;
          const history = historyOf(runs);
          const now = T0 + nowMinute * minute;
          const spans = rpoViolations(
            history,
            rpoMinutes / 60,
            { from: T0 - 1000 * H, to: T0 + 1000 * H },
            now,
          );
          const good = runs.filter((run) => run.ok && run.start + run.took <= nowMinute);
          const first = Math.min(...good.map((run) => run.start + run.took));
          for (let t = 0.5; t < nowMinute; t++) {
            const available = good.filter((run) => run.start + run.took <= t);
            const stale =
              available.length > 0 && t - Math.max(...available.map((run) => run.start)) > rpoMinutes;
            const inSpan = spans.some(
              (span) =>
                Date.parse(span.start) <= T0 + t * minute &&
                (span.end === undefined || T0 + t * minute < Date.parse(span.end)),
            );
            if (t < first) expect(inSpan).toBe(false);
            else expect(inSpan, `minute ${t}`).toBe(stale);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('achieved RPO', () => {
  it('is the worst age of the newest restore point within the range', () => {
    const history = [backup(0, 0.5), backup(1, 0.5), backup(5, 0.25, 'FAILED'), backup(10, 1), backup(11)];
    expect(achievedRpo(history, { from: T0, to: T0 + 30 * H }, T0 + 30 * H)).toBe(19);
    // Up to 11.05 h: the 10 h point was available from 11 h; before, the 1 h point aged to 10 h
    expect(achievedRpo(history, { from: T0, to: T0 + 11.05 * H }, T0 + 30 * H)).toBe(10);
    expect(achievedRpo(history, { from: T0 + 11 * H, to: T0 + 11.05 * H }, T0 + 30 * H)).toBe(1.05);
    expect(achievedRpo(history, { from: T0 + 12 * H, to: T0 + 13 * H }, T0 + 30 * H)).toBe(2);
    expect(
      achievedRpo([backup(5, 0.5, 'FAILED')], { from: T0, to: T0 + 30 * H }, T0 + 30 * H),
    ).toBeUndefined();
  });

  it('agrees with the age computed minute by minute, on random histories', () => {
    fc.assert(
      fc.property(
        runsArbitrary(300, 60, 15),
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: 0, max: 400 }),
        (runs, fromMinute, length, nowMinute) => {
          const minute = 60_000;
          const history = historyOf(runs);
          const toMinute = fromMinute + length;
          const end = Math.min(toMinute, nowMinute);
          const good = runs.filter((run) => run.ok);
          // The age just before minute t (a backup finishing at t is not yet there), and at the range's ends.
          const age = (t: number, finished: (at: number) => boolean) => {
            const points = good.filter((run) => finished(run.start + run.took)).map((run) => run.start);
            return points.length > 0 ? t - Math.max(...points) : undefined;
          };
          const ages = [age(fromMinute, (at) => at <= fromMinute)];
          for (let t = fromMinute + 1; t <= end; t++) ages.push(age(t, (at) => at < t));
          ages.push(age(end, (at) => at <= end));
          const known = ages.filter((value): value is number => value !== undefined);
          const expected = fromMinute > end || known.length === 0 ? undefined : Math.max(...known) / 60;
          const got = achievedRpo(
            history,
            { from: T0 + fromMinute * minute, to: T0 + toMinute * minute },
            T0 + nowMinute * minute,
          );
          if (expected === undefined) expect(got).toBeUndefined();
          else expect(got).toBeCloseTo(expected, 3);
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('RTO violations, success rate, durations', () => {
  const range = { from: T0, to: T0 + 48 * H };

  it('flags DR tests slower than their objective, within the range', () => {
    const tests = [
      {
        id: 't1',
        testType: 'RESTORE_TEST',
        startedAt: at(1),
        finishedAt: at(6),
        actualRTO: 5,
        objectiveRTO: 4,
      },
      {
        id: 't2',
        testType: 'RESTORE_TEST',
        startedAt: at(2),
        finishedAt: at(3),
        actualRTO: 1,
        objectiveRTO: 4,
      },
      {
        id: 't3',
        testType: 'RECOVERY_TIME_TEST',
        startedAt: at(-10),
        finishedAt: at(-2),
        actualRTO: 8,
        objectiveRTO: 4,
      },
    ];
    expect(rtoViolations(tests, range)).toEqual([
      {
        kind: 'RTO',
        start: at(1),
        end: at(6),
        ongoing: false,
        objective: 4,
        achieved: 5,
        startsBeforeRange: false,
        endsAfterRange: false,
        testId: 't1',
      },
    ]);
  });

  it('counts success overall, per schedule, per target and per day; PARTIAL is not a success', () => {
    const partial: BackupFact = {
      ...backup(30, 0.5, 'PARTIAL', 'nightly'),
      targets: [
        { targetId: 'primary', status: 'SUCCESS' },
        { targetId: 'offsite', status: 'FAILED' },
      ],
    };
    const history = [
      backup(1),
      backup(2),
      backup(3, 0.1, 'FAILED'),
      partial,
      { ...backup(4), status: 'RUNNING' as const },
    ];
    const rates = successRate(history, range);
    expect(rates.overall).toEqual({ total: 4, succeeded: 2, partial: 1, failed: 1, rate: 0.5 });
    expect(rates.bySchedule.nightly).toEqual({ total: 1, succeeded: 0, partial: 1, failed: 0, rate: 0 });
    expect(rates.byTarget).toEqual({
      offsite: { total: 1, succeeded: 0, partial: 0, failed: 1, rate: 0 },
      primary: { total: 4, succeeded: 3, partial: 0, failed: 1, rate: 0.75 },
    });
    expect(Object.keys(rates.byDay)).toEqual(['2026-11-01', '2026-11-02']);
  });

  it('gives the average and the 95th percentile of good backups in the range', () => {
    const history = Array.from({ length: 20 }, (_, index) => backup(index, (index + 1) / 60));
    expect(durations(history, range)).toEqual({ count: 20, average: 630, p95: 1140 });
    expect(durations([], range)).toEqual({ count: 0, average: null, p95: null });
  });
});
