import type { ControlPlane } from '../context.ts';
import { ConflictError, ignoreLostRace } from '../errors.ts';
import { isRestorePoint, rpoViolations } from '../metrics.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import { changeStreamConditions } from './change-stream-service.ts';
import { findConfig } from './config-service.ts';
import { listDrTests, type DrTestRecord } from './drtest-service.ts';
import { targetUsage, type Target } from './target-service.ts';
import type { BackupRecord, Condition } from '../records.ts';
import { mailBody, type MailMessage } from '../mail.ts';
import { primaryConditions, primaryUp } from './primary-watch.ts';

/**
 * Alerts by email, one per episode: a condition that starts (a schedule's backups fail, the RPO is
 * violated, a DR test type is overdue) sends one email, repeated checks while it lasts send nothing, and its
 * end sends a recovery email. One-off events (a DR test that exceeded the RTO) send one email each. The
 * state of each episode is an `ALERT` item written with conditional writes, so two checks running at once
 * send one email, not two.
 */
export type Mailer = (message: MailMessage) => Promise<void>;

interface AlertState {
  readonly key: string;
  readonly active: boolean;
  readonly since: string;
  readonly sentAt: string;
}

export interface AlertReport {
  readonly opened: string[];
  readonly recovered: string[];
  readonly failed: { key: string; error: string }[];
}

/** The conditions as they stand now, from the catalog, the firings, the tests and the config. */
export async function currentConditions(cp: ControlPlane): Promise<Condition[]> {
  const config = await findConfig(cp);
  if (!config) return [];
  const now = cp.now().getTime();
  const backups = (await cp.table.queryAll<StoredItem<BackupRecord>>(Partition.backup)).map(
    (item) => item.data,
  );
  const conditions: Condition[] = [];

  // The primary: down for long enough (not one failed probe)
  conditions.push(...(await primaryConditions(cp, config)));

  // A schedule whose newest finished backup failed (or reached only some targets).
  const schedules = [...new Set(backups.map((backup) => backup.scheduleId))].sort();
  for (const scheduleId of schedules) {
    const newest = backups
      .filter((backup) => backup.scheduleId === scheduleId && backup.status !== 'RUNNING')
      .sort((a, b) => (a.id < b.id ? 1 : -1))[0];
    if (!newest) continue;
    const failing = newest.status === 'FAILED' || newest.status === 'PARTIAL';
    const reasons = newest.targets
      .filter((target) => target.status !== 'SUCCESS')
      .map((target) => `- ${target.name} (${target.targetType}): ${target.error?.message ?? target.status}`);
    conditions.push({
      key: `backup-failed:${scheduleId}`,
      active: failing,
      subject: `[DR] Backup ${newest.status} — schedule ${newest.scheduleName}`,
      lines: [
        `The newest backup of schedule ${newest.scheduleName} (${scheduleId}) is ${newest.status}.`,
        `Backup ${newest.id}, started ${newest.startedAt}.`,
        ...(newest.error ? [`Error: ${newest.error}`] : []),
        ...(reasons.length ? ['Targets that do not hold it:', ...reasons] : []),
      ],
      recoverySubject: `[DR] Recovered — backups of schedule ${newest.scheduleName} succeed again`,
      recoveryLines: [`Backup ${newest.id} of schedule ${newest.scheduleName} succeeded on every target.`],
    });
  }

  // The RPO: is it being violated right now?
  const database = backups.filter((backup) => backup.database !== undefined);
  const ongoing = rpoViolations(database, config.rpo, { from: 0, to: now + 1 }, now).find(
    (span) => span.ongoing,
  );
  const newestPoint = database
    .filter((backup) => isRestorePoint(backup) && backup.restorePoint)
    .map((backup) => backup.restorePoint!)
    .sort()
    .at(-1);
  conditions.push({
    key: 'rpo',
    active: ongoing !== undefined,
    subject: `[DR] RPO violated — the newest restore point is older than ${config.rpo} h`,
    lines: [
      `Since ${ongoing?.start ?? '?'} the newest restore point (${newestPoint ?? 'none'}) has been older than the RPO of ${config.rpo} h: it is ${ongoing?.achieved ?? '?'} h old now.`,
      'Check the schedules and the latest backups (GET /api/dr/backups).',
    ],
    recoverySubject: `[DR] Recovered — the RPO of ${config.rpo} h is met again`,
    recoveryLines: [`The newest restore point is ${newestPoint ?? 'none'}.`],
  });

  // DR tests: RTO violations (one email each), and types overdue (once the config is older than the period).
  const tests = (await cp.table.queryAll<StoredItem<DrTestRecord>>(Partition.drTest)).map(
    (item) => item.data,
  );
  for (const test of tests) {
    if (!test.results?.rtoViolated) continue;
    conditions.push({
      key: `rto:${test.id}`,
      active: true,
      event: true,
      subject: `[DR] RTO violated — ${test.testType} took ${test.results.actualRTO} h (objective ${test.objectives?.rto} h)`,
      lines: [
        `DR test ${test.id} (${test.testType} on ${test.targetEnvironment}) measured an actual RTO of ${test.results.actualRTO} h, more than the objective of ${test.objectives?.rto} h.`,
        ...test.results.issues.map((issue) => `- ${issue}`),
      ],
    });
  }
  const compliance = (await listDrTests(cp, { limit: 1 })).compliance;
  // One rule with GET /api/dr/test's compliance: overdue there is an alert here (never-passed types are due
  // testFrequencyDays after the config was created)
  for (const [type, state] of Object.entries(compliance.types)) {
    conditions.push({
      key: `test-overdue:${type}`,
      active: state.overdue,
      subject: `[DR] DR test overdue — ${type} has not passed in ${config.testFrequencyDays} days`,
      lines: [
        state.lastPassedAt
          ? `${type} last passed at ${state.lastPassedAt} (test ${state.lastTestId}); it was due at ${state.dueAt}.`
          : `${type} has never passed since the DR config was created; it was due at ${state.dueAt ?? '?'}.`,
        `Start one with POST /api/dr/test {"testType": "${type}"}.`,
      ],
      recoverySubject: `[DR] Recovered — ${type} passed again`,
      recoveryLines: [`${type} passed at ${state.lastPassedAt ?? '?'}.`],
    });
  }
  conditions.push(...(await capacityConditions(cp)));

  // Change stream: a schema change forced a FULL (one email each); the slot's WAL and consumption.
  for (const backup of backups.filter((one) => one.schemaChanged !== undefined))
    conditions.push({
      key: `schema-change:${backup.id}`,
      active: true,
      event: true,
      subject: `[DR] Schema change — backup ${backup.id} was taken as a FULL`,
      lines: [
        `${backup.schemaChanged ?? ''}: the change stream does not carry DDL, so backup ${backup.id} of schedule ${backup.scheduleName} was taken as a FULL instead of an INCREMENTAL.`,
        'Restores to instants before it use the previous FULL and its changes; after it, this FULL and the changes that follow.',
      ],
    });
  conditions.push(...(await changeStreamConditions(cp, backups)));
  return conditions;
}

