import { awsControlPlane } from '../core/runs/aws-control-plane.ts';
import { dispatch } from '../core/services/dispatch-service.ts';

/**
 * Invoked every minute by one EventBridge rule: evaluates the stored schedules (dispatch-service.ts) and
 * starts the runs that are due through the worker launcher. Schedule changes through the API take effect at
 * the next minute, with no redeploy.
 */
const controlPlane = awsControlPlane();

export async function handler(): Promise<unknown> {
  const result = await dispatch(controlPlane, controlPlane.runs);
  controlPlane.logger.info('dispatched', {
    started: result.started.length,
    missed: result.missed.length,
    skipped: result.skipped.length,
    reaped: result.reaped.length,
  });
  return result;
}
