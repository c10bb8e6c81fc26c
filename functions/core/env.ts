import { ConfigurationError } from './errors.ts';

/** Reads a required environment variable once, failing loudly (at cold start) when it is missing. */
export function requireEnv(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const value = env[name];
  if (value === undefined || value.trim() === '')
    throw new ConfigurationError(`environment variable ${name} is required`);
  return value;
}

export function optionalEnv(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const value = env[name];
  return value === undefined || value.trim() === '' ? undefined : value;
}

/** A TCP port from the environment, or the default; anything else is a start-up error naming the variable. */
export function portEnv(name: string, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = optionalEnv(name, env);
  if (raw === undefined) return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) {
    throw new ConfigurationError(
      `environment variable ${name} must be a port number (0-65535), not '${raw}'`,
    );
  }
  return port;
}

/**
 * Where a workflow's heavy steps run (restores, verification, consistency checks, the recovery-time test's
 * phases): in the worker Lambda, always on Fargate, or on Fargate for backups of `fromBytes` and more
 * (`auto`). Put in each execution's input; the state machines choose by it (statemachines/README.md).
 */
export interface HeavySteps {
  readonly heavy: 'lambda' | 'fargate' | 'auto';
  readonly fromBytes: number;
}

/** DR_HEAVY_STEPS (lambda, fargate or auto; lambda when unset) and DR_FARGATE_FROM_BYTES (1 GiB). */
export function heavyStepsFromEnv(env: NodeJS.ProcessEnv = process.env): HeavySteps {
  const heavy = optionalEnv('DR_HEAVY_STEPS', env) ?? 'lambda';
  if (heavy !== 'lambda' && heavy !== 'fargate' && heavy !== 'auto')
    throw new ConfigurationError(
      `environment variable DR_HEAVY_STEPS must be lambda, fargate or auto, not '${heavy}'`,
    );
  const raw = optionalEnv('DR_FARGATE_FROM_BYTES', env);
  const fromBytes = raw === undefined ? 1024 ** 3 : Number(raw);
  if (!Number.isSafeInteger(fromBytes) || fromBytes < 0)
    throw new ConfigurationError(
      `environment variable DR_FARGATE_FROM_BYTES must be a byte count, not '${raw}'`,
    );
  return { heavy, fromBytes };
}