const USAGE_MAX_AGE_MS = 60 * 60_000;

interface UsageMeasurement {
  readonly measuredAt: string;
  readonly bytesStored?: number;
  readonly bytesFree?: number;
}

/**
 * Storage capacity of the targets that have thresholds: measured (by listing the target) at most hourly,
 * the measurement kept in the `ALERT` partition (`usage:<target>`). A target that cannot be measured now
 * keeps its episode as it is.
 */
async function capacityConditions(cp: ControlPlane): Promise<Condition[]> {
  const targets = (await cp.table.queryAll<StoredItem<Target>>(Partition.target)).map((item) => item.data);
  const conditions: Condition[] = [];
  for (const target of targets) {
    const { minFreeBytes, maxStoredBytes } = target.capacity ?? {};
    if (minFreeBytes === undefined && maxStoredBytes === undefined) continue;
    const key = `usage:${target.id}`;
    const stored = await cp.table.get<UsageMeasurement>(Partition.alert, key);
    let usage = stored?.data;
    if (!usage || cp.now().getTime() - Date.parse(usage.measuredAt) > USAGE_MAX_AGE_MS) {
      const measured = await targetUsage(cp, target.id);
      if (!measured.ok) {
        cp.logger.warn('capacity not measured', { target: target.id, error: measured.error?.message ?? '' });
        const previous = await cp.table.get<AlertState>(Partition.alert, `capacity:${target.id}`);
        if (previous?.data.active)
          conditions.push({ key: `capacity:${target.id}`, active: true, subject: '', lines: [] });
        continue;
      }
      usage = {
        measuredAt: cp.now().toISOString(),
        ...(measured.bytesStored === undefined ? {} : { bytesStored: measured.bytesStored }),
        ...(measured.bytesFree === undefined ? {} : { bytesFree: measured.bytesFree }),
      };
      // Two checks measuring at once: the other's figure stands
      if (stored) await cp.table.replace(stored, usage, cp.now()).catch(ignoreLostRace);
      else await cp.table.create(Partition.alert, key, usage, cp.now(), 'measured').catch(ignoreLostRace);
    }
    const problems = [
      ...(minFreeBytes !== undefined && usage.bytesFree !== undefined && usage.bytesFree < minFreeBytes
        ? [
            `free space ${formatBytes(usage.bytesFree)} is below the threshold of ${formatBytes(minFreeBytes)}`,
          ]
        : []),
      ...(maxStoredBytes !== undefined &&
      usage.bytesStored !== undefined &&
      usage.bytesStored > maxStoredBytes
        ? [
            `it stores ${formatBytes(usage.bytesStored)}, more than the threshold of ${formatBytes(maxStoredBytes)}`,
          ]
        : []),
    ];
    conditions.push({
      key: `capacity:${target.id}`,
      active: problems.length > 0,
      subject: `[DR] Storage capacity warning — target ${target.name}`,
      lines: [
        `Target ${target.name} (${target.targetType}), measured ${usage.measuredAt}:`,
        ...problems.map((problem) => `- ${problem}`),
        'Free space on the target, or raise its thresholds (capacity in PUT /api/dr/targets/{id}).',
      ],
      recoverySubject: `[DR] Recovered — target ${target.name} is within its capacity thresholds`,
      recoveryLines: [
        `Target ${target.name}: ${usage.bytesStored === undefined ? '' : `${formatBytes(usage.bytesStored)} stored`}${
          usage.bytesFree === undefined ? '' : `, ${formatBytes(usage.bytesFree)} free`
        }.`,
      ],
    });
  }
  return conditions;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** The figures the dispatcher publishes every minute (CloudWatch), from the same conditions. */
export async function healthFigures(cp: ControlPlane): Promise<{
  rpoAgeHours: number | undefined;
  rpoViolated: boolean;
  testsOverdue: number;
  primaryUp: boolean | undefined;
}> {
  const conditions = await currentConditions(cp);
  const backups = (await cp.table.queryAll<StoredItem<BackupRecord>>(Partition.backup)).map(
    (item) => item.data,
  );
  const newest = backups
    .filter((backup) => backup.database !== undefined && isRestorePoint(backup) && backup.restorePoint)
    .map((backup) => Date.parse(backup.restorePoint!))
    .sort((a, b) => b - a)[0];
  return {
    rpoAgeHours:
      newest === undefined
        ? undefined
        : Math.round(((cp.now().getTime() - newest) / 3_600_000) * 1000) / 1000,
    rpoViolated: conditions.some((condition) => condition.key === 'rpo' && condition.active),
    testsOverdue: conditions.filter(
      (condition) => condition.key.startsWith('test-overdue:') && condition.active,
    ).length,
    primaryUp: await primaryUp(cp),
  };
}

/** The episodes on record, open ones first (GET /api/dr/alerts). */
export async function listAlerts(cp: ControlPlane): Promise<AlertState[]> {
  const items = await cp.table.queryAll<StoredItem<AlertState>>(Partition.alert);
  return items
    .filter((item) => !item.sk.startsWith('usage:') && !item.sk.startsWith('watch:'))
    .map((item) => item.data)
    .sort((a, b) => Number(b.active) - Number(a.active) || b.since.localeCompare(a.since));
}

/** Compares the conditions with the episodes on record and sends what changed. */
export async function runAlertChecks(cp: ControlPlane, mailer: Mailer | undefined): Promise<AlertReport> {
  const report: AlertReport = { opened: [], recovered: [], failed: [] };
  const config = await findConfig(cp);
  const to = config?.notificationEmails ?? [];
  const conditions = await currentConditions(cp);
  const now = cp.now().toISOString();
  for (const condition of conditions) {
    const stored = await cp.table.get<AlertState>(Partition.alert, condition.key);
    try {
      if (condition.active && !stored?.data.active) {
        // Claim the episode first: a concurrent check that loses the claim sends nothing.
        const state: AlertState = { key: condition.key, active: true, since: now, sentAt: now };
        const claimed = stored
          ? await cp.table.replace(stored, state, cp.now())
          : await cp.table.create(Partition.alert, condition.key, state, cp.now(), 'claimed');
        try {
          await send(mailer, to, condition.subject, condition.lines);
        } catch (error) {
          // Not sent: give the claim back, so the next check tries again.
          await cp.table.delete(claimed).catch(() => undefined);
          throw error;
        }
        report.opened.push(condition.key);
      } else if (!condition.active && stored?.data.active && !condition.event) {
        const closed = await cp.table.replace(
          stored,
          { ...stored.data, active: false, sentAt: now },
          cp.now(),
        );
        try {
          await send(
            mailer,
            to,
            condition.recoverySubject ?? `[DR] Recovered — ${condition.key}`,
            condition.recoveryLines ?? [],
          );
        } catch (error) {
          await cp.table.replace(closed, stored.data, cp.now()).catch(() => undefined);
          throw error;
        }
        report.recovered.push(condition.key);
      }
    } catch (error) {
      if (error instanceof ConflictError) continue; // another check handled this transition
      report.failed.push({ key: condition.key, error: (error as Error).message });
      cp.logger.error('alert not sent', { key: condition.key, error: (error as Error).message });
    }
  }
  if (report.opened.length + report.recovered.length > 0)
    cp.logger.info('alerts sent', { opened: report.opened.length, recovered: report.recovered.length });
  return report;
}

async function send(
  mailer: Mailer | undefined,
  to: readonly string[],
  subject: string,
  lines: readonly string[],
) {
  if (!mailer || to.length === 0) return;
  await mailer({ to, subject, ...mailBody(lines) });
}
