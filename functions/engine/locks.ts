import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { isNotFound, type Storage } from '../storage/storage.ts';
import { RepositoryLockedError } from './errors.ts';

/**
 * Repository locks (docs/repository-format.md, "Locks"). Operations that add data (backups) hold a shared
 * lock; operations that delete (gc, forget, rekey) hold an exclusive one. A lock is an object under `locks/`,
 * written first and then checked against the others, so of two operations that start at once at least one
 * sees the other; the loser removes its own lock and waits or gives up. A holder rewrites its lock every
 * `refreshMs`; a lock is stale when its process is provably dead (same machine, same PID namespace) or, from
 * another machine, when it was not refreshed for `staleMs`.
 */
export type LockKind = 'shared' | 'exclusive';

export interface LockInfo {
  readonly operation: string;
  /** Missing in locks written before version 1.1 of the format: shared. */
  readonly kind?: LockKind;
  readonly host: string;
  /** hostname, boot id and PID namespace: where `pid` means something. Missing where it cannot be told. */
  readonly machine?: string;
  readonly pid: number;
  readonly startedAt: string;
  /** Missing in older locks: `startedAt`. */
  readonly refreshedAt?: string;
}

export interface StoredLock extends LockInfo {
  readonly key: string;
}

/** How often a holder rewrites its lock. */
export const LOCK_REFRESH_MS = 5 * 60_000;
/** A lock from another machine not refreshed for this long is stale. */
export const LOCK_STALE_MS = 30 * 60_000;

export interface LockOptions {
  readonly kind: LockKind;
  /** How long to wait for conflicting locks to go (default 0: refuse at once). */
  readonly waitMs?: number;
  readonly refreshMs?: number;
  readonly staleMs?: number;
  readonly now?: () => Date;
  /** Called while waiting for another operation's lock (for progress output). */
  readonly onWait?: (holders: readonly StoredLock[]) => void;
}

export interface Lock {
  readonly id: string;
  readonly key: string;
  readonly kind: LockKind;
  /** Throws when the lock was lost (removed by another process, or not refreshed in time). */
  check(): Promise<void>;
  release(): Promise<void>;
}

export const lockKey = (id: string) => `locks/${id}`;

let thisMachine: string | undefined | null = null;

