import { describe, expect, it } from 'vitest';
import { checkCron, nextRuns } from '../../functions/core/cron.ts';

describe('checkCron', () => {
  it.each([
    '0 * * * *',
    '0 2 * * *',
    '0 */6 * * *',
    '0 3 * * 0',
    '0 0 1 * *',
    '*/15 9-17 * * MON-FRI',
    '0 0 1 JAN,JUL *',
    '5,35 * * * 7',
  ])('accepts %s', (expression) => {
    expect(checkCron(expression)).toEqual({ ok: true });
  });

  it.each([
    ['0 2 * *', 'expected 5 fields'],
    ['0 0 2 * * *', 'expected 5 fields'],
    ['@hourly', 'expected 5 fields'],
    ['0 0 L * *', 'not standard cron syntax'],
    ['0 0 * * 1#2', 'not standard cron syntax'],
    ['0 0 ? * *', 'not standard cron syntax'],
    ['H 0 * * *', 'not standard cron syntax'],
    ['60 * * * *', 'Constraint error'],
    ['*/0 * * * *', 'cannot repeat'],
    ['0 0 30 2 *', 'Invalid explicit day of month'],
  ])('refuses %s (%s)', (expression, reason) => {
    const check = checkCron(expression);
    expect(check.ok).toBe(false);
    expect(check.reason).toContain(reason);
  });

  it('refuses an unknown time zone', () => {
    expect(checkCron('0 2 * * *', 'Nowhere/Land')).toEqual({
      ok: false,
      reason: "unknown time zone 'Nowhere/Land'",
    });
  });
});

describe('nextRuns', () => {
  it('follows daylight saving time in the given zone', () => {
    // Europe/Paris moves from UTC+1 to UTC+2 on 2026-03-29.
    expect(nextRuns('0 2 * * *', 'Europe/Paris', new Date('2026-03-27T12:00:00Z'), 3)).toEqual([
      '2026-03-28T01:00:00.000Z',
      '2026-03-29T01:00:00.000Z',
      '2026-03-30T00:00:00.000Z',
    ]);
  });

  it('is strictly after the given instant', () => {
    expect(nextRuns('0 * * * *', 'UTC', new Date('2026-01-01T01:00:00.000Z'), 1)).toEqual([
      '2026-01-01T02:00:00.000Z',
    ]);
  });
});
