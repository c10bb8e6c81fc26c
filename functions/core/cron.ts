import { CronExpressionParser } from 'cron-parser';

/**
 * Standard 5-field Unix cron (minute hour day-of-month month day-of-week), as in the seed guide's table,
 * evaluated in an explicit IANA time zone (UTC by default).
 *
 * Parsing is cron-parser's; this module only narrows what it accepts to the standard syntax, so that an
 * expression valid here has the same meaning in any cron implementation: cron-parser also takes seconds
 * fields, `@daily` macros and Quartz/Jenkins extensions (`L`, `#`, `?`, `H`), which we refuse.
 */

const FIELD_NAMES = ['minute', 'hour', 'day of month', 'month', 'day of week'] as const;
const MONTH_NAMES = /JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC/gi;
const DAY_NAMES = /SUN|MON|TUE|WED|THU|FRI|SAT/gi;
const STANDARD_FIELD = /^[\d*,/-]+$/;

export interface CronCheck {
  readonly ok: boolean;
  /** Why the expression is refused; set when `ok` is false. */
  readonly reason?: string;
}

export function isValidTimeZone(timeZone: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone });
    return true;
  } catch {
    return false;
  }
}

export function checkCron(expression: string, timeZone = 'UTC'): CronCheck {
  const fields = expression.trim().split(/\s+/);
  if (fields.length !== 5) {
    return {
      ok: false,
      reason: `expected 5 fields (minute hour day-of-month month day-of-week), got ${fields.length}`,
    };
  }
  for (const [index, field] of fields.entries()) {
    let bare = field;
    if (index === 3) bare = bare.replace(MONTH_NAMES, '1');
    if (index === 4) bare = bare.replace(DAY_NAMES, '1');
    if (!STANDARD_FIELD.test(bare)) {
      return { ok: false, reason: `the ${FIELD_NAMES[index]} field '${field}' is not standard cron syntax` };
    }
  }
  if (!isValidTimeZone(timeZone)) return { ok: false, reason: `unknown time zone '${timeZone}'` };
  try {
    CronExpressionParser.parse(expression, { tz: timeZone }).next();
    return { ok: true };
  } catch (error) {
    return { ok: false, reason: (error as Error).message };
  }
}

/** The next `count` firing times strictly after `after`, as ISO-8601 UTC strings. */
export function nextRuns(expression: string, timeZone: string, after: Date, count: number): string[] {
  const interval = CronExpressionParser.parse(expression, { tz: timeZone, currentDate: after });
  return interval.take(count).map((date) => date.toISOString() ?? '');
}

/** Firing times in (after, until], oldest first, at most `limit` (the newest `limit` when there are more). */
export function firingsBetween(
  expression: string,
  timeZone: string,
  after: Date,
  until: Date,
  limit = 1000,
): Date[] {
  const interval = CronExpressionParser.parse(expression, { tz: timeZone, currentDate: after });
  const firings: Date[] = [];
  for (;;) {
    const next = interval.next().toDate();
    if (next.getTime() > until.getTime()) return firings;
    firings.push(next);
    if (firings.length > limit) firings.shift();
  }
}
