import type { Readable } from 'node:stream';

/**
 * The storage every caller uses: the engine is written against this and nothing else. Keys are relative,
 * '/'-separated, and normalized by `normalizeKey` before any adapter sees them: adapters implement `Backend`
 * (their I/O and the classification of their errors), and `compose` (facade.ts) makes a `Storage` of one.
 *
 * Contract:
 * - `put` makes an object visible only once all of it is durably written; a failed or aborted `put` leaves
 *   no object under `key` (a temporary one may remain for `gc`, never under the final key). Putting an
 *   existing key replaces it atomically.
 * - `get` streams an object, or the `length` bytes from `offset`; a missing key fails with `NotFoundError`.
 *   A range past the end fails rather than returning fewer bytes.
 * - `list` yields every object under a prefix, in no particular order, paging internally.
 * - `delete` removes the keys that exist and ignores the others.
 * - Errors are `StorageError`s naming the storage and the key, never a credential.
 */
export interface Storage {
  /** A human-readable name for messages: the target name, or its location. */
  readonly name: string;
  /** What an operator should know about how the target is reached (FTP: credentials sent in clear). */
  readonly warnings?: readonly string[];
  put(key: string, body: Readable | Buffer, options?: PutOptions): Promise<void>;
  get(key: string, range?: ByteRange): Promise<Readable>;
  /** Convenience for small objects and ranges: the bytes, in memory. */
  read(key: string, range?: ByteRange): Promise<Buffer>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(keys: readonly string[]): Promise<void>;
  /** Bytes stored under the repository root, and free capacity where the medium can tell. */
  usage(): Promise<Usage>;
  /**
   * Removes what interrupted writes left behind, older than `olderThan`, where the medium keeps any (a
   * LOCAL temporary file; S3 multipart uploads are aborted by the upload itself). Returns how many.
   */
  removeLeftovers?(olderThan: Date): Promise<number>;
  /** Closes a connection the storage holds open (SFTP, FTP); the next call opens a new one. */
  close?(): Promise<void>;
}

/**
 * What an adapter implements (LOCAL, S3, Azure, GCS, FTP, SFTP): the contract above, for keys and prefixes
 * already normalized. The facade does the rest: `read` from `get`; ranges checked for sign, an empty range
 * answered from `stat`, and a ranged body that ends short (or runs long) failed, so `get` is only asked for
 * ranges of at least one byte and may simply stream what the medium answers; `stat` of a missing object may
 * fail `not-found` (the facade answers undefined); `usage` defaults to the bytes listed; and a medium without
 * a batch delete implements `deleteOne`, run `deleteParallel` (16) at a time.
 */
export type Backend = DeletingInBatches | DeletingOneByOne;

interface BackendCommon extends Omit<Storage, 'read' | 'delete' | 'usage'> {
  usage?(): Promise<Usage>;
  /**
   * A range's bytes without a stream, where the medium reads them cheaper so (a local file: one read call);
   * asked only for ranges of at least one byte, and must fail, not answer short, past the end.
   */
  readRange?(key: string, range: ByteRange): Promise<Buffer>;
}

/** A medium with a call that deletes many objects (S3's DeleteObjects) or a cheap delete (a local file). */
export interface DeletingInBatches extends BackendCommon {
  delete(keys: readonly string[]): Promise<void>;
}

export interface DeletingOneByOne extends BackendCommon {
  /** Removes one object; nothing if it is not there. */
  deleteOne(key: string): Promise<void>;
  readonly deleteParallel?: number;
}

export interface PutOptions {
  readonly signal?: AbortSignal;
}

export interface ByteRange {
  readonly offset: number;
  readonly length: number;
}

export interface ObjectInfo {
  readonly key: string;
  readonly size: number;
}

export interface Usage {
  readonly bytesStored: number;
  readonly bytesFree?: number;
}

export type StorageErrorKind =
  | 'not-found'
  | 'authentication'
  | 'permission'
  | 'network'
  | 'space'
  | 'invalid-key'
  /** The egress policy refused the address a connection was about to go to (never retried). */
  | 'egress'
  | 'other';

