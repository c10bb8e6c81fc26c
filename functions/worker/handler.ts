import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import { z } from 'zod';
import { emitBackupMetrics, emitHealthMetrics } from '../aws/metrics.ts';
import { requireEnv } from '../core/env.ts';
import { sesMailer } from '../aws/ses-mailer.ts';
import { awsControlPlane, masterKeyBytesFromSecret } from '../aws/control-plane.ts';
import { workerEvent, type WorkerEvent } from '../aws/launcher.ts';
import { measureSource } from '../core/services/change-stream-service.ts';
import { masterKeyFrom, type MasterKey } from '../engine/crypto.ts';
import type { WorkflowDeps } from '../workflows/steps.ts';
import { runWorkflowTask } from '../workflows/tasks.ts';
import { exportToBucket } from './export.ts';
import { retention, runBackup, type PipelineDeps } from './pipeline.ts';

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
const notify = mailFrom ? sesMailer({ from: mailFrom }) : undefined;
const workflowDeps: WorkflowDeps = { masterKey, ...(notify ? { notify } : {}) };
const pipeline: PipelineDeps = {
  masterKey,
  ...(notify ? { notify } : {}),
  metrics: { backup: emitBackupMetrics, health: emitHealthMetrics },
};

async function work(event: WorkerEvent): Promise<unknown> {
  switch (event.action) {
    case 'retention':
      return retention(controlPlane, pipeline);
    case 'watch': {
      const measured = await measureSource(controlPlane, { readiness: true });
      return { measuredAt: measured?.measuredAt, failure: measured?.failure?.error };
    }
    case 'workflow':
      return runWorkflowTask(controlPlane, workflowDeps, event.task, event.input);
    case 'export':
      return exportToBucket(controlPlane, event.backupId, {
        bucket: requireEnv('DOWNLOAD_BUCKET'),
        masterKey,
      });
    case 'backup': {
      const record = await runBackup(controlPlane, event.backupId, pipeline);
      return { id: record.id, status: record.status };
    }
  }
}

export const handler = middy<unknown, unknown>().handler(async (event: unknown) => {
  const parsed = workerEvent.safeParse(event);
  if (!parsed.success) {
    const reason = z.prettifyError(parsed.error);
    controlPlane.logger.error('worker event refused', { reason });
    throw new Error(`not a worker event (backup, export, retention, watch, workflow): ${reason}`);
  }
  return work(parsed.data);
});

const fargateEvent: WorkerEvent | undefined = process.env.BACKUP_ID
  ? { action: 'backup', backupId: process.env.BACKUP_ID }
  : process.env.EXPORT_ID
    ? { action: 'export', backupId: process.env.EXPORT_ID }
    : undefined;
if (fargateEvent && !process.env.AWS_LAMBDA_FUNCTION_NAME) {
  handler(fargateEvent, {} as Context).then(
    (result) => {
      controlPlane.logger.info('fargate run finished', { result: JSON.stringify(result) });
    },
    (error: unknown) => {
      controlPlane.logger.error('fargate run failed', { error: (error as Error).message });
      process.exitCode = 1;
    },
  );
}
