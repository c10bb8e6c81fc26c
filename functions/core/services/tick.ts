import type { ControlPlane } from '../context.ts';
import { inTurn } from '../log.ts';
import type { RunLauncher } from '../ports.ts';
import { healthFigures, runAlertChecks, type Mailer } from './alert-service.ts';
import { dispatch, type DispatchResult } from './dispatch-service.ts';

export type HealthFigures = Awaited<ReturnType<typeof healthFigures>>;

export interface TickDeps {
  /** Alert emails (absent: episodes are recorded, nothing is sent). */
  readonly notify?: Mailer;
  /** Where the health figures go: CloudWatch (EMF) on AWS; nowhere locally. */
  readonly metrics?: { health(figures: HealthFigures): Promise<void> };
}

/**
 * Once a minute (EventBridge on AWS, a timer locally): the runs that are due, the alert checks (one email
 * per episode, a recovery email when it ends), the health figures.
 */
export async function tick(
  cp: ControlPlane,
  runs: RunLauncher | undefined,
  deps: TickDeps,
): Promise<DispatchResult> {
  const result = await dispatch(cp, runs);
  await inTurn(cp.logger, [
    ['alert checks', () => runAlertChecks(cp, deps.notify)],
    ['health metrics', async () => deps.metrics?.health(await healthFigures(cp))],
  ]);
  const counts = {
    started: result.started.length,
    missed: result.missed.length,
    skipped: result.skipped.length,
    reaped: result.reaped.length,
  };
  // A minute in which nothing happened is not news
  if (Object.values(counts).some((count) => count > 0)) cp.logger.info('dispatched', counts);
  else cp.logger.debug('dispatched', counts);
  return result;
}
