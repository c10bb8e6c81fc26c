import { readFile } from 'node:fs/promises';
import type { OpenOptions, TargetSpec } from './driver.ts';
import { driverOf, TARGET_TYPES } from './drivers.ts';
import { compose } from './facade.ts';
import { publicReason, StorageError, type Storage } from './storage.ts';

/**
 * Opens a target: its driver's adapter (loaded on first use), with retries composed around it. The one place
 * the engine, the worker, the API and the CLI open targets through.
 */
export async function openTarget(
  spec: TargetSpec,
  secrets: Readonly<Record<string, string>> = {},
  opening: OpenOptions = {},
): Promise<Storage> {
  const driver = driverOf(spec.targetType);
  if (!driver)
    throw new StorageError(
      'other',
      spec.name ?? spec.targetType,
      undefined,
      `unknown target type ${spec.targetType} (${TARGET_TYPES.join(', ')})`,
    );
  return compose(await driver.open(spec, secrets, opening));
}

/** A target file for drctl: the API's target JSON (`{ "targetType": …, "config": { … } }`), secrets inline. */
export async function readTargetFile(file: string): Promise<TargetSpec> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new StorageError(
      'other',
      file,
      undefined,
      `cannot read the target file: ${(error as Error).message}`,
    );
  }
  const spec = parsed as Partial<TargetSpec>;
  if (typeof spec.targetType !== 'string' || typeof spec.config !== 'object' || spec.config === null) {
    throw new StorageError(
      'other',
      file,
      undefined,
      'a target file holds {"targetType": …, "config": {…}} as the API takes it',
    );
  }
  const driver = driverOf(spec.targetType);
  if (!driver)
    throw new StorageError(
      'other',
      file,
      undefined,
      `unknown target type ${spec.targetType} (${TARGET_TYPES.join(', ')})`,
    );
  // The same rules as the API's: a misspelt or out-of-range field is named here, not met halfway through
  const config = driver.config.safeParse(spec.config);
  if (!config.success)
    throw new StorageError(
      'other',
      file,
      undefined,
      config.error.issues.map((issue) => `config.${issue.path.join('.')}: ${issue.message}`).join('; '),
      { ownWords: true },
    );
  return { ...(spec as TargetSpec), config: config.data };
}

export interface ProbeResult {
  readonly ok: boolean;
  /** Round trip of write, read back and delete, in milliseconds. */
  readonly latencyMs: number;
  readonly steps: { readonly write?: number; readonly read?: number; readonly delete?: number };
  readonly error?: { readonly kind: string; readonly message: string };
  /** What the connection revealed that an operator should know (FTP without TLS, for one). */
  readonly warnings?: readonly string[];
}

/** Writes, reads back and deletes a small object: does this target work, and how fast. */
export async function probeTarget(
  storage: Storage,
  now: () => number = () => performance.now(),
  onError: (error: unknown) => void = () => undefined,
): Promise<ProbeResult> {
  const key = `dr-check/${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const payload = Buffer.from(`dr-automation check ${new Date().toISOString()}`);
  const steps: { write?: number; read?: number; delete?: number } = {};
  const started = now();
  let at = started;
  const step = (name: keyof typeof steps) => {
    const current = now();
    steps[name] = Math.round(current - at);
    at = current;
  };
  try {
    await storage.put(key, payload);
    step('write');
    const back = await storage.read(key);
    step('read');
    if (!back.equals(payload))
      throw new StorageError('other', storage.name, key, 'the object read back differs from the one written');
    await storage.delete([key]);
    step('delete');
    const warnings = storage.warnings ?? [];
    return {
      ok: true,
      latencyMs: Math.round(now() - started),
      steps,
      ...(warnings.length > 0 ? { warnings: [...warnings] } : {}),
    };
  } catch (error) {
    onError(error);
    return { ok: false, latencyMs: Math.round(now() - started), steps, error: publicReason(error) };
  }
}
