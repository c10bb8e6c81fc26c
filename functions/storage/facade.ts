import { Readable } from 'node:stream';
import { rangeError, withinLength } from './remote.ts';
import { withRetries, type RetryOptions } from './retry.ts';
import {
  bytesUnder,
  collect,
  inBatches,
  isNotFound,
  normalizeKey,
  normalizePrefix,
  StorageError,
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
  const stat = async (normalized: string) => {
    try {
      return await backend.stat(normalized);
    } catch (error) {
      // Adapters may answer a missing object either way; callers get undefined
      if (isNotFound(error)) return undefined;
      throw error;
    }
  };
  const checkRange = (normalized: string, range: ByteRange) => {
    if (
      !(Number.isSafeInteger(range.offset) && Number.isSafeInteger(range.length)) ||
      range.offset < 0 ||
      range.length < 0
    )
      throw rangeError(name, normalized, range);
  };
  const get = async (value: string, range?: ByteRange): Promise<Readable> => {
    const normalized = key(value);
    if (range === undefined) return backend.get(normalized);
    checkRange(normalized, range);
    if (range.length === 0) {
      const size = (await stat(normalized))?.size;
      if (size === undefined) throw new StorageError('not-found', name, normalized, 'no such object');
      if (range.offset > size) throw rangeError(name, normalized, range, size);
      return Readable.from([]);
    }
    // Some media answer a range that runs past the end with the bytes they have: the contract is to refuse.
    const body = await backend.get(normalized, range);
    return withinLength(body, range.length, () => rangeError(name, normalized, range));
  };
  return {
    name,
    get warnings() {
      return backend.warnings;
    },
    put: async (value: string, body: Readable | Buffer, options?: PutOptions) =>
      backend.put(key(value), body, options),
    get,
    read: async (value: string, range?: ByteRange) => {
      if (range && range.length > 0 && backend.readRange) {
        const normalized = key(value);
        checkRange(normalized, range);
        return backend.readRange(normalized, range);
      }
      return collect(await get(value, range));
    },
    stat: async (value: string) => stat(key(value)),
    list: (prefix: string) => ({
      async *[Symbol.asyncIterator]() {
        yield* backend.list(normalizePrefix(name, prefix));
      },
    }),
    delete: async (keys: readonly string[]) =>
      'delete' in backend
        ? backend.delete(keys.map(key))
        : inBatches(keys.map(key), backend.deleteParallel ?? 16, (normalized) =>
            backend.deleteOne(normalized),
          ),
    usage: async () => (backend.usage ? backend.usage() : { bytesStored: await bytesUnder(backend) }),
    ...(backend.removeLeftovers
      ? { removeLeftovers: (olderThan: Date) => backend.removeLeftovers!(olderThan) }
      : {}),
    ...(backend.close ? { close: () => backend.close!() } : {}),
  };
}
