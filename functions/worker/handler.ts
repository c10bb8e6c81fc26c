import { masterKeyBytesFromSecret, awsControlPlane } from '../core/runs/aws-control-plane.ts';
import type { WorkerEvent } from '../core/runs/aws-launcher.ts';
import { requireEnv } from '../core/env.ts';
import { masterKeyFrom, type MasterKey } from '../engine/crypto.ts';
import { sesMailer } from '../core/mail/ses-mailer.ts';
import { runAlertChecks } from '../core/services/alert-service.ts';
import { measureSource } from '../core/services/change-stream-service.ts';
import { emitBackupMetrics } from '../core/cloudwatch.ts';
import type { WorkflowDeps } from '../workflows/steps.ts';
import { runWorkflowTask } from '../workflows/tasks.ts';
import { exportToBucket } from './export.ts';
import { applyRetention } from './retention.ts';
import { executeRun } from './run-backup.ts';

/**
 * The backup worker on AWS, one container image for both runners: the Lambda handler below (`index.handler`)
 * and, on Fargate, `node /var/task/index.mjs` with BACKUP_ID or EXPORT_ID set (see the bottom of this file).
 */
const controlPlane = awsControlPlane();
let key: Promise<MasterKey> | undefined;
const masterKey = () =>
  (key ??= masterKeyBytesFromSecret(requireEnv('MASTER_KEY_SECRET')).then(masterKeyFrom));

// Completion emails through SES when the stack names a sender (-c mailFrom=…).
const mailFrom = process.env.MAIL_FROM;
const workflowDeps: WorkflowDeps = {
  masterKey,
  ...(mailFrom ? { notify: sesMailer({ from: mailFrom }) } : {}),
};

export async function handler(event: WorkerEvent): Promise<unknown> {
  if (event.action === 'retention') return applyRetention(controlPlane, masterKey);
  if (event.action === 'watch') {
    const measured = await measureSource(controlPlane, { readiness: true });
    return { measuredAt: measured?.measuredAt, failure: measured?.failure?.error };
  }
  if (event.action === 'workflow')
    return runWorkflowTask(controlPlane, workflowDeps, event.task, event.input);
  if (event.action === 'export')
    return exportToBucket(controlPlane, event.backupId, { bucket: requireEnv('DOWNLOAD_BUCKET'), masterKey });
  const record = await executeRun(controlPlane, event.backupId, { masterKey });
  await emitBackupMetrics(record).catch((error: unknown) =>
    controlPlane.logger.error('metrics not emitted', { error: (error as Error).message }),
  );
  // Retention after every run: it may have made older backups unnecessary.
  await applyRetention(controlPlane, masterKey).catch((error: unknown) =>
    controlPlane.logger.error('retention failed', { error: (error as Error).message }),
  );
  // A failed run alerts at once rather than at the dispatcher's next minute.
  await runAlertChecks(controlPlane, workflowDeps.notify).catch((error: unknown) =>
    controlPlane.logger.error('alert checks failed', { error: (error as Error).message }),
  );
  return { id: record.id, status: record.status };
}

const fargateEvent: WorkerEvent | undefined = process.env.BACKUP_ID
  ? { action: 'backup', backupId: process.env.BACKUP_ID }
  : process.env.EXPORT_ID
    ? { action: 'export', backupId: process.env.EXPORT_ID }
    : undefined;
if (fargateEvent && !process.env.AWS_LAMBDA_FUNCTION_NAME) {
  handler(fargateEvent).then(
    (result) => {
      controlPlane.logger.info('fargate run finished', { result: JSON.stringify(result) });
    },
    (error: unknown) => {
      controlPlane.logger.error('fargate run failed', { error: (error as Error).message });
      process.exitCode = 1;
    },
  );
}
