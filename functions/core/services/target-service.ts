import { randomUUID } from 'node:crypto';
import type { Actor } from '../audit.ts';
import type { ControlPlane } from '../context.ts';
import { endpointProblem } from '../../storage/egress.ts';
import { ConflictError, UpstreamError, ValidationError, type FieldIssue } from '../errors.ts';
import { DESTINATION_FIELDS, SECRET_FIELDS, type TargetInput, type TargetType } from '../schemas.ts';
import { secretName } from '../secrets/secret-store.ts';
import { Partition, type Page, type StoredItem } from '../store/table.ts';
import {
  loadForChange,
  commitWithSecret,
  mergeSecrets,
  requireFound,
  throwIfIssues,
  versioned,
  type Versioned,
} from './common.ts';
import { publicReason, StorageError, type Storage } from '../../storage/storage.ts';
import type { TargetDriver } from '../../storage/driver.ts';
import { DRIVERS } from '../../storage/drivers.ts';
import { s3Storage } from '../../storage/s3/driver.ts';
import { openTarget, probeTarget, type ProbeResult } from '../../storage/targets.ts';
import type { S3Lifecycle } from '../../storage/s3/s3-storage.ts';
import type { StoredSchedule } from '../records.ts';

/** A target as stored and returned: `config` has no secret field; `secretsSet` names those that are set. */
export interface Target {
  readonly id: string;
  readonly name: string;
  readonly targetType: TargetType;
  readonly config: Readonly<Record<string, unknown>>;
  readonly secretsSet: readonly string[];
  /** Things an operator should know about this target's settings (credentials in clear, no pinned key…). */
  readonly warnings: readonly string[];
  /** Storage-capacity alert thresholds. */
  readonly capacity?: { readonly minFreeBytes?: number; readonly maxStoredBytes?: number };
}

interface StoredTarget extends Target {
  readonly secretName?: string;
}

export type TargetView = Target & Versioned;

export async function getTarget(cp: ControlPlane, id: string): Promise<TargetView> {
  return toView(await load(cp, id));
}

export async function listTargets(
  cp: ControlPlane,
  limit: number,
  nextToken?: string,
): Promise<Page<TargetView>> {
  const page = await cp.table.query<StoredItem<StoredTarget>>(Partition.target, { limit, nextToken });
  return { ...page, items: page.items.map(toView) };
}

/** The ids of every stored target (for reference checks). */
export async function targetIds(cp: ControlPlane): Promise<Set<string>> {
  const items = await cp.table.queryAll<StoredItem<StoredTarget>>(Partition.target);
  return new Set(items.map((item) => item.sk));
}

export async function createTarget(cp: ControlPlane, input: TargetInput, actor: Actor): Promise<TargetView> {
  const id = input.id ?? randomUUID();
  const { publicConfig, secretUpdates } = splitSecrets(input);
  const { values, changed } = mergeSecrets({}, secretUpdates);
  throwIfIssues([
    ...requirements(input.targetType, publicConfig, new Set(Object.keys(values))),
    ...(await egressIssues(cp, publicConfig)),
  ]);
  if (await cp.table.get(Partition.target, id))
    throw new ConflictError(`a target with id ${id} already exists`);
  if (input.targetType === 'S3' && publicConfig.lifecycle !== undefined)
    await applyLifecycle(cp, id, publicConfig, values);

  const item = await commitWithSecret(
    cp,
    secretName(cp.secretPrefix, 'target', id),
    values,
    undefined,
    (name) =>
      cp.table.create(
        Partition.target,
        id,
        describe(id, input, publicConfig, values, name),
        cp.now(),
        `a target with id ${id} already exists`,
      ),
  );
  await cp.audit.append(actor, {
    action: 'target.create',
    resource: `target/${id}`,
    details: { name: item.data.name, targetType: item.data.targetType, secretsChanged: changed },
  });
  return toView(item);
}

