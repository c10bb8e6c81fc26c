import type { Readable } from 'node:stream';
import { rangeError } from './remote.ts';
import { withRetries, type RetryOptions } from './retry.ts';
import {
  collect,
  isNotFound,
  normalizeKey,
  normalizePrefix,
  type Backend,
  type ByteRange,
  type PutOptions,
  type Storage,
} from './storage.ts';

/**
 * What every caller gets, composed once around an adapter (`openTarget` does it; drctl and the tests for
 * a repository on a local directory too): keys and prefixes normalized, and traversal refused, before the
 * adapter sees them; ranges checked; `read()` from `get()`; retries of transient failures; a refused
 * connection named as such. Adapters keep only their I/O and how their errors are classified.
 */
export function compose(backend: Backend, retry: RetryOptions = {}): Storage {
  return withRetries(checked(backend), retry);
}

/** The same without retries (the conformance suite checks the adapters through this). */
export function checked(backend: Backend): Storage {
  const name = backend.name;
  const key = (value: string) => normalizeKey(name, value);
  const get = async (value: string, range?: ByteRange): Promise<Readable> => {
    const normalized = key(value);
    if (
      (range !== undefined && !(Number.isSafeInteger(range.offset) && Number.isSafeInteger(range.length))) ||
      (range !== undefined && (range.offset < 0 || range.length < 0))
    )
      throw rangeError(name, normalized, range);
    return backend.get(normalized, range);
  };
  return {
    name,
    get warnings() {
      return backend.warnings;
    },
    put: async (value: string, body: Readable | Buffer, options?: PutOptions) =>
      backend.put(key(value), body, options),
    get,
    read: async (value: string, range?: ByteRange) => collect(await get(value, range)),
    stat: async (value: string) => {
      const normalized = key(value);
      try {
        return await backend.stat(normalized);
      } catch (error) {
        // Adapters may answer a missing object either way; callers get undefined
        if (isNotFound(error)) return undefined;
        throw error;
      }
    },
    list: (prefix: string) => ({
      async *[Symbol.asyncIterator]() {
        yield* backend.list(normalizePrefix(name, prefix));
      },
    }),
    delete: async (keys: readonly string[]) => backend.delete(keys.map(key)),
    usage: () => backend.usage(),
    ...(backend.removeLeftovers
      ? { removeLeftovers: (olderThan: Date) => backend.removeLeftovers!(olderThan) }
      : {}),
    ...(backend.close ? { close: () => backend.close!() } : {}),
  };
}
