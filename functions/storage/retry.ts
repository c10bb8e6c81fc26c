import type { Readable } from 'node:stream';
import {
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type Storage,
  type Usage,
} from './storage.ts';
import { egressRefusal } from './egress.ts';

/**
 * Retries as a decorator, composed once around any adapter (restic's backend_retry is the model), so no
 * adapter carries its own retry loop.
 *
 * - Only transient failures are retried: `StorageError`s of kind `network`. Authentication, permission,
 *   not-found, invalid keys, full disks and anything unclassified fail at once.
 * - Never after the caller aborted.
 * - A `put` of a stream is not retried (the stream is consumed); a `put` of a Buffer is.
 * - A `list` is retried only until it has yielded its first object.
 * - Delays: exponential backoff with full jitter, `random() × min(maxDelayMs, baseDelayMs × 2^attempt)`.
 */
export interface RetryOptions {
  /** Attempts in all, the first included (default 4). */
  readonly attempts?: number;
  readonly baseDelayMs?: number;
  readonly maxDelayMs?: number;
  /** Replaceable in tests. */
  readonly sleep?: (ms: number) => Promise<void>;
  readonly random?: () => number;
  readonly onRetry?: (info: {
    operation: string;
    key: string;
    attempt: number;
    delayMs: number;
    error: StorageError;
  }) => void;
}

export function isTransient(error: unknown): error is StorageError {
  return error instanceof StorageError && error.kind === 'network';
}

/** A connection the egress policy refused, however deep in an SDK's errors: said in our words, not retried. */
function named(error: unknown, storage: string, key: string): unknown {
  if (error instanceof StorageError && error.kind === 'egress') return error;
  const refusal = egressRefusal(error);
  if (refusal === undefined) return error;
  return new StorageError('egress', storage, key || undefined, refusal.message, {
    cause: error,
    ownWords: true,
  });
}

export function withRetries(storage: Storage, options: RetryOptions = {}): Storage {
  const attempts = Math.max(1, options.attempts ?? 4);
  const base = options.baseDelayMs ?? 200;
  const max = options.maxDelayMs ?? 5000;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const random = options.random ?? Math.random;

  async function retrying<T>(
    operation: string,
    key: string,
    run: () => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await run();
      } catch (caught) {
        const error = named(caught, storage.name, key);
        if (!isTransient(error) || attempt >= attempts || signal?.aborted) throw error;
        const delayMs = Math.round(random() * Math.min(max, base * 2 ** (attempt - 1)));
        options.onRetry?.({ operation, key, attempt, delayMs, error });
        await sleep(delayMs);
      }
    }
  }

  return {
    name: storage.name,
    get warnings() {
      return storage.warnings;
    },
    put: (key: string, body: Readable | Buffer, putOptions?: PutOptions) =>
      Buffer.isBuffer(body)
        ? retrying('put', key, () => storage.put(key, body, putOptions), putOptions?.signal)
        : storage.put(key, body, putOptions).catch((error: unknown) => {
            throw named(error, storage.name, key);
          }),
    get: (key: string, range?: ByteRange) => retrying('get', key, () => storage.get(key, range)),
    read: (key: string, range?: ByteRange) => retrying('read', key, () => storage.read(key, range)),
    stat: (key: string) => retrying('stat', key, () => storage.stat(key)),
    delete: (keys: readonly string[]) => retrying('delete', keys[0] ?? '', () => storage.delete(keys)),
    usage: (): Promise<Usage> => retrying('usage', '', () => storage.usage()),
    ...(storage.removeLeftovers
      ? { removeLeftovers: (olderThan: Date) => storage.removeLeftovers!(olderThan) }
      : {}),
    ...(storage.close ? { close: () => storage.close!() } : {}),
    list: (prefix: string): AsyncIterable<ObjectInfo> => ({
      async *[Symbol.asyncIterator]() {
        for (let attempt = 1; ; attempt++) {
          let yielded = false;
          try {
            for await (const object of storage.list(prefix)) {
              yielded = true;
              yield object;
            }
            return;
          } catch (caught) {
            const error = named(caught, storage.name, prefix);
            if (yielded || !isTransient(error) || attempt >= attempts) throw error;
            const delayMs = Math.round(random() * Math.min(max, base * 2 ** (attempt - 1)));
            options.onRetry?.({ operation: 'list', key: prefix, attempt, delayMs, error });
            await sleep(delayMs);
          }
        }
      },
    }),
  };
}
