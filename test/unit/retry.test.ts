import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { withRetries } from '../../functions/storage/retry.ts';
import {
  StorageError,
  type ObjectInfo,
  type Storage,
  type StorageErrorKind,
} from '../../functions/storage/storage.ts';

/** A storage whose operations fail with the given kinds, in order, then succeed. */
function flaky(failures: StorageErrorKind[]): Storage & { calls: number } {
  const fail = () => {
    const kind = failures.shift();
    if (kind) throw new StorageError(kind, 'flaky', 'k', `${kind} failure`);
  };
  const storage = {
    name: 'flaky',
    calls: 0,
    put: async () => {
      storage.calls++;
      fail();
    },
    get: async () => {
      storage.calls++;
      fail();
      return Readable.from([Buffer.from('x')]);
    },
    read: async () => {
      storage.calls++;
      fail();
      return Buffer.from('data');
    },
    stat: async () => {
      storage.calls++;
      fail();
      return { key: 'k', size: 4 };
    },
    list: (_prefix: string): AsyncIterable<ObjectInfo> => ({
      async *[Symbol.asyncIterator]() {
        storage.calls++;
        fail();
        yield { key: 'a', size: 1 };
        fail();
        yield { key: 'b', size: 1 };
      },
    }),
    delete: async () => {
      storage.calls++;
      fail();
    },
    usage: async () => ({ bytesStored: 0 }),
  };
  return storage;
}

const noSleep = { sleep: async () => undefined, random: () => 0.5 };

describe('withRetries', () => {
  it('retries transient (network) failures with exponential backoff and jitter, then succeeds', async () => {
    const inner = flaky(['network', 'network']);
    const delays: number[] = [];
    const storage = withRetries(inner, {
      ...noSleep,
      baseDelayMs: 100,
      onRetry: ({ delayMs }) => delays.push(delayMs),
    });
    expect((await storage.read('k')).toString()).toBe('data');
    expect(inner.calls).toBe(3);
    expect(delays).toEqual([50, 100]);
  });

  it.each(['authentication', 'permission', 'not-found', 'invalid-key', 'space', 'other'] as const)(
    'never retries a %s failure',
    async (kind) => {
      const inner = flaky([kind]);
      await expect(withRetries(inner, noSleep).stat('k')).rejects.toMatchObject({ kind });
      expect(inner.calls).toBe(1);
    },
  );

  it('gives up after the configured attempts with the last error', async () => {
    const inner = flaky(['network', 'network', 'network', 'network']);
    await expect(withRetries(inner, { ...noSleep, attempts: 3 }).delete(['k'])).rejects.toMatchObject({
      kind: 'network',
    });
    expect(inner.calls).toBe(3);
  });

  it('retries a Buffer put but never a stream put (the stream is consumed)', async () => {
    const buffered = flaky(['network']);
    await withRetries(buffered, noSleep).put('k', Buffer.from('x'));
    expect(buffered.calls).toBe(2);
    const streamed = flaky(['network']);
    await expect(
      withRetries(streamed, noSleep).put('k', Readable.from([Buffer.from('x')])),
    ).rejects.toMatchObject({ kind: 'network' });
    expect(streamed.calls).toBe(1);
  });

  it('does not retry after the caller aborted', async () => {
    const inner = flaky(['network', 'network']);
    const controller = new AbortController();
    controller.abort();
    await expect(
      withRetries(inner, noSleep).put('k', Buffer.from('x'), { signal: controller.signal }),
    ).rejects.toMatchObject({ kind: 'network' });
    expect(inner.calls).toBe(1);
  });

  it('retries a listing that failed before its first object, not one that failed midway', async () => {
    const early = flaky(['network']);
    const listed: string[] = [];
    for await (const object of withRetries(early, noSleep).list('')) listed.push(object.key);
    expect(listed).toEqual(['a', 'b']);

    const midway = flaky([]);
    const failing = withRetries(
      {
        ...midway,
        list: () => ({
          async *[Symbol.asyncIterator]() {
            yield { key: 'a', size: 1 };
            throw new StorageError('network', 'flaky', '', 'dropped');
          },
        }),
      },
      noSleep,
    );
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const object of failing.list('')) seen.push(object.key);
      })(),
    ).rejects.toThrow('dropped');
    expect(seen).toEqual(['a']);
  });
});