export async function updateTarget(
  cp: ControlPlane,
  id: string,
  input: TargetInput,
  actor: Actor,
  expectedVersion: number | undefined,
): Promise<TargetView> {
  const current = await loadForChange<StoredTarget>(cp, Partition.target, id, {
    version: expectedVersion,
    bodyId: input.id,
  });
  if (input.targetType !== current.data.targetType) {
    throw ValidationError.forField(
      'targetType',
      `cannot change from ${current.data.targetType}; create a new target instead`,
    );
  }
  const { publicConfig, secretUpdates } = splitSecrets(input);
  const moved = movedDestination(input.targetType, current.data.config, publicConfig);
  const unstated = current.data.secretsSet.filter((field) => secretUpdates[field] === undefined);
  if (moved.length > 0 && unstated.length > 0)
    throw new ValidationError(
      `${moved.join(', ')} changed: give ${unstated.join(', ')} again (a stored secret is never sent to a new destination)`,
      {
        details: unstated.map((field) => ({
          field: `config.${field}`,
          message: `must be given again: ${moved.join(', ')} changed, and a stored secret is never sent to a new destination`,
        })),
      },
    );
  const touchesSecrets = Object.values(secretUpdates).some((value) => value !== undefined);
  const stored =
    touchesSecrets && current.data.secretName ? ((await cp.secrets.get(current.data.secretName)) ?? {}) : {};
  const kept = touchesSecrets
    ? stored
    : Object.fromEntries(current.data.secretsSet.map((field) => [field, '']));
  const { values, changed } = mergeSecrets(kept, secretUpdates);
  throwIfIssues([
    ...requirements(input.targetType, publicConfig, new Set(Object.keys(values))),
    ...(await egressIssues(cp, publicConfig)),
  ]);

  if (input.targetType === 'S3')
    await changeLifecycle(cp, id, current.data, publicConfig, () =>
      touchesSecrets ? Promise.resolve(values) : targetSecrets(cp, current.data),
    );

  const replace = (name: string | undefined) =>
    cp.table.replace(current, describe(id, input, publicConfig, values, name), cp.now());
  const item =
    changed.length > 0
      ? await commitWithSecret(
          cp,
          secretName(cp.secretPrefix, 'target', id),
          values,
          current.data.secretName,
          replace,
        )
      : await replace(current.data.secretName);
  await cp.audit.append(actor, {
    action: 'target.update',
    resource: `target/${id}`,
    details: {
      name: item.data.name,
      version: item.version,
      secretsChanged: changed,
      ...(moved.length > 0
        ? {
            destinationChanged: Object.fromEntries(
              moved.map((field) => [field, publicConfig[field] ?? null]),
            ),
          }
        : {}),
    },
  });
  return toView(item);
}

/** Refused with 409 while an active schedule writes to the target. */
export async function deleteTarget(
  cp: ControlPlane,
  id: string,
  actor: Actor,
  expectedVersion: number | undefined,
): Promise<void> {
  const current = await loadForChange<StoredTarget>(cp, Partition.target, id, { version: expectedVersion });
  const schedules = await cp.table.queryAll<StoredItem<StoredSchedule>>(Partition.schedule);
  const users = schedules
    .filter((item) => item.data.active && item.data.targets.includes(id))
    .map((item) => item.sk);
  if (users.length > 0) {
    throw new ConflictError(
      `target ${id} is used by active schedule(s) ${users.join(', ')}; remove it from them or pause them first`,
    );
  }
  if (current.data.targetType === 'S3' && current.data.config.lifecycle !== undefined) {
    // Best effort: the target goes whatever happens; a rule left behind only moves or cleans up objects.
    await applyLifecycle(cp, id, current.data.config, await targetSecrets(cp, current.data), true).catch(
      (error: unknown) =>
        cp.logger.warn('lifecycle rule not removed', { target: id, error: (error as Error).message }),
    );
  }
  await cp.table.delete(current);
  if (current.data.secretName !== undefined) await cp.secrets.delete(current.data.secretName);
  await cp.audit.append(actor, {
    action: 'target.delete',
    resource: `target/${id}`,
    details: { name: current.data.name },
  });
}

/**
 * Puts the target's lifecycle rule on its bucket (or removes it): before the target is saved, so a rule
 * that cannot be applied (no permission, no bucket) fails the request with the reason and changes nothing.
 */
async function applyLifecycle(
  cp: ControlPlane,
  id: string,
  config: Readonly<Record<string, unknown>>,
  secrets: Readonly<Record<string, string>>,
  remove = false,
): Promise<void> {
  const storage = s3Storage({ name: `target ${id}`, targetType: 'S3', config }, secrets, {
    egress: cp.egress ?? {},
  });
  try {
    await storage.applyLifecycle(remove ? undefined : (config.lifecycle as S3Lifecycle | undefined));
    cp.logger.info(remove ? 'lifecycle rule removed' : 'lifecycle rule applied', { target: id });
  } catch (error) {
    const reason =
      error instanceof StorageError ? `${error.kind}: ${error.message}` : (error as Error).message;
    throw new UpstreamError(
      `the lifecycle rule of target ${id} could not be ${remove ? 'removed from' : 'applied to'} bucket ${String(config.bucket)}: ${reason}`,
    );
  }
}

