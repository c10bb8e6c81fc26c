import type { ControlPlane } from '../context.ts';
import { ValidationError } from '../errors.ts';
import {
  durations,
  achievedRpo,
  isRestorePoint,
  rpoViolations,
  rtoViolations,
  successRate,
  type Range,
  type Violation,
} from '../metrics.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import { findConfig } from './config-service.ts';
import type { FiringRecord } from './dispatch-service.ts';
import { listDrTests, type DrTestRecord } from './drtest-service.ts';
import type { BackupRecord } from '../records.ts';

const DAY_MS = 86_400_000;
const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
const ISO_DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$/;

/**
 * One bound of a range: an ISO 8601 date (`2026-01-31`, UTC) or date-time with a zone. A date that does not
 * exist (`2025-02-30`) is refused, never moved. A date alone means the start of that day, or as an end, its
 * last millisecond: `startDate=endDate=2026-01-31` is that whole day.
 */
export function parseBound(value: string, field: string, end: boolean): number {
  const date = ISO_DATE.exec(value) ?? ISO_DATE_TIME.exec(value);
  if (!date)
    throw ValidationError.forField(
      field,
      'must be an ISO 8601 date (2026-01-31) or date-time with a zone (2026-01-31T12:00:00Z)',
    );
  const [year, month, day] = [Number(date[1]), Number(date[2]), Number(date[3])];
  const midnight = Date.UTC(year, month - 1, day);
  const check = new Date(midnight);
  if (check.getUTCFullYear() !== year || check.getUTCMonth() !== month - 1 || check.getUTCDate() !== day)
    throw ValidationError.forField(field, `${value.slice(0, 10)} is not a date that exists`);
  if (value.length === 10) return end ? midnight + DAY_MS - 1 : midnight;
  return Date.parse(value);
}

/** `startDate` / `endDate` of the metrics routes: ISO instants or dates; default the last 30 days. */
export function metricsRange(cp: ControlPlane, query: { startDate?: string; endDate?: string }): Range {
  const now = cp.now().getTime();
  const to = query.endDate === undefined ? now : parseBound(query.endDate, 'endDate', true);
  const from =
    query.startDate === undefined ? to - 30 * DAY_MS : parseBound(query.startDate, 'startDate', false);
  if (from > to) throw ValidationError.forField('startDate', 'must not be after endDate');
  if (to - from > 366 * 86_400_000)
    throw ValidationError.forField('startDate', 'the range must be at most 366 days');
  return { from, to };
}

interface Facts {
  readonly backups: BackupRecord[];
  readonly tests: DrTestRecord[];
  readonly missed: number[];
  readonly rpo: number;
  readonly rto: number;
}

async function facts(cp: ControlPlane): Promise<Facts> {
  const [backups, tests, firings, config] = await Promise.all([
    cp.table.queryAll<StoredItem<BackupRecord>>(Partition.backup),
    cp.table.queryAll<StoredItem<DrTestRecord>>(Partition.drTest),
    cp.table.queryAll<StoredItem<FiringRecord>>(Partition.firing),
    findConfig(cp),
  ]);
  return {
    backups: backups.map((item) => item.data),
    tests: tests.map((item) => item.data),
    missed: firings
      .filter((item) => item.data.status === 'MISSED')
      .map((item) => Date.parse(item.data.firingTime)),
    rpo: config?.rpo ?? 1,
    rto: config?.rto ?? 4,
  };
}

function violationsOf(data: Facts, range: Range, now: number): Violation[] {
  // Only schedules that back up the database protect it against data loss (the RPO is about the database).
  const database = data.backups.filter(
    (backup) => backup.database !== undefined || backup.status === 'FAILED',
  );
  return [
    ...rpoViolations(database, data.rpo, range, now, data.missed),
    ...rtoViolations(
      data.tests.map((test) => ({
        id: test.id,
        testType: test.testType,
        startedAt: test.startedAt,
        ...(test.finishedAt ? { finishedAt: test.finishedAt } : {}),
        ...(test.results?.actualRTO === undefined ? {} : { actualRTO: test.results.actualRTO }),
        ...(test.objectives ? { objectiveRTO: test.objectives.rto } : {}),
      })),
      range,
    ),
  ].sort((a, b) => a.start.localeCompare(b.start));
}

/** GET /api/dr/metrics/violations. */
export async function metricsViolations(
  cp: ControlPlane,
  range: Range,
): Promise<{ startDate: string; endDate: string; items: Violation[] }> {
  const data = await facts(cp);
  return { ...window(range), items: violationsOf(data, range, cp.now().getTime()) };
}

