import { Client, FTPError, type FileInfo } from 'basic-ftp';
import { posix } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import {
  bytesUnder,
  collect,
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type DeletingOneByOne,
  type StorageErrorKind,
  type Usage,
} from '../storage.ts';
import { resolveAllowed, type EgressPolicy } from '../egress.ts';
import { oncePerDirectory, PARTIAL_SUFFIX, partialName, rangeError } from '../remote.ts';

export interface FtpStorageOptions {
  /** Where connections may go: the host is resolved and checked at each connection. Unset: anywhere. */
  readonly egress?: EgressPolicy;
  readonly host: string;
  readonly port?: number;
  readonly username: string;
  readonly password: string;
  /** The repository directory on the server: absolute, or relative to the login directory. */
  readonly path: string;
  /**
   * Explicit TLS (AUTH TLS, then PROT P for data): `auto` (default) uses it when the server offers it and
   * records a warning when it does not; `required` refuses such a server; `off` never asks.
   */
  readonly tls?: 'auto' | 'required' | 'off';
  /** Accept a certificate no CA vouches for (test and lab servers only). */
  readonly allowSelfSignedCertificate?: boolean;
  /** Idle timeout of the control and data connections, milliseconds (default 30 s). */
  readonly timeoutMs?: number;
  /** Connections at most (FTP runs one transfer per connection; default 4). */
  readonly connections?: number;
  readonly name?: string;
}

const NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'EPIPE', 'EAI_AGAIN']);
/** Objects up to this size are fetched whole once for ranged reads and served from a small cache. */
const CACHED_OBJECT_MAX = 16 * 1024 * 1024;
const CACHE_BYTES_MAX = 32 * 1024 * 1024;

/**
 * A repository in a directory on an FTP server, over a small pool of connections (one transfer each).
 *
 * - Uploads go to `<key>.<random>.partial` and are renamed over the key once the server confirmed the whole
 *   transfer (226): an interrupted upload leaves only a partial file, which `list` hides and `gc` removes.
 * - FTP cannot end a download at a byte: a range is read from its offset (REST) and the connection closed
 *   after the last byte. Since the engine reads many small ranges of 8 MiB packs, objects up to 16 MiB are
 *   fetched whole once and ranges served from a bounded cache (32 MiB; packs are immutable, named by hash).
 */
export class FtpStorage implements DeletingOneByOne {
  readonly name: string;
  /** What an operator should know about how this target is reached (credentials in clear, …). */
  readonly warnings: string[] = [];
  private readonly options: FtpStorageOptions;
  private readonly root: string;
  private readonly idle: Client[] = [];
  private readonly waiting: ((client: Client | undefined) => void)[] = [];
  private open = 0;
  /** `mkdir -p`, each directory made once (per connection, for SFTP) even when many uploads ask at once. */
  private readonly ensureDirectory = oncePerDirectory((directory) => this.makeDirectory(directory));
  private readonly cache = new Map<string, Promise<Buffer>>();
  private cachedBytes = 0;

