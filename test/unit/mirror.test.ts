import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import { MirrorStorage } from '../../functions/storage/mirror.ts';
import type { Storage } from '../../functions/storage/storage.ts';
import { checked } from '../../functions/storage/facade.ts';

const local = async (name: string) =>
  checked(new LocalStorage(await mkdtemp(join(tmpdir(), `dr-mirror-${name}-`)), name));

/** A storage whose writes each take `ms` longer; `done.count` says how many it finished. */
function slow(storage: Storage, ms: number, done: { count: number }): Storage {
  return new Proxy(storage, {
    get(target, property, receiver) {
      if (property === 'put')
        return async (...args: Parameters<Storage['put']>) => {
          await new Promise((resolve) => setTimeout(resolve, ms));
          await target.put(...args);
          done.count++;
        };
      return Reflect.get(target, property, receiver) as unknown;
    },
  });
}

describe('MirrorStorage', () => {
  it('writes every object to every member, in order, and reads from the first', async () => {
    const [a, b] = await Promise.all([local('a'), local('b')]);
    const mirror = new MirrorStorage([
      { id: 'a', storage: a },
      { id: 'b', storage: b },
    ]);
    await mirror.put('data/one', Buffer.from('one'));
    await mirror.put('data/two', Readable.from([Buffer.from('t'), Buffer.from('wo')]));
    expect((await mirror.read('data/two')).toString()).toBe('two');
    const results = await mirror.flush();
    expect(results.map((result) => [result.id, result.ok, result.bytesWritten])).toEqual([
      ['a', true, 6],
      ['b', true, 6],
    ]);
    for (const storage of [a, b]) expect((await storage.read('data/one')).toString()).toBe('one');
    await mirror.delete(['data/one']);
    expect(await b.stat('data/one')).toBeUndefined();
  });

  it('drops a failing member with its reason and keeps writing to the others', async () => {
    const [a, c] = await Promise.all([local('a'), local('c')]);
    const file = join(await mkdtemp(join(tmpdir(), 'dr-mirror-broken-')), 'not-a-directory');
    await writeFile(file, 'x');
    const mirror = new MirrorStorage([
      { id: 'a', storage: a },
      { id: 'broken', storage: checked(new LocalStorage(join(file, 'repo'), 'broken')) },
      { id: 'c', storage: c },
    ]);
    await mirror.put('data/one', Buffer.from('one'));
    await mirror.put('data/two', Buffer.from('two'));
    const results = await mirror.flush();
    expect(results.find((result) => result.id === 'broken')).toMatchObject({
      ok: false,
      bytesWritten: 0,
      error: { kind: 'other' },
    });
    expect(results.filter((result) => result.ok).map((result) => result.id)).toEqual(['a', 'c']);
    expect((await c.read('data/two')).toString()).toBe('two');
  });

  it('fails a write only when every member has failed, naming each reason', async () => {
    const file = join(await mkdtemp(join(tmpdir(), 'dr-mirror-none-')), 'file');
    await writeFile(file, 'x');
    const mirror = new MirrorStorage([
      { id: 'x', storage: checked(new LocalStorage(join(file, 'x'), 'x')) },
      { id: 'y', storage: checked(new LocalStorage(join(file, 'y'), 'y')) },
    ]);
    await mirror.put('first', Buffer.from('queued, then failed everywhere'));
    await mirror.flush();
    await expect(mirror.put('second', Buffer.from('x'))).rejects.toThrow(/every target failed \(x: .*; y: /);
  });

  it('lets the fast members finish while a slow one works through its bounded queue', async () => {
    const [fast1, fast2, lagging] = await Promise.all([local('f1'), local('f2'), local('slow')]);
    const slowDone = { count: 0 };
    const mirror = new MirrorStorage(
      [
        { id: 'fast-1', storage: fast1 },
        { id: 'slow', storage: slow(lagging, 40, slowDone) },
        { id: 'fast-2', storage: fast2 },
      ],
      { queueBytes: 64 * 1024 },
    );
    // 12 × 8 KiB through a 64 KiB queue: the writer runs ahead of the slow member by at most 8 objects.
    let ahead = 0;
    for (let index = 0; index < 12; index++) {
      await mirror.put(`packs/${index}`, Buffer.alloc(8 * 1024, index));
      ahead = Math.max(ahead, index + 1 - slowDone.count);
    }
    const results = await mirror.flush();
    expect(results.every((result) => result.ok)).toBe(true);
    const finished = Object.fromEntries(results.map((result) => [result.id, result.finishedAt!.getTime()]));
    expect(finished['fast-1']).toBeLessThan(finished.slow!);
    expect(finished['fast-2']).toBeLessThan(finished.slow!);
    expect(ahead).toBe(8);
    expect(await lagging.stat('packs/11')).toEqual({ key: 'packs/11', size: 8 * 1024 });
  });
});