/** hostname/boot id/PID namespace of this process, or undefined where /proc does not tell. */
export function machineId(): string | undefined {
  if (thisMachine !== null) return thisMachine;
  try {
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const namespace = readlinkSync('/proc/self/ns/pid');
    thisMachine = `${hostname()}/${boot}/${namespace}`;
  } catch {
    thisMachine = undefined;
  }
  return thisMachine;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Why a lock is stale, or undefined while it may still be held. */
export function staleReason(lock: LockInfo, now: Date, staleMs = LOCK_STALE_MS): string | undefined {
  const machine = machineId();
  if (machine !== undefined && lock.machine === machine) {
    if (lock.pid === process.pid) return undefined;
    return alive(lock.pid) ? undefined : `process ${lock.pid} on this machine is gone`;
  }
  const refreshed = Date.parse(lock.refreshedAt ?? lock.startedAt);
  const age = now.getTime() - (Number.isNaN(refreshed) ? 0 : refreshed);
  return age >= staleMs ? `not refreshed for ${Math.round(age / 60_000)} min` : undefined;
}

export async function readLocks(storage: Storage): Promise<StoredLock[]> {
  const keys: string[] = [];
  for await (const object of storage.list('locks/')) keys.push(object.key);
  const all: StoredLock[] = [];
  for (const key of keys.sort()) {
    try {
      all.push({ key, ...(JSON.parse((await storage.read(key)).toString('utf8')) as LockInfo) });
    } catch (error) {
      if (isNotFound(error)) continue; // released meanwhile
      // Locks are written whole (put is atomic): one that does not parse was damaged, not left by a live
      // process. It counts as stale, so gc removes it.
      all.push({
        key,
        operation: 'unknown (unreadable lock)',
        host: '?',
        pid: 0,
        startedAt: new Date(0).toISOString(),
      });
    }
  }
  return all;
}

/** Locks that keep an operation of `kind` from running: all live others for exclusive, live exclusive ones for shared. */
export function conflicts(
  locks: readonly StoredLock[],
  kind: LockKind,
  own: string | undefined,
  now: Date,
  staleMs = LOCK_STALE_MS,
): StoredLock[] {
  return locks.filter(
    (lock) =>
      lock.key !== own &&
      (kind === 'exclusive' || lock.kind === 'exclusive') &&
      staleReason(lock, now, staleMs) === undefined,
  );
}

export function describeLocks(locks: readonly LockInfo[]): string {
  return locks
    .map(
      (lock) =>
        `${lock.operation} (${lock.kind ?? 'shared'}) on ${lock.host} pid ${lock.pid} since ${lock.startedAt}`,
    )
    .join('; ');
}

/**
 * Takes a lock: writes it, then checks the others. On a conflict the lock is removed again and, while
 * `waitMs` allows, retried after a pause; then `RepositoryLockedError` names the holders.
 */
export async function acquireLock(storage: Storage, operation: string, options: LockOptions): Promise<Lock> {
  const now = options.now ?? (() => new Date());
  const refreshMs = options.refreshMs ?? LOCK_REFRESH_MS;
  const staleMs = options.staleMs ?? LOCK_STALE_MS;
  const deadline = now().getTime() + (options.waitMs ?? 0);
  const machine = machineId();
  for (let attempt = 0; ; attempt++) {
    const startedAt = now().toISOString();
    const id = `${startedAt.replace(/[-:.]/g, '')}-${randomBytes(4).toString('hex')}`;
    const key = lockKey(id);
    const info: LockInfo = {
      operation,
      kind: options.kind,
      host: hostname(),
      ...(machine === undefined ? {} : { machine }),
      pid: process.pid,
      startedAt,
      refreshedAt: startedAt,
    };
    await storage.put(key, Buffer.from(JSON.stringify(info)));
    const holders = conflicts(await readLocks(storage), options.kind, key, now(), staleMs);
    if (holders.length === 0) return held(storage, id, key, info, refreshMs, staleMs, now);
    await storage.delete([key]);
    const remaining = deadline - now().getTime();
    if (remaining <= 0)
      throw new RepositoryLockedError(
        `the repository is in use (${describeLocks(holders)}); retry when it finishes`,
      );
    options.onWait?.(holders);
    // Jitter, so that two exclusive operations that keep meeting do not keep meeting.
    await sleep(Math.min(remaining, Math.min(5000, 250 * 2 ** Math.min(attempt, 4)) * (0.5 + Math.random())));
  }
}

function held(
  storage: Storage,
  id: string,
  key: string,
  info: LockInfo,
  refreshMs: number,
  staleMs: number,
  now: () => Date,
): Lock {
  let lost: string | undefined;
  let refreshedAt = Date.parse(info.startedAt);
  let released = false;
  let refreshing: Promise<void> = Promise.resolve();
  const removed = `lock ${key} was removed by another process (it took this operation for a dead one)`;
  // Once others may take the lock for stale, it is lost for good: refreshing it then could bring back a
  // lock that a gc already counted as dead, after it deleted this operation's packs.
  const expired = () => {
    if (!lost && now().getTime() - refreshedAt >= staleMs - refreshMs)
      lost = `lock ${key} could not be refreshed since ${new Date(refreshedAt).toISOString()}`;
    return lost !== undefined;
  };
  const refresh = async () => {
    if (released || expired()) return;
    try {
      if (!(await storage.stat(key))) {
        lost = removed;
        return;
      }
      const at = now();
      await storage.put(key, Buffer.from(JSON.stringify({ ...info, refreshedAt: at.toISOString() })));
      refreshedAt = at.getTime();
    } catch {
      // Tried again at the next tick; `check` fails once the lock may look stale to others.
    }
  };
  const timer = setInterval(() => {
    refreshing = refreshing.then(refresh);
  }, refreshMs);
  timer.unref();
  return {
    id,
    key,
    kind: info.kind ?? 'shared',
    check: async () => {
      await refreshing;
      if (!expired() && !(await storage.stat(key))) lost = removed;
      if (lost) throw new RepositoryLockedError(`the repository lock was lost: ${lost}`);
    },
    release: async () => {
      released = true;
      clearInterval(timer);
      await refreshing;
      await storage.delete([key]);
    },
  };
}
