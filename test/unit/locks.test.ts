import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RepositoryLockedError } from '../../functions/engine/errors.ts';
import {
  acquireLock,
  lockKey,
  machineId,
  readLocks,
  staleReason,
  type LockInfo,
} from '../../functions/engine/locks.ts';
import { checked } from '../../functions/storage/facade.ts';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import type { Storage } from '../../functions/storage/storage.ts';

async function storage(): Promise<Storage> {
  return checked(new LocalStorage(await mkdtemp(join(tmpdir(), 'dr-locks-'))));
}

/** A lock written by a process on another machine, last refreshed `minutesAgo`. */
async function foreignLock(store: Storage, kind: 'shared' | 'exclusive', minutesAgo: number) {
  const at = new Date(Date.now() - minutesAgo * 60_000).toISOString();
  const info: LockInfo = {
    operation: `${kind} elsewhere`,
    kind,
    host: 'other-host',
    machine: 'other-host/boot/pid:[1]',
    pid: 1,
    startedAt: new Date(Date.now() - 120 * 60_000).toISOString(),
    refreshedAt: at,
  };
  await store.put(lockKey(`foreign-${kind}-${minutesAgo}`), Buffer.from(JSON.stringify(info)));
}

describe('repository locks', () => {
  it('lets shared locks share, and keeps exclusive ones apart from everything live', async () => {
    const store = await storage();
    const a = await acquireLock(store, 'backup a', { kind: 'shared' });
    const b = await acquireLock(store, 'backup b', { kind: 'shared' });
    await expect(acquireLock(store, 'gc', { kind: 'exclusive' })).rejects.toThrow(
      /in use \(backup a \(shared\).*backup b \(shared\)/,
    );
    // The refused lock removed itself
    expect((await readLocks(store)).map((lock) => lock.operation).sort()).toEqual(['backup a', 'backup b']);
    await a.release();
    await b.release();
    const gc = await acquireLock(store, 'gc', { kind: 'exclusive' });
    await expect(acquireLock(store, 'backup c', { kind: 'shared' })).rejects.toBeInstanceOf(
      RepositoryLockedError,
    );
    await gc.release();
    expect(await readLocks(store)).toEqual([]);
  });

  it('waits for an exclusive lock to go when asked to', async () => {
    const store = await storage();
    const gc = await acquireLock(store, 'gc', { kind: 'exclusive' });
    const waits: string[] = [];
    const backup = acquireLock(store, 'backup', {
      kind: 'shared',
      waitMs: 20_000,
      onWait: (holders) => waits.push(holders[0]!.operation),
    });
    await new Promise((resolve) => setTimeout(resolve, 700));
    await gc.release();
    const held = await backup;
    expect(waits[0]).toBe('gc');
    await held.release();
  });

  it('of two exclusive operations started at once, never both run', async () => {
    for (let round = 0; round < 20; round++) {
      const store = await storage();
      const results = await Promise.allSettled([
        acquireLock(store, 'gc one', { kind: 'exclusive' }),
        acquireLock(store, 'gc two', { kind: 'exclusive' }),
      ]);
      expect(results.filter((result) => result.status === 'fulfilled').length).toBeLessThanOrEqual(1);
      for (const result of results) if (result.status === 'fulfilled') await result.value.release();
    }
  });

  it('refreshes a held lock, so that another machine never takes it for stale', async () => {
    const store = await storage();
    const lock = await acquireLock(store, 'backup', { kind: 'shared', refreshMs: 100 });
    const [before] = await readLocks(store);
    await new Promise((resolve) => setTimeout(resolve, 450));
    const [after] = await readLocks(store);
    expect(Date.parse(after!.refreshedAt!)).toBeGreaterThan(Date.parse(before!.refreshedAt!));
    expect(after!.startedAt).toBe(before!.startedAt);
    await lock.check();
    await lock.release();
  });

  it('never refreshes a lock that others may already have taken for stale', async () => {
    const store = await storage();
    let clock = Date.now();
    const lock = await acquireLock(store, 'backup', {
      kind: 'shared',
      refreshMs: 100,
      staleMs: 300,
      now: () => new Date(clock),
    });
    const [before] = await readLocks(store);
    // The process was frozen past the stale limit: a gc elsewhere may have counted the lock dead
    clock += 350;
    await new Promise((resolve) => setTimeout(resolve, 350));
    const [after] = await readLocks(store);
    expect(after!.refreshedAt).toBe(before!.refreshedAt);
    await expect(lock.check()).rejects.toThrow(/lock was lost: .*could not be refreshed/);
    await lock.release();
  });

  it('fails the holder whose lock was removed (taken for stale), instead of letting it go on', async () => {
    const store = await storage();
    const lock = await acquireLock(store, 'backup', { kind: 'shared', refreshMs: 60_000 });
    await store.delete([lock.key]);
    await expect(lock.check()).rejects.toThrow(/lock was lost: .*removed by another process/);
    await lock.release();
  });

  it("counts another machine's lock stale only when not refreshed for the limit", async () => {
    const store = await storage();
    await foreignLock(store, 'shared', 10);
    await foreignLock(store, 'shared', 31);
    const locks = await readLocks(store);
    const fresh = locks.find((lock) => lock.key.endsWith('-10'));
    const old = locks.find((lock) => lock.key.endsWith('-31'));
    expect(staleReason(fresh!, new Date())).toBeUndefined();
    expect(staleReason(old!, new Date())).toMatch(/not refreshed for 3[01] min/);
    // The fresh one (started two hours ago, refreshed ten minutes ago) still keeps gc out
    await expect(acquireLock(store, 'gc', { kind: 'exclusive' })).rejects.toThrow(/shared elsewhere/);
  });

  it("counts this machine's lock stale as soon as its process is gone, and never while it lives", async () => {
    expect(machineId()).toMatch(/\S/);
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
    const lock: LockInfo = {
      operation: 'backup',
      kind: 'shared',
      host: 'here',
      machine: machineId()!,
      pid: child.pid!,
      startedAt: new Date(0).toISOString(),
      refreshedAt: new Date(0).toISOString(),
    };
    // Alive: not stale, however old
    expect(staleReason(lock, new Date(), 0)).toBeUndefined();
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    // Gone: stale at once
    expect(staleReason({ ...lock, refreshedAt: new Date().toISOString() }, new Date())).toMatch(
      /process \d+ on this machine is gone/,
    );
  });
});