/** GET /api/dr/metrics/success-rate. */
export async function metricsSuccessRate(cp: ControlPlane, range: Range) {
  return { ...window(range), ...successRate((await facts(cp)).backups, range) };
}

/** GET /api/dr/metrics: the guide's key figures over the range. */
export async function metricsSummary(cp: ControlPlane, range: Range) {
  const data = await facts(cp);
  const now = cp.now().getTime();
  const violations = violationsOf(data, range, now);
  // The figures are as of the end of the range (or now, when the range reaches it)
  const asOf = Math.min(now, range.to);
  const good = data.backups.filter(
    (backup) =>
      isRestorePoint(backup) && backup.finishedAt !== undefined && Date.parse(backup.finishedAt) <= asOf,
  );
  const lastRestorePoint = Object.fromEntries(
    [...new Set(data.backups.map((backup) => backup.scheduleId))].sort().map((scheduleId) => {
      const newest = good
        .filter((backup) => backup.scheduleId === scheduleId && backup.restorePoint)
        .sort((a, b) => (a.restorePoint! < b.restorePoint! ? 1 : -1))[0];
      return [
        scheduleId,
        newest
          ? {
              backupId: newest.id,
              restorePoint: newest.restorePoint,
              ageHours: Math.round(((asOf - Date.parse(newest.restorePoint!)) / 3_600_000) * 100) / 100,
            }
          : null,
      ];
    }),
  );
  return {
    ...window(range),
    objectives: { rpo: data.rpo, rto: data.rto },
    backupSuccessRate: successRate(data.backups, range).overall,
    backupDuration: durations(data.backups, range),
    storage: storageByTarget(data.backups, range),
    rpoViolations: violations.filter((violation) => violation.kind === 'RPO').length,
    rtoViolations: violations.filter((violation) => violation.kind === 'RTO').length,
    ongoingRpoViolation: violations.some((violation) => violation.kind === 'RPO' && violation.ongoing),
    lastRestorePoint,
    achievedRpo: Object.fromEntries(
      Object.keys(lastRestorePoint).map((scheduleId) => [
        scheduleId,
        achievedRpo(
          data.backups.filter((backup) => backup.scheduleId === scheduleId),
          range,
          now,
        ) ?? null,
      ]),
    ),
    testCompliance: (await listDrTests(cp, { limit: 1 })).compliance,
  };
}

/**
 * GET /api/dr/metrics/series: the figures over time, for charts. Per UTC day of the range: backups finished
 * and the success rate, backup duration (average, p95), bytes stored per target as of the day's end. The
 * newest restore point's age (hours) at each moment it changed (before and after each backup finished: a saw
 * tooth), the RPO and RTO violations, and the RTO each DR test measured.
 */
