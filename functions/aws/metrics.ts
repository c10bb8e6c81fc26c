import { createMetricsLogger, Unit } from 'aws-embedded-metrics';
import type { BackupRecord } from '../core/records.ts';

/**
 * CloudWatch metrics in Embedded Metric Format: structured log lines that CloudWatch Logs turns into metrics
 * (no PutMetricData calls, no extra permission). Namespace `DrAutomation`, no dimensions (the alarms watch the
 * totals; schedule and backup id ride along as properties for Logs Insights). Emitted on AWS only: the stack
 * sets DR_METRICS=emf on the worker and the dispatcher.
 */
export const METRICS_NAMESPACE = 'DrAutomation';

function enabled(): boolean {
  return process.env.DR_METRICS === 'emf';
}

function logger() {
  // Lambda is detected by the library; the Fargate task sets AWS_EMF_ENVIRONMENT=Local (lines to stdout,
  // which awslogs ships to CloudWatch Logs). The library reads it when it loads.
  const metrics = createMetricsLogger();
  metrics.setNamespace(METRICS_NAMESPACE);
  metrics.setDimensions({}, false);
  return metrics;
}

/** After each run: duration, bytes, outcome. */
export async function emitBackupMetrics(record: BackupRecord): Promise<void> {
  if (!enabled() || !record.finishedAt) return;
  const metrics = logger();
  metrics.putMetric(
    'BackupDuration',
    (Date.parse(record.finishedAt) - Date.parse(record.startedAt)) / 1000,
    Unit.Seconds,
  );
  metrics.putMetric('BackupBytesRead', record.sizes?.sourceBytes ?? 0, Unit.Bytes);
  metrics.putMetric('BackupBytesStored', record.sizes?.storedBytes ?? 0, Unit.Bytes);
  metrics.putMetric('BackupSucceeded', record.status === 'SUCCESS' ? 1 : 0, Unit.Count);
  metrics.putMetric('BackupPartial', record.status === 'PARTIAL' ? 1 : 0, Unit.Count);
  metrics.putMetric('BackupFailed', record.status === 'FAILED' ? 1 : 0, Unit.Count);
  metrics.setProperty('scheduleId', record.scheduleId);
  metrics.setProperty('backupId', record.id);
  metrics.setProperty('type', record.type);
  await metrics.flush();
}

/** Every minute (the dispatcher): how old the newest restore point is, what is out of compliance, the primary. */
export async function emitHealthMetrics(figures: {
  rpoAgeHours: number | undefined;
  rpoViolated: boolean;
  testsOverdue: number;
  primaryUp?: boolean | undefined;
}): Promise<void> {
  if (!enabled()) return;
  const metrics = logger();
  if (figures.rpoAgeHours !== undefined) metrics.putMetric('RpoAgeHours', figures.rpoAgeHours, Unit.None);
  metrics.putMetric('RpoViolated', figures.rpoViolated ? 1 : 0, Unit.Count);
  metrics.putMetric('DrTestsOverdue', figures.testsOverdue, Unit.Count);
  if (figures.primaryUp !== undefined) metrics.putMetric('PrimaryUp', figures.primaryUp ? 1 : 0, Unit.Count);
  await metrics.flush();
}
