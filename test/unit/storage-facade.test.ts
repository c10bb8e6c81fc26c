import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { checked } from '../../functions/storage/facade.ts';
import { StorageError, type DeletingOneByOne, type ObjectInfo } from '../../functions/storage/storage.ts';

/** An in-memory medium that, like S3, answers a range running past the end with the bytes it has. */
function medium(objects: Map<string, Buffer>, deleted: string[][] = []): DeletingOneByOne {
  let batch: string[] = [];
  return {
    name: 'memory',
    put: async (key, body) => {
      objects.set(key, Buffer.isBuffer(body) ? body : Buffer.from(''));
    },
    get: async (key, range) => {
      const object = objects.get(key);
      if (!object) throw new StorageError('not-found', 'memory', key, 'no such object');
      return Readable.from([range ? object.subarray(range.offset, range.offset + range.length) : object]);
    },
    stat: async (key) => {
      const object = objects.get(key);
      return object ? { key, size: object.length } : undefined;
    },
    async *list(prefix): AsyncIterable<ObjectInfo> {
      for (const [key, object] of objects) if (key.startsWith(prefix)) yield { key, size: object.length };
    },
    deleteParallel: 2,
    deleteOne: async (key) => {
      batch.push(key);
      if (batch.length === 2) {
        deleted.push(batch);
        batch = [];
      }
      await Promise.resolve();
      objects.delete(key);
    },
  };
}

describe('the storage facade', () => {
  it('refuses a ranged read that a medium answers short, and answers an empty range from stat', async () => {
    const storage = checked(medium(new Map([['a/b', Buffer.from('0123456789')]])));
    expect((await storage.read('a/b', { offset: 2, length: 3 })).toString()).toBe('234');
    await expect(storage.read('a/b', { offset: 8, length: 5 })).rejects.toThrow('outside the object');
    expect((await storage.read('a/b', { offset: 10, length: 0 })).length).toBe(0);
    await expect(storage.read('a/b', { offset: 11, length: 0 })).rejects.toThrow(
      'outside the object (10 bytes)',
    );
    await expect(storage.read('missing', { offset: 0, length: 0 })).rejects.toMatchObject({
      kind: 'not-found',
    });
    await expect(storage.read('a/b', { offset: -1, length: 2 })).rejects.toThrow('outside the object');
  });

  it('deletes one by one, deleteParallel at a time, and measures usage by listing', async () => {
    const objects = new Map(['x/1', 'x/2', 'x/3', 'y/4'].map((key) => [key, Buffer.from(key)] as const));
    const deleted: string[][] = [];
    const storage = checked(medium(objects, deleted));
    expect(await storage.usage()).toEqual({ bytesStored: 12 });
    await storage.delete(['x/1', 'x/2', 'x/3', 'y/4']);
    expect(deleted).toEqual([
      ['x/1', 'x/2'],
      ['x/3', 'y/4'],
    ]);
    expect(objects.size).toBe(0);
    await expect(storage.delete(['../escape'])).rejects.toMatchObject({ kind: 'invalid-key' });
  });
});