export async function metricsSeries(cp: ControlPlane, range: Range) {
  const data = await facts(cp);
  const now = cp.now().getTime();
  const end = Math.min(range.to, now);
  const days: { date: string; from: number; to: number }[] = [];
  for (let day = Math.floor(range.from / DAY_MS) * DAY_MS; day <= range.to; day += DAY_MS)
    days.push({ date: new Date(day).toISOString().slice(0, 10), from: day, to: day + DAY_MS - 1 });
  const byDay = successRate(data.backups, range).byDay;
  const names = new Map(data.backups.flatMap((backup) => backup.targets.map((t) => [t.targetId, t.name])));
  const targets = [...names.keys()].sort();
  const stored = days.map((day) => storageByTarget(data.backups, { from: day.from, to: day.to }));
  // Only database restore points count for the RPO (as for the violations)
  const finishes = data.backups
    .filter(
      (backup) =>
        isRestorePoint(backup) &&
        backup.database !== undefined &&
        backup.finishedAt !== undefined &&
        backup.restorePoint !== undefined,
    )
    .map((backup) => ({ at: Date.parse(backup.finishedAt!), point: Date.parse(backup.restorePoint!) }))
    .filter((finish) => finish.at <= end)
    .sort((a, b) => a.at - b.at);
  const rpoAge: { at: string; ageHours: number }[] = [];
  const age = (at: number, point: number) => ({
    at: new Date(at).toISOString(),
    ageHours: Math.round(((at - point) / 3_600_000) * 1000) / 1000,
  });
  let newest = -Infinity;
  for (const finish of finishes.filter((each) => each.at < range.from))
    newest = Math.max(newest, finish.point);
  if (newest > -Infinity) rpoAge.push(age(range.from, newest));
  for (const finish of finishes.filter((each) => each.at >= range.from)) {
    if (newest > -Infinity) rpoAge.push(age(finish.at, newest));
    newest = Math.max(newest, finish.point);
    rpoAge.push(age(finish.at, newest));
  }
  if (newest > -Infinity) rpoAge.push(age(end, newest));
  return {
    ...window(range),
    objectives: { rpo: data.rpo, rto: data.rto },
    targets,
    targetNames: Object.fromEntries(targets.map((target) => [target, names.get(target)!])),
    days: days.map((day, index) => {
      const rate = byDay[day.date];
      const duration = durations(data.backups, day);
      return {
        date: day.date,
        backups: rate?.total ?? 0,
        succeeded: rate?.succeeded ?? 0,
        failed: (rate?.failed ?? 0) + (rate?.partial ?? 0),
        successRate: rate?.rate ?? null,
        durationAverageSeconds: duration.average,
        durationP95Seconds: duration.p95,
        storedBytes: Object.fromEntries(
          targets.map((target) => [target, stored[index]![target]?.bytesStored ?? 0]),
        ),
      };
    }),
    rpoAge,
    violations: violationsOf(data, range, now),
    rto: data.tests
      .filter(
        (test) =>
          test.results?.actualRTO !== undefined &&
          test.finishedAt !== undefined &&
          Date.parse(test.finishedAt) >= range.from &&
          Date.parse(test.finishedAt) <= range.to,
      )
      .sort((a, b) => a.finishedAt!.localeCompare(b.finishedAt!))
      .map((test) => ({
        testId: test.id,
        testType: test.testType,
        finishedAt: test.finishedAt!,
        actualRTO: test.results!.actualRTO!,
        objectiveRTO: test.objectives?.rto ?? data.rto,
        passed: test.status === 'PASSED',
      })),
  };
}

/**
 * Per target, from the catalog, as of the end of the range: bytes written by the backups it holds that had
 * finished by then, what its newest restore point protects (the source bytes it restores: for a change-stream
 * INCREMENTAL, its FULL's and its own), the deduplication and compression ratio (source bytes / bytes
 * written, over the backups it holds) and the growth over the range (bytes written by backups finished in it).
 */
function storageByTarget(backups: readonly BackupRecord[], range: Range) {
  const byId = new Map(backups.map((backup) => [backup.id, backup]));
  const protects = (backup: BackupRecord) =>
    backup.sizes?.protectedBytes ??
    (backup.sizes?.sourceBytes ?? 0) +
      (backup.type === 'INCREMENTAL' && backup.changes && backup.changes.base !== backup.id
        ? (byId.get(backup.changes.base)?.sizes?.sourceBytes ?? 0)
        : 0);
  const byTarget = new Map<
    string,
    { stored: number; source: number; added: number; growth: number; newest?: BackupRecord }
  >();
  for (const backup of backups) {
    const finished = backup.finishedAt ? Date.parse(backup.finishedAt) : NaN;
    if (!(finished <= range.to)) continue;
    for (const target of backup.targets) {
      if (target.status !== 'SUCCESS') continue;
      const entry = byTarget.get(target.targetId) ?? { stored: 0, source: 0, added: 0, growth: 0 };
      const written = target.bytesWritten ?? 0;
      entry.stored += written;
      entry.source += backup.sizes?.sourceBytes ?? 0;
      // Before compression: the chunks the backup added (the bytes written when the run did not say).
      entry.added += backup.sizes?.newBytes ?? written;
      if (finished >= range.from) entry.growth += written;
      if (isRestorePoint(backup) && (!entry.newest || backup.id > entry.newest.id)) entry.newest = backup;
      byTarget.set(target.targetId, entry);
    }
  }
  return Object.fromEntries(
    [...byTarget]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([targetId, entry]) => [
        targetId,
        {
          bytesStored: entry.stored,
          bytesProtected: entry.newest ? protects(entry.newest) : 0,
          dedupCompressionRatio:
            entry.stored > 0 ? Math.round((entry.source / entry.stored) * 100) / 100 : null,
          // Source bytes per byte of new chunks (deduplication), new chunk bytes per byte written (compression).
          dedupRatio: entry.added > 0 ? Math.round((entry.source / entry.added) * 100) / 100 : null,
          compressionRatio: entry.stored > 0 ? Math.round((entry.added / entry.stored) * 100) / 100 : null,
          growthBytes: entry.growth,
        },
      ]),
  );
}

