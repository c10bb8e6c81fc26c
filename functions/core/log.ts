/**
 * Structured JSON logs, one line per event (what CloudWatch Logs Insights and `jq` read best).
 * Callers pass fields they chose; nothing here serialises whole requests, configs or errors with causes,
 * so a secret cannot ride along by accident.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export function createLogger(
  level: Level = 'info',
  write: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Logger {
  const emit =
    (at: Level) =>
    (message: string, fields: Record<string, unknown> = {}) => {
      if (ORDER[at] < ORDER[level]) return;
      write(JSON.stringify({ level: at, time: new Date().toISOString(), message, ...fields }));
    };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') };
}

export const silentLogger: Logger = createLogger('error', () => undefined);

export function parseLevel(value: string | undefined): Level {
  return value === 'debug' || value === 'info' || value === 'warn' || value === 'error' ? value : 'info';
}

/** Runs the steps one after another; a step that fails is logged (`<name> failed`) and the next still runs. */
export async function inTurn(
  logger: Logger,
  steps: readonly (readonly [string, () => Promise<unknown>])[],
): Promise<void> {
  for (const [name, step] of steps)
    await step().catch((error: unknown) =>
      logger.error(`${name} failed`, { error: (error as Error).message }),
    );
}
