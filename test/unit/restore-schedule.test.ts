import { describe, expect, it } from 'vitest';
import { DataSection, type TableLock } from '../../functions/engine/restore.ts';

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