export class StorageError extends Error {
  readonly kind: StorageErrorKind;
  readonly storage: string;
  readonly key: string | undefined;
  /**
   * The message is ours alone (no text from the remote side, no network detail) and may be shown to an API
   * caller as it is: a local filesystem error, an SFTP host key to pin.
   */
  readonly ownWords: boolean;

  constructor(
    kind: StorageErrorKind,
    storage: string,
    key: string | undefined,
    message: string,
    options?: { cause?: unknown; ownWords?: boolean },
  ) {
    super(`${storage}${key === undefined ? '' : ` (${key})`}: ${message}`, options);
    this.kind = kind;
    this.storage = storage;
    this.key = key;
    this.ownWords = options?.ownWords ?? false;
  }

  override get name(): string {
    return this.kind === 'not-found' ? 'StorageNotFound' : 'StorageError';
  }
}

/** A short reason per kind, for API answers: never the remote side's words (an error page, an XML body). */
const REASONS: Record<StorageErrorKind, string> = {
  'not-found': 'the bucket, container or directory does not exist, or the object is missing',
  authentication: 'the target refused the credentials',
  permission: 'the credentials may not do this on the target',
  // One text for refused, reset, unanswered and timed out: an answer must not tell which ports are open
  network: 'the target could not be reached, or did not answer in time',
  space: 'the target has no space left',
  'invalid-key': 'the target refused an object name',
  egress: 'the egress policy refused the address',
  other: 'the target answered with an error (the server log has it)',
};

/**
 * What an API answer may say of a storage failure: the classified kind and a short reason. The full message
 * (which can hold the remote side's error body) is for the server's log.
 */
export function publicReason(error: unknown): { kind: StorageErrorKind; message: string } {
  if (!(error instanceof StorageError)) return { kind: 'other', message: REASONS.other };
  if (error.ownWords && error.kind !== 'network') return { kind: error.kind, message: error.message };
  return { kind: error.kind, message: `${error.storage}: ${REASONS[error.kind]}` };
}

export function isNotFound(error: unknown): boolean {
  return error instanceof StorageError && error.kind === 'not-found';
}

const SEGMENT = /^[A-Za-z0-9._-]+$/;

/**
 * Keys are relative paths of safe segments: no leading '/', no '.' or '..', no empty segment, no character
 * outside [A-Za-z0-9._-]. The engine only makes such keys; this refuses anything else before it can reach a
 * filesystem path or an object name.
 */
export function normalizeKey(storage: string, key: string): string {
  const segments = key.split('/');
  const bad = segments.some((segment) => !SEGMENT.test(segment) || segment === '.' || segment === '..');
  if (key.length === 0 || key.length > 1024 || bad) {
    throw new StorageError(
      'invalid-key',
      storage,
      undefined,
      `refusing the key ${JSON.stringify(key.slice(0, 100))}`,
    );
  }
  return key;
}

/** Prefixes are keys with an optional trailing '/', or empty for everything. */
export function normalizePrefix(storage: string, prefix: string): string {
  if (prefix === '') return '';
  const trimmed = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  return `${normalizeKey(storage, trimmed)}${prefix.endsWith('/') ? '/' : ''}`;
}

/** A stream's (or any async iterable's) bytes, in memory. */
export async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Bytes of every object under `prefix` (usage, for media that only tell by listing). */
export async function bytesUnder(storage: Pick<Storage, 'list'>, prefix = ''): Promise<number> {
  let bytes = 0;
  for await (const object of storage.list(prefix)) bytes += object.size;
  return bytes;
}

/** Runs `work` for every key, `parallel` at a time (batch deletes of media without a batch call). */
export async function inBatches(
  keys: readonly string[],
  parallel: number,
  work: (key: string) => Promise<void>,
): Promise<void> {
  for (let index = 0; index < keys.length; index += parallel)
    await Promise.all(keys.slice(index, index + parallel).map(work));
}
