import { randomBytes } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { StorageError, type ByteRange } from './storage.ts';

/**
 * Helpers for the adapters that write files on a filesystem (SFTP, FTP, LOCAL): temporary names for uploads
 * in progress; and the checks that make a ranged read return exactly the bytes asked for (the facade's).
 */
export const PARTIAL_SUFFIX = '.partial';

/** `<file>.<random>.partial`: where an upload is written before it is renamed over its final name. */
export function partialName(file: string): string {
  return `${file}.${randomBytes(6).toString('hex')}${PARTIAL_SUFFIX}`;
}

export function rangeError(storage: string, key: string, range: ByteRange, size?: number): StorageError {
  return new StorageError(
    'other',
    storage,
    key,
    `range ${range.offset}+${range.length} is outside the object${size === undefined ? '' : ` (${size} bytes)`}`,
  );
}

/** A buffer cut into pieces of at most `size` bytes (views, no copies). */
export function* slices(buffer: Buffer, size: number): Iterable<Buffer> {
  for (let offset = 0; offset < buffer.length; offset += size)
    yield buffer.subarray(offset, Math.min(buffer.length, offset + size));
}

/** Passes `stream` through, failing it with `short()` if it ends before `length` bytes or runs past them. */
export function withinLength(stream: Readable, length: number, short: () => Error): Readable {
  let seen = 0;
  const counted = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > length) done(short());
      else done(null, chunk);
    },
    flush(done) {
      done(seen === length ? null : short());
    },
  });
  stream.on('error', (error) => counted.destroy(error));
  return stream.pipe(counted);
}

/**
 * `make(directory)` run once per directory however many uploads ask at the same time; a failure is not
 * remembered (the next upload tries again). `clear()` forgets everything (a new connection).
 */
export function oncePerDirectory(make: (directory: string) => Promise<void>) {
  const made = new Map<string, Promise<void>>();
  const ensure = (directory: string): Promise<void> => {
    let pending = made.get(directory);
    if (pending === undefined) {
      pending = make(directory);
      made.set(directory, pending);
      pending.catch(() => made.delete(directory));
    }
    return pending;
  };
  return Object.assign(ensure, { clear: () => made.clear() });
}
