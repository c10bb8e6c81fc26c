import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { beforeEach, describe, expect, it } from 'vitest';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import { StorageError } from '../../functions/storage/storage.ts';
import { checked } from '../../functions/storage/facade.ts';

let dir: string;
let storage: LocalStorage;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dr-storage-'));
  storage = new LocalStorage(dir);
});

describe('LocalStorage', () => {
  it('puts, stats, reads whole and by range, lists and deletes', async () => {
    await storage.put('data/ab/one', Buffer.from('0123456789'));
    await storage.put('index/x', Readable.from([Buffer.from('a'), Buffer.from('b')]));
    expect(await storage.stat('data/ab/one')).toEqual({ key: 'data/ab/one', size: 10 });
    expect((await checked(storage).read('data/ab/one')).toString()).toBe('0123456789');
    expect((await checked(storage).read('data/ab/one', { offset: 3, length: 4 })).toString()).toBe('3456');
    expect((await checked(storage).read('data/ab/one', { offset: 10, length: 0 })).toString()).toBe('');
    const listed = [];
    for await (const object of storage.list('data/')) listed.push(object.key);
    expect(listed).toEqual(['data/ab/one']);
    await storage.delete(['data/ab/one', 'not/there']);
    expect(await storage.stat('data/ab/one')).toBeUndefined();
    expect((await storage.usage()).bytesStored).toBe(2);
  });

  it('refuses a range past the end and a missing key, with the storage and key named', async () => {
    await storage.put('k', Buffer.from('abc'));
    await expect(checked(storage).read('k', { offset: 2, length: 2 })).rejects.toThrow('outside the object');
    await expect(checked(storage).read('missing')).rejects.toMatchObject({
      kind: 'not-found',
      key: 'missing',
    });
  });

  it.each(['../escape', '/absolute', 'a//b', 'a/./b', 'a/../b', 'sp ace', '', 'a\\b'])(
    'refuses the key %j (the facade, before the adapter sees it), writing nothing',
    async (key) => {
      const composed = checked(storage);
      await expect(composed.put(key, Buffer.from('x'))).rejects.toBeInstanceOf(StorageError);
      await expect(composed.put(key, Buffer.from('x'))).rejects.toMatchObject({ kind: 'invalid-key' });
      await expect(composed.get(key)).rejects.toMatchObject({ kind: 'invalid-key' });
      await expect(composed.delete([key])).rejects.toMatchObject({ kind: 'invalid-key' });
      expect(await readdir(dir, { recursive: true })).toEqual([]);
    },
  );

  it('leaves no object when a put fails midway, and gc-style cleanup removes the partial file', async () => {
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(1000));
        this.destroy(new Error('connection lost'));
      },
    });
    await expect(storage.put('data/ab/broken', failing)).rejects.toThrow('connection lost');
    expect(await storage.stat('data/ab/broken')).toBeUndefined();
    const listed = [];
    for await (const object of storage.list('')) listed.push(object.key);
    expect(listed).toEqual([]);
    await writeFile(join(dir, 'orphan.abc.partial'), 'x');
    expect(await storage.removeLeftovers(new Date(Date.now() + 1000))).toBe(1);
    expect(await readdir(dir)).not.toContain('orphan.abc.partial');
  });

  it('replaces an existing object whole', async () => {
    await storage.put('k', Buffer.from('first version'));
    await storage.put('k', Buffer.from('second'));
    expect((await checked(storage).read('k')).toString()).toBe('second');
  });
});
