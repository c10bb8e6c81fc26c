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
import { runStagedStep } from '../workflows/fargate.ts';
import { exportToBucket } from './export.ts';
import { fanOutSteps } from './fanout.ts';
import { retention, runBackup, type PipelineDeps } from './pipeline.ts';
import { watchPrimary } from '../core/services/primary-watch.ts';

/**
 * The backup worker on AWS, one container image for both runners: the Lambda handler below (`index.handler`)
 * and, on Fargate, `node /var/task/index.mjs` with BACKUP_ID, EXPORT_ID, or a workflow's heavy step
 * (WORKFLOW_TASK, WORKFLOW_STATE) set (see the bottom of this file).
 */
const controlPlane = awsControlPlane();
let key: Promise<MasterKey> | undefined;
const masterKey = () =>
  (key ??= masterKeyBytesFromSecret(requireEnv('MASTER_KEY_SECRET')).then(masterKeyFrom));

// Completion emails through SES when the stack names a sender (-c mailFrom=…).
const mailFrom = process.env.MAIL_FROM;
const notify = mailFrom ? sesMailer({ from: mailFrom }) : undefined;
const scratchDir = process.env.DR_SCRATCH_DIR;
const pipeline: PipelineDeps = {
  masterKey,
  ...(notify ? { notify } : {}),
  metrics: { backup: emitBackupMetrics, health: emitHealthMetrics },
};
const workflowDeps: WorkflowDeps = {
  masterKey,
  ...(notify ? { notify } : {}),
  ...(scratchDir ? { scratchDir } : {}),
  backups: fanOutSteps(pipeline),
};

async function work(event: WorkerEvent): Promise<unknown> {
  switch (event.action) {
    case 'retention':
      return retention(controlPlane, pipeline);
    case 'watch': {
      const [measured, primary] = await Promise.all([
        measureSource(controlPlane, { readiness: true }),
        watchPrimary(controlPlane),
      ]);
      return {
        measuredAt: measured?.measuredAt,
        failure: measured?.failure?.error,
        primary: primary?.state,
      };
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

/** What a Fargate task was started for: a backup or an export (the launcher), or a workflow's heavy step. */
async function fargateTask(env: NodeJS.ProcessEnv): Promise<unknown> {
  if (env.WORKFLOW_TASK && env.WORKFLOW_STATE)
    return runStagedStep(controlPlane, env.WORKFLOW_TASK, env.WORKFLOW_STATE, (task, input) =>
      runWorkflowTask(controlPlane, workflowDeps, task, input),
    );
  if (env.BACKUP_ID) return handler({ action: 'backup', backupId: env.BACKUP_ID }, {} as Context);
  if (env.EXPORT_ID) return handler({ action: 'export', backupId: env.EXPORT_ID }, {} as Context);
  throw new Error('a Fargate task needs BACKUP_ID, EXPORT_ID, or WORKFLOW_TASK and WORKFLOW_STATE');
}

const { AWS_LAMBDA_FUNCTION_NAME, BACKUP_ID, EXPORT_ID, WORKFLOW_TASK } = process.env;
if (!AWS_LAMBDA_FUNCTION_NAME && (BACKUP_ID || EXPORT_ID || WORKFLOW_TASK)) {
  fargateTask(process.env).then(
    (result) => {
      controlPlane.logger.info('fargate task finished', { result: JSON.stringify(result ?? null) });
    },
    (error: unknown) => {
      controlPlane.logger.error('fargate task failed', { error: (error as Error).message });
      process.exitCode = 1;
    },
  );
}
