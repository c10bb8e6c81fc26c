import { describe, expect, it } from 'vitest';
import {
  buildWorkers,
  DataSection,
  sharesThisMachine,
  type TableLock,
} from '../../functions/engine/restore.ts';

/** Work that records when it ran, and ends when told. */
function recorder() {
  const log: string[] = [];
  const running = new Set<string>();
  const overlaps: string[][] = [];
  const gates = new Map<string, () => void>();
  const work = (name: string) => () => {
    log.push(name);
    running.add(name);
    overlaps.push([...running].sort());
    return new Promise<void>((resolve) =>
      gates.set(name, () => {
        running.delete(name);
        resolve();
      }),
    );
  };
  const end = async (name: string) => {
    gates.get(name)!();
    await new Promise((resolve) => setImmediate(resolve));
  };
  return { log, overlaps, work, end, running };
}

const key = (table: string): TableLock[] => [{ table, exclusive: true }];
const index = (table: string): TableLock[] => [{ table, exclusive: false }];

describe('the restore’s data section (what pg_restore -j does)', () => {
  it('runs the costliest build first, builds before loads', async () => {
    const { log, work, end } = recorder();
    const slots = new DataSection(1);
    slots.later(work('load b'));
    slots.first(work('small index'), 10, index('a'));
    slots.first(work('gin index'), 80, index('c'));
    await end('load b');
    await end('gin index');
    await end('small index');
    expect(log).toEqual(['load b', 'gin index', 'small index']);
  });

  it('never runs a key beside another build on its table; indexes of one table run together', async () => {
    const { log, overlaps, work, end, running } = recorder();
    const slots = new DataSection(3);
    slots.first(work('index 1'), 50, index('t'));
    slots.first(work('index 2'), 40, index('t'));
    // The key waits for both indexes although a slot is free; another table's build takes the slot
    slots.first(work('key'), 30, key('t'));
    slots.first(work('other'), 1, index('u'));
    expect([...running].sort()).toEqual(['index 1', 'index 2', 'other']);
    await end('index 1');
    expect(running.has('key')).toBe(false);
    await end('index 2');
    expect(running.has('key')).toBe(true);
    // A foreign key locks both its tables
    slots.first(work('fk u→t'), 100, [...key('u'), ...key('t')]);
    await end('other');
    expect(running.has('fk u→t')).toBe(false);
    await end('key');
    expect(running.has('fk u→t')).toBe(true);
    await end('fk u→t');
    await slots.finish();
    expect(log).toEqual(['index 1', 'index 2', 'other', 'key', 'fk u→t']);
    for (const together of overlaps) {
      if (together.includes('key')) expect(together.filter((name) => name.startsWith('index'))).toEqual([]);
      if (together.includes('fk u→t')) expect(together).toEqual(['fk u→t']);
    }
  });

  it('stops starting work after the first failure, and throws it', async () => {
    const slots = new DataSection(1);
    const started: string[] = [];
    slots.first(
      () => {
        started.push('a');
        return Promise.reject(new Error('index build failed'));
      },
      2,
      index('a'),
    );
    slots.first(
      () => {
        started.push('b');
        return Promise.resolve();
      },
      1,
      index('b'),
    );
    await expect(slots.finish()).rejects.toThrow('index build failed');
    expect(started).toEqual(['a']);
  });
});

describe('parallel helpers of an index build', () => {
  it('shares the cores of a server on this machine among the slots running, and leaves a remote one alone', () => {
    // 2 cores: a build beside another gets none, one alone gets the other core
    expect(buildWorkers(true, 2, 2)).toBe(0);
    expect(buildWorkers(true, 1, 2)).toBe(1);
    expect(buildWorkers(true, 4, 8)).toBe(1);
    expect(buildWorkers(true, 1, 16)).toBe(15);
    expect(buildWorkers(true, 3, 2)).toBe(0);
    expect(buildWorkers(false, 2, 2)).toBeUndefined();
  });

  it('knows a server on this machine by its address or socket', () => {
    const on = (url: string) => sharesThisMachine({ url });
    expect(on('postgres://app@127.0.0.1:5432/app')).toBe(true);
    expect(on('postgres://app@127.3.2.1/app')).toBe(true);
    expect(on('postgres://app@localhost/app')).toBe(true);
    expect(on('postgres://app@[::1]:5433/app')).toBe(true);
    expect(on('postgres:///app')).toBe(true);
    expect(on('postgres:///app?host=/var/run/postgresql')).toBe(true);
    expect(on('not a url')).toBe(false);
    expect(on('postgres://app@db.internal:5432/app')).toBe(false);
    expect(on('postgres://app@10.0.0.12/app')).toBe(false);
    expect(on('postgres://app@mydb.abc.eu-west-1.rds.amazonaws.com/app')).toBe(false);
    expect(on('postgres://app@127.0.0.1.example.com/app')).toBe(false);
  });
});