function window(range: Range): { startDate: string; endDate: string } {
  return { startDate: new Date(range.from).toISOString(), endDate: new Date(range.to).toISOString() };
}

/**
 * The 3-2-1 view, per schedule, for its newest restore point: copies (the source plus each target holding
 * it), distinct media/providers among the targets, copies off-site, copies immutable, and whether the newest
 * restore test passed. Compliant = at least 3 copies, 2 media, 1 off-site, and a passing restore test.
 *
 * Off-site: another provider than the source, or another region of it (an S3 target in another region than
 * an RDS source; any S3 target when the source is not RDS), or another host (FTP/SFTP); a LOCAL target never
 * is. Immutable: S3 with Object Lock.
 */
export async function complianceView(cp: ControlPlane) {
  const [backups, targets, tests, config] = await Promise.all([
    cp.table.queryAll<StoredItem<BackupRecord>>(Partition.backup),
    cp.table.queryAll<StoredItem<{ id: string; targetType: string; config: Record<string, unknown> }>>(
      Partition.target,
    ),
    cp.table.queryAll<StoredItem<DrTestRecord>>(Partition.drTest),
    findConfig(cp),
  ]);
  const byId = new Map(targets.map((item) => [item.data.id, item.data]));
  const sourceRegion = config?.source?.rds?.region;
  const rds = config?.source?.rds !== undefined;
  const databaseHost = (() => {
    const url = config?.source?.database?.url;
    return url ? new URL(url).hostname : config?.source?.database?.host;
  })();
  const restoreTest = tests
    .map((item) => item.data)
    .filter(
      (test) =>
        (test.testType === 'RESTORE_TEST' || test.testType === 'RECOVERY_TIME_TEST') && test.finishedAt,
    )
    .sort((a, b) => (a.id < b.id ? 1 : -1))[0];
  const schedules = [...new Set(backups.map((item) => item.data.scheduleId))].sort();
  const items = schedules.map((scheduleId) => {
    const newest = backups
      .map((item) => item.data)
      .filter((backup) => backup.scheduleId === scheduleId && isRestorePoint(backup))
      .sort((a, b) => (a.id < b.id ? 1 : -1))[0];
    const holding = (newest?.targets ?? []).filter((target) => target.status === 'SUCCESS');
    const described = holding.map((target) => {
      const stored = byId.get(target.targetId);
      const type = stored?.targetType ?? target.targetType;
      const targetConfig = stored?.config ?? {};
      const medium =
        type === 'LOCAL'
          ? 'local disk'
          : type === 'FTP' || type === 'SFTP'
            ? `server ${String(targetConfig.host)}`
            : type === 'S3'
              ? 'Amazon S3'
              : type === 'AZURE'
                ? 'Azure Blob'
                : type === 'GCP'
                  ? 'Google Cloud Storage'
                  : `unknown (${type})`;
      const offsite =
        type === 'LOCAL'
          ? false
          : type === 'S3'
            ? !rds || (sourceRegion !== undefined && targetConfig.region !== sourceRegion)
            : type === 'FTP' || type === 'SFTP'
              ? targetConfig.host !== databaseHost
              : type === 'AZURE' || type === 'GCP';
      const immutable = type === 'S3' && targetConfig.objectLock !== undefined;
      return { targetId: target.targetId, targetType: type, medium, offsite, immutable };
    });
    const copies = newest ? 1 + described.length : 1;
    const media = new Set(described.map((target) => target.medium)).size;
    const offsite = described.filter((target) => target.offsite).length;
    const immutable = described.filter((target) => target.immutable).length;
    const tested = restoreTest?.status === 'PASSED';
    const missing = [
      ...(newest ? [] : ['no restore point yet']),
      ...(copies < 3
        ? [`${3 - copies} more cop${3 - copies === 1 ? 'y' : 'ies'} (a target holding the backup)`]
        : []),
      ...(media < 2 ? ['a second medium or provider among the targets'] : []),
      ...(offsite < 1 ? ['an off-site copy (another provider, region or host)'] : []),
      ...(tested ? [] : ['a passing restore test (RESTORE_TEST or RECOVERY_TIME_TEST)']),
    ];
    return {
      scheduleId,
      backupId: newest?.id ?? null,
      copies,
      media,
      offsite,
      immutable,
      newestRestoreTestPassed: tested,
      targets: described,
      compliant: missing.length === 0,
      missing,
    };
  });
  return { rule: '3 copies, 2 media, 1 off-site, and a passing restore test', items };
}
