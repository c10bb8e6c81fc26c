import { emitHealthMetrics } from '../aws/metrics.ts';
import { sesMailer } from '../aws/ses-mailer.ts';
import { awsControlPlane } from '../aws/control-plane.ts';
import { tick } from '../core/services/tick.ts';

/**
 * Invoked every minute by one EventBridge rule: the tick (worker/pipeline.ts) evaluates the stored schedules
 * and starts the runs that are due through the worker launcher, then runs the alert checks and emits the
 * health figures. Schedule changes through the API take effect at the next minute, with no redeploy.
 */
const controlPlane = awsControlPlane();

// Alerts by SES when the stack names a sender (-c mailFrom=…); the episodes are recorded either way.
const mailFrom = process.env.MAIL_FROM;
const notify = mailFrom ? sesMailer({ from: mailFrom }) : undefined;

export function handler(): Promise<unknown> {
  return tick(controlPlane, controlPlane.runs, {
    ...(notify ? { notify } : {}),
    metrics: { health: emitHealthMetrics },
  });
}