/** On update: re-applies the rule when it or the repository's place changed (and clears the old place). */
async function changeLifecycle(
  cp: ControlPlane,
  id: string,
  before: StoredTarget,
  config: Record<string, unknown>,
  secrets: () => Promise<Readonly<Record<string, string>>>,
): Promise<void> {
  const place = (c: Readonly<Record<string, unknown>>) =>
    JSON.stringify([c.bucket, c.prefix ?? '', c.endpoint]);
  const moved = place(before.config) !== place(config);
  const changed = JSON.stringify(before.config.lifecycle) !== JSON.stringify(config.lifecycle);
  if (before.config.lifecycle !== undefined && moved)
    await applyLifecycle(cp, id, before.config, await targetSecrets(cp, before), true);
  if (config.lifecycle !== undefined ? moved || changed : changed && !moved)
    await applyLifecycle(cp, id, config, await secrets(), config.lifecycle === undefined);
}

/** Secret values, for the code that connects to the target (never for API responses). */
export async function targetSecrets(
  cp: ControlPlane,
  target: Target & { secretName?: string },
): Promise<Record<string, string>> {
  const stored = target as StoredTarget;
  return stored.secretName === undefined ? {} : ((await cp.secrets.get(stored.secretName)) ?? {});
}

/** A stored target as the code that connects to it needs it (secrets named, not read); undefined when gone. */
export async function findStoredTarget(cp: ControlPlane, id: string): Promise<Target | undefined> {
  return (await cp.table.get<StoredTarget>(Partition.target, id))?.data;
}

/**
 * A stored target opened for the code that reads and writes it (the worker, restores, retention): with its
 * secrets, and every connection under the egress policy.
 */
export async function openStoredTarget(cp: ControlPlane, target: Target): Promise<Storage> {
  return openTarget(target, await targetSecrets(cp, target), { egress: cp.egress ?? {} });
}

async function load(cp: ControlPlane, id: string): Promise<StoredItem<StoredTarget>> {
  return requireFound(await cp.table.get<StoredTarget>(Partition.target, id), `target ${id}`);
}

/**
 * An endpoint (S3, Azure, GCS) or host (FTP, SFTP) that points where the egress policy forbids: the metadata
 * service, link-local, and unless allowed loopback and private addresses. Checked again at every connection.
 */
async function egressIssues(
  cp: ControlPlane,
  config: Readonly<Record<string, unknown>>,
): Promise<FieldIssue[]> {
  const [field, url] =
    typeof config.endpoint === 'string'
      ? ['config.endpoint', config.endpoint]
      : typeof config.host === 'string'
        ? ['config.host', `tcp://${config.host.includes(':') ? `[${config.host}]` : config.host}/`]
        : [];
  if (field === undefined || url === undefined) return [];
  const problem = await endpointProblem(url, cp.egress ?? {});
  return problem === undefined ? [] : [{ field, message: `is not allowed: ${problem}` }];
}

/** The destination fields whose value differs between the stored config and the new one. */
function movedDestination(
  type: TargetType,
  before: Readonly<Record<string, unknown>>,
  after: Readonly<Record<string, unknown>>,
): string[] {
  return DESTINATION_FIELDS[type].filter(
    (field) => JSON.stringify(before[field] ?? null) !== JSON.stringify(after[field] ?? null),
  );
}

function splitSecrets(input: TargetInput): {
  publicConfig: Record<string, unknown>;
  secretUpdates: Record<string, string | null | undefined>;
} {
  const publicConfig: Record<string, unknown> = {};
  const secretUpdates: Record<string, string | null | undefined> = {};
  const secretFields = SECRET_FIELDS[input.targetType];
  for (const [field, value] of Object.entries(input.config as Record<string, unknown>)) {
    if (secretFields.includes(field)) secretUpdates[field] = value as string | null | undefined;
    else if (value !== null && value !== undefined) publicConfig[field] = value;
  }
  return { publicConfig, secretUpdates };
}

function describe(
  id: string,
  input: TargetInput,
  publicConfig: Record<string, unknown>,
  secrets: Record<string, string>,
  name: string | undefined,
): StoredTarget {
  const secretsSet = Object.keys(secrets).sort();
  return {
    id,
    name: input.name ?? defaultName(input.targetType, publicConfig),
    targetType: input.targetType,
    config: publicConfig,
    secretsSet,
    warnings: warnings(input.targetType, publicConfig),
    ...(input.capacity ? { capacity: input.capacity } : {}),
    ...(name === undefined ? {} : { secretName: name }),
  };
}