  constructor(options: FtpStorageOptions) {
    this.options = options;
    this.root = options.path.replace(/\/+$/, '') || '/';
    this.name =
      options.name ??
      `ftp://${options.username}@${options.host}:${options.port ?? 21}/${this.root.replace(/^\//, '')}`;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    const file = this.pathOf(key);
    const temporary = partialName(file);
    this.forget(key);
    try {
      await this.ensureDirectory(posix.dirname(file));
      await this.withClient(key, async (client) => {
        const source = Buffer.isBuffer(body) ? Readable.from([body]) : body;
        const aborted = () => source.destroy(options.signal?.reason as Error);
        options.signal?.addEventListener('abort', aborted, { once: true });
        try {
          options.signal?.throwIfAborted();
          await client.uploadFrom(source, temporary);
        } finally {
          options.signal?.removeEventListener('abort', aborted);
        }
        options.signal?.throwIfAborted();
        try {
          await client.rename(temporary, file);
        } catch {
          // Servers that will not rename over an existing file: remove it, then rename.
          await client.remove(file, true);
          await client.rename(temporary, file);
        }
      });
    } catch (error) {
      await this.withClient(key, (client) => client.remove(temporary, true)).catch(() => undefined);
      throw this.wrap(error, key);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const size = (await this.stat(key))?.size;
    if (size === undefined) throw new StorageError('not-found', this.name, key, 'no such object');
    if (range === undefined) return this.download(key, 0);
    if (range.offset + range.length > size) throw rangeError(this.name, key, range, size);
    if (size <= CACHED_OBJECT_MAX) {
      const whole = await this.cached(key);
      return Readable.from([whole.subarray(range.offset, range.offset + range.length)]);
    }
    return this.download(key, range.offset, range.offset + range.length < size ? range.length : undefined);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const file = this.pathOf(key);
    try {
      return { key, size: await this.withClient(key, (client) => client.size(file)) };
    } catch (error) {
      throw this.wrap(error, key); // not-found: the facade answers undefined
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const normalized = prefix;
    const slash = normalized.lastIndexOf('/');
    for await (const entry of this.walk(slash < 0 ? '' : normalized.slice(0, slash))) {
      if (!entry.key.endsWith(PARTIAL_SUFFIX) && entry.key.startsWith(normalized))
        yield { key: entry.key, size: entry.size };
    }
  }

  get deleteParallel(): number {
    return this.options.connections ?? 4;
  }

  async deleteOne(key: string): Promise<void> {
    this.forget(key);
    try {
      // 550 (no such file) is ignored: deleting what is not there is not an error.
      await this.withClient(key, (client) => client.remove(this.pathOf(key), true));
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  async usage(): Promise<Usage> {
    const bytesStored = await bytesUnder(this);
    // AVBL (draft-peterson-streamlined-ftp-command-extensions) where the server has it: free bytes.
    const answer = await this.withClient(undefined, (client) =>
      client.sendIgnoringError(`AVBL ${this.root}`),
    );
    const free = answer.code === 213 ? Number(answer.message.replace(/^213\s*/, '').trim()) : NaN;
    return Number.isFinite(free) ? { bytesStored, bytesFree: free } : { bytesStored };
  }

  async removeLeftovers(olderThan: Date): Promise<number> {
    let removed = 0;
    for await (const entry of this.walk('')) {
      if (!entry.key.endsWith(PARTIAL_SUFFIX) || (entry.modifiedAt && entry.modifiedAt >= olderThan))
        continue;
      const file = `${this.root}/${entry.key}`;
      await this.withClient(entry.key, (client) => client.remove(file, true)).catch(() => undefined);
      removed++;
    }
    return removed;
  }

  close(): Promise<void> {
    for (const client of this.idle.splice(0)) {
      client.close();
      this.open--;
    }
    return Promise.resolve();
  }

  private async *walk(base: string): AsyncIterable<{ key: string; size: number; modifiedAt?: Date }> {
    const pending = [base];
    while (pending.length > 0) {
      const relative = pending.pop()!;
      const directory = relative === '' ? this.root : `${this.root}/${relative}`;
      let entries: FileInfo[];
      try {
        entries = await this.withClient(relative, (client) => client.list(directory));
      } catch (error) {
        const wrapped = this.wrap(error, relative);
        if (wrapped.kind === 'not-found') continue;
        throw wrapped;
      }
      for (const entry of entries) {
        if (entry.name === '.' || entry.name === '..') continue;
        const key = relative === '' ? entry.name : `${relative}/${entry.name}`;
        if (entry.isDirectory) pending.push(key);
        else if (entry.isFile)
          yield { key, size: entry.size, ...(entry.modifiedAt ? { modifiedAt: entry.modifiedAt } : {}) };
      }
    }
  }

  /**
   * Streams `key` from `offset`; with `length`, the connection is closed after that many bytes (FTP has no
   * way to end a transfer early but hanging up), otherwise it goes back to the pool when the transfer ends.
   */
  private async download(key: string, offset: number, length?: number): Promise<Readable> {
    const file = this.pathOf(key);
    const client = await this.acquire(key);
    const out = new PassThrough();
    let remaining = length ?? Infinity;
    let cut = false;
    const sink = new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        if (remaining <= 0) return done();
        const piece = chunk.length > remaining ? chunk.subarray(0, remaining) : chunk;
        remaining -= piece.length;
        if (!out.write(piece)) out.once('drain', () => done());
        else done();
        if (remaining <= 0 && length !== undefined) {
          cut = true;
          out.end();
          client.close();
        }
      },
    });
    client
      .downloadTo(sink, file, offset)
      .then(
        () => {
          out.end();
          this.release(client);
        },
        (error: unknown) => {
          this.discard(client);
          if (!cut) out.destroy(this.wrap(error, key));
        },
      )
      .catch(() => undefined);
    out.on('close', () => {
      if (!sink.writableFinished && !cut) {
        cut = true;
        client.close();
      }
    });
    return out;
  }

  /** The whole object, fetched once and kept while the cache has room (oldest dropped first). */
  private cached(key: string): Promise<Buffer> {
    let whole = this.cache.get(key);
    if (whole === undefined) {
      whole = this.download(key, 0).then(collect);
      this.cache.set(key, whole);
      whole.then(
        (bytes) => {
          this.cachedBytes += bytes.length;
          for (const [oldest, value] of this.cache) {
            if (this.cachedBytes <= CACHE_BYTES_MAX || oldest === key) break;
            this.cache.delete(oldest);
            void value.then((dropped) => (this.cachedBytes -= dropped.length));
          }
        },
        () => this.cache.delete(key),
      );
    }
    return whole;
  }

  private forget(key: string): void {
    const whole = this.cache.get(key);
    if (whole === undefined) return;
    this.cache.delete(key);
    void whole.then((dropped) => (this.cachedBytes -= dropped.length)).catch(() => undefined);
  }

  /** `mkdir -p` with MKD (basic-ftp's ensureDir changes the working directory, which the pool shares). */
  private async makeDirectory(directory: string): Promise<void> {
    const parent = posix.dirname(directory);
    if (parent !== directory && parent !== '.') await this.ensureDirectory(parent);
    await this.withClient(directory, async (client) => {
      const answer = await client.sendIgnoringError(`MKD ${directory}`);
      if (answer.code >= 400) {
        // 550 also when it exists: it is fine if it is a directory now.
        const listed = await client.list(directory).catch(() => undefined);
        if (listed === undefined) throw new FTPError(answer);
      }
    });
  }

  private async withClient<T>(key: string | undefined, use: (client: Client) => Promise<T>): Promise<T> {
    const client = await this.acquire(key);
    try {
      const result = await use(client);
      this.release(client);
      return result;
    } catch (error) {
      // A protocol answer (4xx/5xx) leaves the connection usable; anything else may not have.
      if (error instanceof FTPError && !client.closed) this.release(client);
      else this.discard(client);
      throw error;
    }
  }

  private async acquire(key: string | undefined): Promise<Client> {
    const ready = this.idle.pop();
    if (ready) return ready;
    if (this.open >= (this.options.connections ?? 4)) {
      const handed = await new Promise<Client | undefined>((resolve) => this.waiting.push(resolve));
      if (handed) return handed;
    }
    this.open++;
    try {
      return await this.connect();
    } catch (error) {
      this.open--;
      this.waiting.shift()?.(undefined);
      throw this.wrap(error, key);
    }
  }

  private release(client: Client): void {
    if (client.closed) return this.discard(client);
    const next = this.waiting.shift();
    if (next) next(client);
    else this.idle.push(client);
  }

  private discard(client: Client): void {
    client.close();
    this.open--;
    // A waiter gets a fresh connection of its own.
    this.waiting.shift()?.(undefined);
  }

  private async connect(): Promise<Client> {
    const { host, port = 21, username, password, tls = 'auto' } = this.options;
    const client = new Client(this.options.timeoutMs ?? 30_000);
    try {
      // The address checked is the one connected to; TLS still verifies the certificate against the name
      await client.connect(
        this.options.egress ? (await resolveAllowed(host, this.options.egress)).address : host,
        port,
      );
      if (tls !== 'off') {
        try {
          await client.useTLS({
            host,
            rejectUnauthorized: this.options.allowSelfSignedCertificate !== true,
          });
        } catch (error) {
          if (tls === 'required' || !(error instanceof FTPError))
            throw new StorageError(
              'authentication',
              this.name,
              undefined,
              `explicit TLS failed (${error instanceof FTPError ? `server answered ${error.code}` : (error as Error).message}); nothing was sent`,
              { cause: error },
            );
          const warning = 'the server does not offer TLS: the password and the data travel in clear';
          if (!this.warnings.includes(warning)) this.warnings.push(warning);
        }
      } else {
        const warning = 'TLS is off: the password and the data travel in clear';
        if (!this.warnings.includes(warning)) this.warnings.push(warning);
      }
      // Commands are small: without this each waits on Nagle + delayed ACK (~40 ms per upload on loopback).
      client.ftp.socket.setNoDelay(true);
      await client.login(username, password);
      await client.useDefaultSettings();
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  private pathOf(key: string): string {
    return `${this.root}/${key}`;
  }

  /** FTP replies and socket errors to the storage vocabulary, never with the password. */
  private wrap(error: unknown, key: string | undefined): StorageError {
    if (error instanceof StorageError) return error;
    const failure = error as { code?: unknown; message?: string };
    const message = failure.message ?? String(error);
    let kind: StorageErrorKind = 'other';
    if (error instanceof FTPError) {
      const code = error.code;
      if (code === 530 || code === 331 || code === 332) kind = 'authentication';
      else if (code === 552 || code === 452) kind = 'space';
      else if (code === 550 && /permission|denied|not allowed/i.test(message)) kind = 'permission';
      else if (code === 550 || code === 450) kind = 'not-found';
      // Some servers (ftp-srv) answer a LIST of a directory that does not exist with 451 and the errno
      else if (code === 451 && /ENOENT|no such file/i.test(message)) kind = 'not-found';
      else if (code === 421 || code === 425 || code === 426) kind = 'network';
    } else if (
      (typeof failure.code === 'string' && NETWORK.has(failure.code)) ||
      /timeout|closed|socket|ECONN/i.test(message)
    )
      kind = 'network';
    const password = this.options.password;
    const detail = password ? message.split(password).join('***') : message;
    return new StorageError(kind, this.name, key, detail, { cause: error });
  }
}
