import type { ControlPlane } from '../core/context.ts';
import { inTurn } from '../core/log.ts';
import type { BackupRecord } from '../core/records.ts';
import { runAlertChecks, type Mailer } from '../core/services/alert-service.ts';
import type { HealthFigures } from '../core/services/tick.ts';
import type { MasterKey } from '../engine/crypto.ts';
import { applyRetention } from './retention.ts';
import { executeRun, type WorkerOptions } from './run-backup.ts';

/**
 * A backup and what follows it, the same in every runtime: the worker (Lambda or Fargate) and the local
 * runtime call these (the per-minute tick is core/services/tick.ts); none writes its own.
 */
export interface PipelineDeps {
  readonly masterKey: () => Promise<MasterKey>;
  /** Alert emails (absent: episodes are recorded, nothing is sent). */
  readonly notify?: Mailer;
  /** Where figures go: CloudWatch (EMF) on AWS; nowhere locally. */
  readonly metrics?: {
    backup(record: BackupRecord): Promise<void>;
    health(figures: HealthFigures): Promise<void>;
  };
}

/** A backup run, then what follows it. */
export async function runBackup(
  cp: ControlPlane,
  backupId: string,
  deps: PipelineDeps,
  options: Omit<WorkerOptions, 'masterKey'> = {},
): Promise<BackupRecord> {
  const record = await executeRun(cp, backupId, { ...options, masterKey: deps.masterKey });
  await afterBackup(cp, record, deps);
  return record;
}

/**
 * After every run: its figures; retention (the run may have made older backups unnecessary); the alert
 * checks (a failed run alerts at once rather than at the next minute).
 */
export async function afterBackup(cp: ControlPlane, record: BackupRecord, deps: PipelineDeps): Promise<void> {
  await inTurn(cp.logger, [
    ['metrics', () => deps.metrics?.backup(record) ?? Promise.resolve()],
    ['retention', () => retention(cp, deps)],
    ['alert checks', () => runAlertChecks(cp, deps.notify)],
  ]);
}

/** Retention, with what it did in the log. */
export async function retention(cp: ControlPlane, deps: Pick<PipelineDeps, 'masterKey'>): Promise<void> {
  const report = await applyRetention(cp, deps.masterKey);
  if (report.deleted.length + report.failed.length > 0)
    cp.logger.info('retention applied', { deleted: report.deleted.length, failed: report.failed.length });
}