function defaultName(type: TargetType, config: Record<string, unknown>): string {
  const where = config.host ?? config.bucket ?? config.containerName ?? config.path;
  return `${type} ${String(where)}`;
}

/** Cross-field rules that a per-field schema cannot express (the type's driver says which). */
export function requirements(
  type: TargetType,
  config: Record<string, unknown>,
  secrets: Set<string>,
): FieldIssue[] {
  const driver: TargetDriver = DRIVERS[type];
  return driver.requirements?.(config, secrets) ?? [];
}

function warnings(type: TargetType, config: Record<string, unknown>): string[] {
  const driver: TargetDriver = DRIVERS[type];
  return driver.warnings?.(config) ?? [];
}

function toView(item: StoredItem<StoredTarget>): TargetView {
  const { secretName: _secretName, ...rest } = versioned(item);
  return rest;
}

export type TargetCheck = {
  readonly id: string;
  readonly name: string;
  readonly targetType: TargetType;
} & ProbeResult;

/**
 * POST /api/dr/targets/{id}/check: writes, reads back and deletes a small object on the target with its
 * stored credentials. A target that does not work is a normal answer (`ok: false` with a classified reason),
 * not a failed request.
 */
export async function checkTarget(cp: ControlPlane, id: string): Promise<TargetCheck> {
  const { about, outcome } = await withTarget(cp, id, (storage) =>
    probeTarget(storage, undefined, (error) => logFailure(cp, id, 'check', error)),
  );
  const result: ProbeResult =
    'error' in outcome ? { ok: false, latencyMs: 0, steps: {}, ...outcome } : outcome.value;
  cp.logger.info('target checked', {
    target: id,
    ok: result.ok,
    latencyMs: result.latencyMs,
    ...(result.error ? { kind: result.error.kind } : {}),
  });
  return { ...about, ...result };
}

export type TargetUsage = {
  readonly id: string;
  readonly name: string;
  readonly targetType: TargetType;
  readonly ok: boolean;
  readonly measuredAt: string;
  /** Bytes of every object under the target's repository location. */
  readonly bytesStored?: number;
  /** Free capacity, where the medium tells (LOCAL, SFTP with statvfs, FTP with AVBL). */
  readonly bytesFree?: number;
  readonly error?: { readonly kind: string; readonly message: string };
};

/** GET /api/dr/targets/{id}/usage: bytes stored (and free, where known), measured now by listing the target. */
export async function targetUsage(cp: ControlPlane, id: string): Promise<TargetUsage> {
  const { about, outcome } = await withTarget(cp, id, (storage) => storage.usage());
  const measuredAt = new Date().toISOString();
  if ('error' in outcome) return { ...about, ok: false, measuredAt, ...outcome };
  return { ...about, ok: true, measuredAt, ...outcome.value };
}

/** How long a check or a usage measurement may take before it is answered as `network` (no answer). */
export const TARGET_DEADLINE_MS = 20_000;

/** The full failure goes to the server's log; the answer carries only the kind and a short reason. */
function logFailure(cp: ControlPlane, id: string, what: string, error: unknown): void {
  cp.logger.warn(`target ${what} failed`, { target: id, error: (error as Error).message });
}

/**
 * Opens a target with its stored secrets, runs `use` (for at most TARGET_DEADLINE_MS), closes it; a failure
 * is an answer, not a throw.
 */
async function withTarget<T>(
  cp: ControlPlane,
  id: string,
  use: (storage: Storage) => Promise<T>,
): Promise<{
  about: { id: string; name: string; targetType: TargetType };
  outcome: { value: T } | { error: { kind: string; message: string } };
}> {
  const target = (await load(cp, id)).data;
  const secrets = await targetSecrets(cp, target);
  const about = { id, name: target.name, targetType: target.targetType };
  try {
    // Every connection is checked as it is made: a name can resolve elsewhere since it was saved
    const storage = await openTarget(target, secrets, { egress: cp.egress ?? {} });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new StorageError(
              'network',
              storage.name,
              undefined,
              `no answer within ${TARGET_DEADLINE_MS / 1000} s`,
            ),
          ),
        TARGET_DEADLINE_MS,
      );
    });
    try {
      return { about, outcome: { value: await Promise.race([use(storage), deadline]) } };
    } finally {
      clearTimeout(timer);
      // A storage still waiting on a silent server is not waited for
      void storage.close?.().catch(() => undefined);
    }
  } catch (error) {
    logFailure(cp, id, 'request', error);
    return { about, outcome: { error: publicReason(error) } };
  }
}
