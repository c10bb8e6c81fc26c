import { awsControlPlane } from '../core/runs/aws-control-plane.ts';
import { sesMailer } from '../core/mail/ses-mailer.ts';
import { emitHealthMetrics } from '../core/cloudwatch.ts';
import { healthFigures, runAlertChecks } from '../core/services/alert-service.ts';
import { dispatch } from '../core/services/dispatch-service.ts';

/**
 * Invoked every minute by one EventBridge rule: evaluates the stored schedules (dispatch-service.ts) and
 * starts the runs that are due through the worker launcher. Schedule changes through the API take effect at
 * the next minute, with no redeploy.
 */
const controlPlane = awsControlPlane();

// Alerts by SES when the stack names a sender (-c mailFrom=…); the episodes are recorded either way.
const mailFrom = process.env.MAIL_FROM;
const mailer = mailFrom ? sesMailer({ from: mailFrom }) : undefined;

export async function handler(): Promise<unknown> {
  const result = await dispatch(controlPlane, controlPlane.runs);
  // Every minute too: the alert checks (one email per episode, a recovery email when it ends).
  await runAlertChecks(controlPlane, mailer).catch((error: unknown) =>
    controlPlane.logger.error('alert checks failed', { error: (error as Error).message }),
  );
  await emitHealthMetrics(await healthFigures(controlPlane)).catch((error: unknown) =>
    controlPlane.logger.error('metrics not emitted', { error: (error as Error).message }),
  );
  controlPlane.logger.info('dispatched', {
    started: result.started.length,
    missed: result.missed.length,
    skipped: result.skipped.length,
    reaped: result.reaped.length,
  });
  return result;
}
