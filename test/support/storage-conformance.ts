import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checked } from '../../functions/storage/facade.ts';
import { collect, StorageError, type Backend, type Storage } from '../../functions/storage/storage.ts';

/**
 * The one conformance suite every target type runs against a real server (restic's backend test suite is
 * the model): the contract of `functions/storage/storage.ts`, exercised the way the engine uses it.
 */
export interface ConformanceTarget {
  /** The adapter; the suite checks it as callers get it, through the facade (`checked`: no retries). */
  readonly storage: Backend;
  /** The same target with wrong credentials (a secret containing 'wrong-secret'); required with `credentials`. */
  readonly withWrongCredentials?: Backend;
  cleanup(): Promise<void>;
}

/** Deterministic pseudo-random bytes: byte p is byte (p % 4) of fmix32(p / 4), so any range can be regenerated cheaply. */
export function patternBytes(offset: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) {
    const position = offset + i;
    let h = Math.floor(position / 4) | 0;
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    h ^= h >>> 16;
    out[i] = (h >>> ((position % 4) * 8)) & 0xff;
  }
  return out;
}

/** A stream of `size` pattern bytes, generated as it is read (never held whole). */
export function patternStream(size: number, failAt?: number): Readable {
  let offset = 0;
  return new Readable({
    read() {
      if (failAt !== undefined && offset >= failAt) {
        this.destroy(new Error('upload interrupted by the test'));
        return;
      }
      if (offset >= size) {
        this.push(null);
        return;
      }
      const length = Math.min(1 << 20, size - offset);
      this.push(patternBytes(offset, length));
      offset += length;
    },
  });
}

export function storageConformance(
  name: string,
  open: () => Promise<ConformanceTarget>,
  options: { bigUploadBytes?: number; credentials?: boolean } = {},
): void {
  describe(`storage conformance: ${name}`, () => {
    let target: { storage: Storage; withWrongCredentials?: Storage; cleanup(): Promise<void> };
    beforeAll(async () => {
      const opened = await open();
      target = {
        storage: checked(opened.storage),
        ...(opened.withWrongCredentials
          ? { withWrongCredentials: checked(opened.withWrongCredentials) }
          : {}),
        cleanup: () => opened.cleanup(),
      };
    });
    afterAll(async () => {
      await target?.cleanup();
    });

    it('puts, stats, reads, replaces and deletes objects', async () => {
      const { storage } = target;
      await storage.put('basics/one', Buffer.from('first'));
      expect(await storage.stat('basics/one')).toEqual({ key: 'basics/one', size: 5 });
      expect((await storage.read('basics/one')).toString()).toBe('first');
      await storage.put('basics/one', Buffer.from('second version'));
      expect((await storage.read('basics/one')).toString()).toBe('second version');
      await storage.delete(['basics/one', 'basics/never-existed']);
      expect(await storage.stat('basics/one')).toBeUndefined();
    });

    it('reports a missing object as not-found, naming the storage and the key', async () => {
      const error = await target.storage.read('basics/missing').catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(StorageError);
      expect(error).toMatchObject({ kind: 'not-found', key: 'basics/missing' });
      expect((error as Error).message).toContain(target.storage.name);
    });

    it('reads ranges at chunk boundaries exactly, and refuses ranges past the end', async () => {
      const { storage } = target;
      const size = 300_000;
      await storage.put('ranges/object', patternBytes(0, size));
      for (const [offset, length] of [
        [0, 1],
        [0, size],
        [size - 1, 1],
        [65_535, 2],
        [131_072, 65_536],
        [size, 0],
      ] as const) {
        expect(
          (await storage.read('ranges/object', { offset, length })).equals(patternBytes(offset, length)),
          `${offset}+${length}`,
        ).toBe(true);
      }
      await expect(storage.read('ranges/object', { offset: size - 10, length: 11 })).rejects.toBeInstanceOf(
        StorageError,
      );
    });

    it('lists more than 1000 objects under a prefix, and only those', async () => {
      const { storage } = target;
      const keys = Array.from({ length: 1010 }, (_, index) => `many/${String(index).padStart(5, '0')}`);
      for (let index = 0; index < keys.length; index += 32) {
        await Promise.all(keys.slice(index, index + 32).map((key) => storage.put(key, Buffer.from(key))));
      }
      await storage.put('many-other/x', Buffer.from('not listed'));
      const listed: string[] = [];
      for await (const object of storage.list('many/')) listed.push(object.key);
      expect(listed.sort()).toEqual(keys);
      await storage.delete(keys);
      const after: string[] = [];
      for await (const object of storage.list('many/')) after.push(object.key);
      expect(after).toEqual([]);
    });

    const bigSize = options.bigUploadBytes ?? 200 * 1024 * 1024;
    it(`streams a ${Math.round(bigSize / 1048576)} MB upload with bounded memory and reads it back`, async () => {
      const { storage } = target;
      const before = process.memoryUsage().rss;
      let peak = before;
      const sampler = setInterval(() => {
        peak = Math.max(peak, process.memoryUsage().rss);
      }, 20);
      try {
        await storage.put('big/object', patternStream(bigSize));
      } finally {
        clearInterval(sampler);
      }
      expect(await storage.stat('big/object')).toEqual({ key: 'big/object', size: bigSize });
      // Held whole, the upload would add at least its own size. Streamed, it adds the adapter's buffers (S3 and
      // Azure keep a few 8 MiB parts) plus what V8 lets accumulate before collecting external memory (~64 MB).
      expect(peak - before).toBeLessThan(bigSize * 0.75);
      const hash = createHash('sha256');
      for await (const data of await storage.get('big/object')) hash.update(data as Buffer);
      const expected = createHash('sha256');
      for await (const data of patternStream(bigSize)) expected.update(data as Buffer);
      expect(hash.digest('hex')).toBe(expected.digest('hex'));
      const tail = await storage.read('big/object', { offset: bigSize - 4096, length: 4096 });
      expect(tail.equals(patternBytes(bigSize - 4096, 4096))).toBe(true);
      await storage.delete(['big/object']);
    }, 300_000);

    it('leaves no object behind an upload that fails midway', async () => {
      const { storage } = target;
      await expect(
        storage.put('interrupted/object', patternStream(20 * 1024 * 1024, 9 * 1024 * 1024)),
      ).rejects.toThrow();
      expect(await storage.stat('interrupted/object')).toBeUndefined();
      const listed: string[] = [];
      for await (const object of storage.list('interrupted/')) listed.push(object.key);
      expect(listed).toEqual([]);
    });

    it('refuses keys that could escape the repository', async () => {
      for (const key of ['../outside', '/absolute', 'a/../b', 'a//b']) {
        await expect(target.storage.put(key, Buffer.from('x'))).rejects.toMatchObject({
          kind: 'invalid-key',
        });
      }
    });

    // Registered only for media with credentials (LOCAL has none): no test here passes without asserting.
    if (options.credentials) {
      it('classifies wrong credentials as an authentication error, without the secret in the message', async () => {
        expect(target.withWrongCredentials).toBeDefined();
        const error = await target
          .withWrongCredentials!.read('basics/anything')
          .catch((caught: unknown) => caught);
        expect(error).toBeInstanceOf(StorageError);
        expect((error as StorageError).kind).toBe('authentication');
        expect((error as Error).message).not.toContain('wrong-secret');
      });
    }

    it('reports usage', async () => {
      await target.storage.put('usage/object', Buffer.alloc(1000));
      expect((await target.storage.usage()).bytesStored).toBeGreaterThanOrEqual(1000);
      expect(await collect(await target.storage.get('usage/object'))).toHaveLength(1000);
    });
  });
}
