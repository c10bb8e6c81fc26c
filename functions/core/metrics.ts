/**
 * RTO/RPO figures and violations, computed from the backup catalog and the DR tests: pure functions of
 * their inputs (no clock of their own), so that every figure can be tested exactly.
 *
 * Definitions
 * - Restore point: a backup with data (FULL or INCREMENTAL; a SCHEMA backup is structure only) that completed
 *   on at least one target and is not flagged for review. It becomes available when it finishes; it restores
 *   the state at its `restorePoint`.
 * - Staleness at instant t: t minus the newest restore point available at t (infinite before the first).
 * - RPO violation: a maximal span in which staleness exceeds the RPO. It starts when the newest restore
 *   point turns RPO old (or, before any backup, at the start of what is observed) and ends when a backup
 *   whose restore point is younger than the RPO finishes; it is ongoing when that has not happened yet.
 *   Missed firings inside a span are counted in it (they are why a span is long).
 * - RTO violation: a DR test whose measured actualRTO exceeded the RTO in force when it ran.
 */
export interface BackupFact {
  readonly id: string;
  readonly scheduleId: string;
  /** Missing is taken for a backup with data. */
  readonly type?: 'FULL' | 'INCREMENTAL' | 'SCHEMA';
  readonly status: 'RUNNING' | 'SUCCESS' | 'PARTIAL' | 'FAILED';
  readonly startedAt: string;
  readonly finishedAt?: string;
  readonly restorePoint?: string;
  readonly review?: string;
  readonly targets: readonly { readonly targetId: string; readonly status: string }[];
}

export interface TestFact {
  readonly id: string;
  readonly testType: string;
  readonly startedAt: string;
  readonly finishedAt?: string;
  readonly actualRTO?: number;
  readonly objectiveRTO?: number;
}

export interface Range {
  readonly from: number;
  readonly to: number;
}

export interface Violation {
  readonly kind: 'RPO' | 'RTO';
  readonly start: string;
  /** Absent while the violation is ongoing. */
  readonly end?: string;
  readonly ongoing: boolean;
  /** Hours. */
  readonly objective: number;
  /** Hours: the worst staleness in the span (RPO, up to its end or now), or the test's actual RTO. */
  readonly achieved: number;
  readonly startsBeforeRange: boolean;
  readonly endsAfterRange: boolean;
  /** RPO: firings missed within the span. RTO: the test. */
  readonly missedFirings?: number;
  readonly testId?: string;
}

const HOUR = 3_600_000;

/** Completed on at least one target and not flagged for review (of any type). */
export function isGood(backup: Pick<BackupFact, 'status' | 'review'>): boolean {
  return (backup.status === 'SUCCESS' || backup.status === 'PARTIAL') && backup.review === undefined;
}

/** A backup the data can be brought back to: good, and not SCHEMA (which restores structure only). */
export function isRestorePoint(backup: Pick<BackupFact, 'status' | 'review' | 'type'>): boolean {
  return isGood(backup) && backup.type !== 'SCHEMA';
}

/**
 * RPO violations overlapping `range`, from the first restore point on (before it nothing was protected yet,
 * which the catalog cannot tell from "not configured") up to `now`.
 *
 * Between two finishes the newest restore point N is fixed and staleness t − N grows, so the stale part of
 * that interval is (max(finish, N + rpo), next finish); the spans are these pieces, merged where one ends
 * exactly where the next begins (a backup finished but its restore point was already too old).
 */
export function rpoViolations(
  backups: readonly BackupFact[],
  rpoHours: number,
  range: Range,
  now: number,
  missedFirings: readonly number[] = [],
): Violation[] {
  const rpo = rpoHours * HOUR;
  const finishes = backups
    .filter(
      (backup) =>
        isRestorePoint(backup) && backup.finishedAt !== undefined && backup.restorePoint !== undefined,
    )
    .map((backup) => ({ at: Date.parse(backup.finishedAt!), point: Date.parse(backup.restorePoint!) }))
    .filter((finish) => finish.at <= now)
    .sort((a, b) => a.at - b.at);
  const pieces: { start: number; end: number; worst: number; open: boolean }[] = [];
  let newest = -Infinity;
  for (let i = 0; i < finishes.length; i++) {
    newest = Math.max(newest, finishes[i]!.point);
    const last = i === finishes.length - 1;
    const until = last ? now : finishes[i + 1]!.at;
    const start = Math.max(finishes[i]!.at, newest + rpo);
    if (until > start) pieces.push({ start, end: until, worst: until - newest, open: last });
  }
  const spans: typeof pieces = [];
  for (const piece of pieces) {
    const previous = spans.at(-1);
    if (previous && previous.end === piece.start)
      spans[spans.length - 1] = {
        ...previous,
        end: piece.end,
        worst: Math.max(previous.worst, piece.worst),
        open: piece.open,
      };
    else spans.push(piece);
  }
  return spans
    .filter((span) => span.start < range.to && span.end > range.from)
    .map((span) => ({
      kind: 'RPO' as const,
      start: new Date(span.start).toISOString(),
      ...(span.open ? {} : { end: new Date(span.end).toISOString() }),
      ongoing: span.open,
      objective: rpoHours,
      achieved: round(span.worst / HOUR),
      startsBeforeRange: span.start < range.from,
      endsAfterRange: span.open || span.end > range.to,
      missedFirings: missedFirings.filter((at) => at >= span.start && at < span.end).length,
    }));
}

