import type { HeavySteps } from '../env.ts';
import { randomBytes } from 'node:crypto';
import type { ControlPlane, WorkflowName } from '../context.ts';
import { ConflictError, NotFoundError, ValidationError, type FieldIssue } from '../errors.ts';
import type { PartitionKey, StoredItem } from '../store/table.ts';

/** What every resource response carries besides its own fields. */
export interface Versioned {
  readonly version: number;
  readonly createdAt: string;
  readonly updatedAt: string;
}

export function versioned<T extends object>(item: StoredItem<T>): T & Versioned {
  return { ...item.data, version: item.version, createdAt: item.createdAt, updatedAt: item.updatedAt };
}

/** Optimistic concurrency: a client that names the version it read must still be looking at it. */
export function checkVersion(
  current: StoredItem<unknown> | undefined,
  expected: number | undefined,
  what: string,
): void {
  if (expected === undefined) return;
  const actual = current?.version ?? 0;
  if (actual !== expected) {
    throw new ConflictError(`${what} is at version ${actual}, not ${expected}; read it again and retry`);
  }
}

export function requireFound<T>(item: T | undefined, what: string): T {
  if (item === undefined) throw new NotFoundError(`${what} does not exist`);
  return item;
}

/**
 * The stored item a change (update, delete) applies to: it must exist (404), be at the version the client
 * read (409), and a body that names an id must name this one (400).
 */
/**
 * The stored item about to be changed (a target, a schedule), at the version the caller last read, if it
 * gave one; `bodyId`, the id in a replacing body, must name the same item.
 */
export async function loadForChange<T>(
  cp: ControlPlane,
  partition: PartitionKey,
  id: string,
  expected: { version: number | undefined; bodyId?: string },
): Promise<StoredItem<T>> {
  const what = `${partition.toLowerCase()} ${id}`;
  const current = requireFound(await cp.table.get<T>(partition, id), what);
  checkVersion(current, expected.version, what);
  if (expected.bodyId !== undefined && expected.bodyId !== id)
    throw ValidationError.forField('id', `must match the id in the path (${id})`);
  return current;
}

export function throwIfIssues(issues: readonly FieldIssue[]): void {
  if (issues.length > 0) {
    throw new ValidationError(issues.map((issue) => `${issue.field}: ${issue.message}`).join('; '), {
      details: issues,
    });
  }
}

/**
 * Applies a secret update: a string sets the field, `null` removes it, `undefined` keeps what is stored.
 * Returns the resulting map and the names of the fields that changed (for the audit log).
 */
export function mergeSecrets(
  stored: Readonly<Record<string, string>>,
  updates: Readonly<Record<string, string | null | undefined>>,
): { values: Record<string, string>; changed: string[] } {
  const values: Record<string, string> = { ...stored };
  const changed: string[] = [];
  for (const [field, value] of Object.entries(updates)) {
    if (value === undefined) continue;
    if (value === null) {
      if (field in values) changed.push(field);
      delete values[field];
    } else {
      if (values[field] !== value) changed.push(field);
      values[field] = value;
    }
  }
  return { values, changed };
}

/**
 * Commits a change whose secret values changed, without ever overwriting a secret that a stored item points
 * at: the new values go under a fresh name (`<base>/<random>`), `commit` writes the item that points at it,
 * and only then is the old secret removed. If `commit` fails, the new secret is removed and the stored item
 * still points at the old one, which was never touched.
 */
export async function commitWithSecret<T>(
  cp: ControlPlane,
  base: string,
  values: Readonly<Record<string, string>>,
  oldName: string | undefined,
  commit: (name: string | undefined) => Promise<T>,
): Promise<T> {
  const newName = Object.keys(values).length > 0 ? `${base}/${randomBytes(6).toString('hex')}` : undefined;
  if (newName !== undefined) await cp.secrets.put(newName, values);
  let result: T;
  try {
    result = await commit(newName);
  } catch (error) {
    if (newName !== undefined) await cp.secrets.delete(newName).catch(() => undefined);
    throw error;
  }
  if (oldName !== undefined) {
    await cp.secrets.delete(oldName).catch((error: unknown) => {
      cp.logger.warn('an old secret could not be removed; remove it by hand', {
        secret: oldName,
        error: String(error),
      });
    });
  }
  return result;
}

/**
 * Changes an item's data with `change`, re-reading and retrying when another writer changed it meanwhile
 * (optimistic concurrency; for entries that several workflow steps and the API update).
 */
export async function updateItem<T>(
  cp: ControlPlane,
  partition: PartitionKey,
  id: string,
  what: string,
  change: (current: T) => T,
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const item = requireFound(await cp.table.get<T>(partition, id), what);
    try {
      return (await cp.table.replace(item, change(item.data), cp.now())).data;
    } catch (error) {
      if (!(error instanceof ConflictError) || attempt >= 4) throw error;
    }
  }
}

/** Where an execution's heavy steps run: part of every restore's and DR test's execution input. */
export function runnerOf(cp: ControlPlane): HeavySteps {
  return cp.heavySteps ?? { heavy: 'lambda', fromBytes: 0 };
}

/**
 * A partition's items newest first (by sort key) that `matches` takes, at most `limit`, after the sort key
 * `after`; `last` is the sort key of the last one when the limit was reached (more may follow: the caller
 * seals it into the next page's token).
 */
export async function newestFirst<T>(
  cp: ControlPlane,
  partition: PartitionKey,
  matches: (data: T) => boolean,
  limit: number,
  after: string | undefined,
): Promise<{ items: T[]; last?: string }> {
  const items: T[] = [];
  for (;;) {
    const page = await cp.table.query<StoredItem<T>>(partition, {
      descending: true,
      limit: 100,
      ...(after === undefined ? {} : { after }),
    });
    for (const item of page.items) {
      if (!matches(item.data)) continue;
      items.push(item.data);
      if (items.length === limit) return { items, last: item.sk };
    }
    if (page.items.length === 0 || page.nextToken === undefined) return { items };
    after = page.items.at(-1)!.sk;
  }
}

/**
 * Starts a run's workflow (a restore, a DR test, a failover) and keeps the execution's ARN in its entry. If
 * it does not start, the entry is marked as `failed` says (with the reason) and the error is thrown.
 */
export async function startRunWorkflow<T extends object>(
  cp: ControlPlane,
  item: StoredItem<T>,
  workflow: WorkflowName,
  input: Record<string, unknown>,
  failed: (reason: string) => T,
): Promise<T> {
  if (!cp.workflows) throw new Error(`the ${workflow} workflow is not deployed here`);
  try {
    const { executionArn } = await cp.workflows.start(workflow, item.sk, input);
    return (await cp.table.replace(item, { ...item.data, executionArn }, cp.now())).data;
  } catch (error) {
    await cp.table.replace(item, failed(`the workflow did not start: ${(error as Error).message}`), cp.now());
    throw error;
  }
}

/** `work`, or an error saying `what` did not answer within `ms` (a late failure of `work` is then ignored). */
export async function withTimeout<T>(what: string, work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000} s`)), ms);
  });
  work.catch(() => undefined);
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