/**
 * The RPO a set of backups (one schedule's) achieved over `range`: the worst staleness of its newest restore
 * point at any instant of the range, in hours; undefined when none was available by the range's end. Staleness
 * only grows between two finishes, so the worst is at the end of one of these intervals (clipped to the range).
 */
export function achievedRpo(backups: readonly BackupFact[], range: Range, now: number): number | undefined {
  const finishes = backups
    .filter(
      (backup) =>
        isRestorePoint(backup) && backup.finishedAt !== undefined && backup.restorePoint !== undefined,
    )
    .map((backup) => ({ at: Date.parse(backup.finishedAt!), point: Date.parse(backup.restorePoint!) }))
    .filter((finish) => finish.at <= Math.min(now, range.to))
    .sort((a, b) => a.at - b.at);
  const end = Math.min(now, range.to);
  let newest = -Infinity;
  let worst: number | undefined;
  for (let i = 0; i < finishes.length; i++) {
    newest = Math.max(newest, finishes[i]!.point);
    // This point is the newest from its finish until the next one (excluded) or the end (included).
    const next = i === finishes.length - 1 ? Infinity : finishes[i + 1]!.at;
    const until = Math.min(next, end);
    const from = Math.max(finishes[i]!.at, range.from);
    if (next <= end ? until <= from : until < from) continue; // not the newest at any instant of the range
    worst = Math.max(worst ?? 0, until - newest);
  }
  return worst === undefined ? undefined : round(worst / HOUR);
}

/** DR tests in `range` (by when they finished) whose actual RTO exceeded their objective. */
export function rtoViolations(tests: readonly TestFact[], range: Range): Violation[] {
  return tests
    .filter(
      (test) =>
        test.finishedAt !== undefined &&
        test.actualRTO !== undefined &&
        test.objectiveRTO !== undefined &&
        test.actualRTO > test.objectiveRTO &&
        Date.parse(test.finishedAt) >= range.from &&
        Date.parse(test.finishedAt) <= range.to,
    )
    .map((test) => ({
      kind: 'RTO' as const,
      start: test.startedAt,
      end: test.finishedAt!,
      ongoing: false,
      objective: test.objectiveRTO!,
      achieved: test.actualRTO!,
      startsBeforeRange: Date.parse(test.startedAt) < range.from,
      endsAfterRange: false,
      testId: test.id,
    }));
}

export interface Rate {
  readonly total: number;
  readonly succeeded: number;
  readonly partial: number;
  readonly failed: number;
  /** succeeded / total (PARTIAL is not a success), or null with nothing finished. */
  readonly rate: number | null;
}

function rateOf(statuses: readonly string[]): Rate {
  const succeeded = statuses.filter((status) => status === 'SUCCESS').length;
  const partial = statuses.filter((status) => status === 'PARTIAL').length;
  const failed = statuses.filter((status) => status === 'FAILED').length;
  const total = succeeded + partial + failed;
  return { total, succeeded, partial, failed, rate: total === 0 ? null : round(succeeded / total) };
}

/** Backups that finished in `range`: overall, per schedule, per target (its own status), per UTC day. */
export function successRate(
  backups: readonly BackupFact[],
  range: Range,
): {
  overall: Rate;
  bySchedule: Record<string, Rate>;
  byTarget: Record<string, Rate>;
  byDay: Record<string, Rate>;
} {
  const finished = backups.filter(
    (backup) =>
      backup.status !== 'RUNNING' &&
      backup.finishedAt !== undefined &&
      Date.parse(backup.finishedAt) >= range.from &&
      Date.parse(backup.finishedAt) <= range.to,
  );
  const group = (key: (backup: BackupFact) => string) => {
    const groups = new Map<string, string[]>();
    for (const backup of finished)
      groups.set(key(backup), [...(groups.get(key(backup)) ?? []), backup.status]);
    return Object.fromEntries(
      [...groups].sort(([a], [b]) => a.localeCompare(b)).map(([name, list]) => [name, rateOf(list)]),
    );
  };
  const targets = new Map<string, string[]>();
  for (const backup of finished)
    for (const target of backup.targets)
      targets.set(target.targetId, [
        ...(targets.get(target.targetId) ?? []),
        target.status === 'SUCCESS' ? 'SUCCESS' : 'FAILED',
      ]);
  return {
    overall: rateOf(finished.map((backup) => backup.status)),
    bySchedule: group((backup) => backup.scheduleId),
    byTarget: Object.fromEntries(
      [...targets].sort(([a], [b]) => a.localeCompare(b)).map(([name, list]) => [name, rateOf(list)]),
    ),
    byDay: group((backup) => backup.finishedAt!.slice(0, 10)),
  };
}

/** Average and 95th percentile (nearest rank) of the durations, in seconds, of good backups finished in range. */
export function durations(
  backups: readonly BackupFact[],
  range: Range,
): { count: number; average: number | null; p95: number | null } {
  const seconds = backups
    .filter(
      (backup) =>
        isGood(backup) &&
        backup.finishedAt !== undefined &&
        Date.parse(backup.finishedAt) >= range.from &&
        Date.parse(backup.finishedAt) <= range.to,
    )
    .map((backup) => (Date.parse(backup.finishedAt!) - Date.parse(backup.startedAt)) / 1000)
    .sort((a, b) => a - b);
  if (seconds.length === 0) return { count: 0, average: null, p95: null };
  const average = seconds.reduce((sum, value) => sum + value, 0) / seconds.length;
  const p95 = seconds[Math.ceil(0.95 * seconds.length) - 1]!;
  return { count: seconds.length, average: round(average), p95 };
}

function round(value: number): number {
  return Math.round(value * 10_000) / 10_000;
}
