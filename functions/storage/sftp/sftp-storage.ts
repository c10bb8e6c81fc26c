import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { posix } from 'node:path';
import type { Readable } from 'node:stream';
import { PassThrough } from 'node:stream';
import SftpClient from 'ssh2-sftp-client';
import type { FileEntryWithStats, SFTPWrapper, Stats } from 'ssh2';
import {
  bytesUnder,
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type DeletingOneByOne,
  type StorageErrorKind,
  type Usage,
} from '../storage.ts';
import { resolveAllowed, type EgressPolicy } from '../egress.ts';
import { oncePerDirectory, PARTIAL_SUFFIX, partialName, rangeError, slices } from '../remote.ts';

export interface SftpStorageOptions {
  /** Where connections may go: the host is resolved and checked at each connection. Unset: anywhere. */
  readonly egress?: EgressPolicy;
  readonly host: string;
  readonly port?: number;
  readonly username: string;
  /** An OpenSSH or PEM private key (its contents), with its passphrase if it has one; or a password. */
  readonly privateKey?: string;
  /** A private key file on this machine, read at each connection (instead of `privateKey`). */
  readonly privateKeyFile?: string;
  readonly passphrase?: string;
  readonly password?: string;
  /** The repository directory on the server: absolute, or relative to the login directory. */
  readonly path: string;
  /**
   * The server's host key as `ssh-keygen -lf` prints it (`SHA256:…`). Checked on every connection before
   * anything is sent; without it the connection is refused and the error names the key the server showed.
   */
  readonly hostKeyFingerprint?: string;
  /** Milliseconds for the SSH handshake and for each SFTP request (defaults 20 s and 120 s). */
  readonly connectTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
  readonly name?: string;
}

/** SFTP status codes (draft-ietf-secsh-filexfer-02). */
const NO_SUCH_FILE = 2;
const PERMISSION_DENIED = 3;
const NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'EPIPE', 'EAI_AGAIN']);
/** Writes in flight per upload, and the largest single write. */
const WRITES_IN_FLIGHT = 4;
const WRITE_SIZE = 256 * 1024;

/** `SHA256:<base64 without padding>` of a raw SSH public key blob, as `ssh-keygen -lf` prints it. */
export function hostKeyFingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

/**
 * A repository in a directory on an SFTP server (OpenSSH or compatible), over one SSH connection opened on
 * first use and reopened after it drops. Uploads go to `<key>.<random>.partial`, are fsynced where the server
 * offers `fsync@openssh.com`, then renamed over the key with `posix-rename@openssh.com` (atomic replace): a
 * failed upload never leaves an object under its final name.
 */
export class SftpStorage implements DeletingOneByOne {
  readonly name: string;
  private readonly options: SftpStorageOptions;
  private readonly root: string;
  private connection: Promise<{ client: SftpClient; sftp: SFTPWrapper }> | undefined;
  /** `mkdir -p`, each directory made once (per connection, for SFTP) even when many uploads ask at once. */
  private readonly ensureDirectory = oncePerDirectory((directory) => this.makeDirectory(directory));

  constructor(options: SftpStorageOptions) {
    this.options = options;
    this.root = options.path.replace(/\/+$/, '') || '/';
    this.name =
      options.name ?? `sftp://${options.username}@${options.host}:${options.port ?? 22}${this.rootPath()}`;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    const file = this.pathOf(key);
    const temporary = partialName(file);
    let handle: Buffer | undefined;
    // Writes in flight never reject (the first failure is kept), so none is left unhandled after an abort.
    const inFlight = new Set<Promise<void>>();
    let failure: Error | undefined;
    try {
      const sftp = await this.connected();
      await this.ensureDirectory(posix.dirname(file));
      handle = await this.request<Buffer>(key, (done) => sftp.open(temporary, 'w', { mode: 0o600 }, done));
      const open = handle;
      let position = 0;
      const source = Buffer.isBuffer(body) ? [body] : body;
      for await (const chunk of source) {
        for (const piece of slices(chunk as Buffer, WRITE_SIZE)) {
          options.signal?.throwIfAborted();
          if (failure !== undefined) throw failure;
          const at = position;
          position += piece.length;
          const write: Promise<void> = this.request<void>(key, (done) =>
            sftp.write(open, piece, 0, piece.length, at, done),
          )
            .catch((error: unknown) => {
              failure ??= error as Error;
            })
            .finally(() => inFlight.delete(write));
          inFlight.add(write);
          if (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
        }
      }
      await Promise.all(inFlight);
      if (failure !== undefined) throw failure;
      options.signal?.throwIfAborted();
      if (supports(sftp, 'fsync@openssh.com'))
        await this.request<void>(key, (done) => sftp.ext_openssh_fsync(open, done));
      handle = undefined;
      await this.request<void>(key, (done) => sftp.close(open, done));
      await this.request<void>(key, (done) =>
        supports(sftp, 'posix-rename@openssh.com')
          ? sftp.ext_openssh_rename(temporary, file, done)
          : sftp.rename(temporary, file, done),
      );
    } catch (error) {
      await Promise.all(inFlight);
      await this.discard(temporary, handle);
      throw this.wrap(error, key);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const file = this.pathOf(key);
    const info = await this.stat(key);
    if (info === undefined) throw new StorageError('not-found', this.name, key, 'no such object');
    if (range && range.offset + range.length > info.size) throw rangeError(this.name, key, range, info.size);
    const sftp = await this.connected();
    const source = sftp.createReadStream(
      file,
      range ? { start: range.offset, end: range.offset + range.length - 1 } : {},
    );
    const out = new PassThrough();
    source.on('error', (error: Error) => out.destroy(this.wrap(error, key)));
    source.pipe(out);
    return out;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const file = this.pathOf(key);
    try {
      const sftp = await this.connected();
      const attributes = await this.request<Stats>(key, (done) => sftp.stat(file, done));
      return attributes.isFile() ? { key, size: attributes.size } : undefined;
    } catch (error) {
      throw this.wrap(error, key); // not-found: the facade answers undefined
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const normalized = prefix;
    const slash = normalized.lastIndexOf('/');
    const base = slash < 0 ? '' : normalized.slice(0, slash);
    for await (const entry of this.walk(base)) {
      if (!entry.key.endsWith(PARTIAL_SUFFIX) && entry.key.startsWith(normalized))
        yield { key: entry.key, size: entry.size };
    }
  }

  async deleteOne(key: string): Promise<void> {
    const sftp = await this.connected();
    try {
      await this.request<void>(key, (done) => sftp.unlink(this.pathOf(key), done));
    } catch (error) {
      const wrapped = this.wrap(error, key);
      if (wrapped.kind !== 'not-found') throw wrapped;
    }
  }

  async usage(): Promise<Usage> {
    const bytesStored = await bytesUnder(this);
    const sftp = await this.connected();
    if (!supports(sftp, 'statvfs@openssh.com')) return { bytesStored };
    const vfs = await this.request<{ f_bavail: number; f_frsize: number }>(undefined, (done) =>
      sftp.ext_openssh_statvfs(this.rootPath(), done as never),
    );
    return { bytesStored, bytesFree: vfs.f_bavail * vfs.f_frsize };
  }

  async removeLeftovers(olderThan: Date): Promise<number> {
    const sftp = await this.connected();
    let removed = 0;
    for await (const entry of this.walk('')) {
      if (!entry.key.endsWith(PARTIAL_SUFFIX) || entry.mtime * 1000 >= olderThan.getTime()) continue;
      const file = `${this.rootPath()}/${entry.key}`;
      await this.request<void>(entry.key, (done) => sftp.unlink(file, done)).catch(() => undefined);
      removed++;
    }
    return removed;
  }

  /** Closes the SSH connection (the next call opens a new one). */
  async close(): Promise<void> {
    const connection = this.connection;
    this.connection = undefined;
    if (connection) await (await connection.catch(() => undefined))?.client.end();
  }

  /** Every file under `base` (a key prefix ending at a directory), depth first. */
  private async *walk(base: string): AsyncIterable<{ key: string; size: number; mtime: number }> {
    const sftp = await this.connected();
    const pending = [base];
    while (pending.length > 0) {
      const relative = pending.pop()!;
      const directory = relative === '' ? this.rootPath() : `${this.rootPath()}/${relative}`;
      let entries: FileEntryWithStats[];
      try {
        entries = await this.request<FileEntryWithStats[]>(relative, (done) => sftp.readdir(directory, done));
      } catch (error) {
        const wrapped = this.wrap(error, relative);
        if (wrapped.kind === 'not-found') continue;
        throw wrapped;
      }
      for (const entry of entries) {
        const key = relative === '' ? entry.filename : `${relative}/${entry.filename}`;
        if (entry.attrs.isDirectory()) pending.push(key);
        else if (entry.attrs.isFile()) yield { key, size: entry.attrs.size, mtime: entry.attrs.mtime };
      }
    }
  }

  private async makeDirectory(directory: string): Promise<void> {
    const sftp = await this.connected();
    const isDirectory = () =>
      this.request<Stats>(directory, (done) => sftp.stat(directory, done)).then(
        (attributes) => attributes.isDirectory(),
        () => false,
      );
    if (await isDirectory()) return;
    const parent = posix.dirname(directory);
    if (parent !== directory) await this.ensureDirectory(parent);
    try {
      await this.request<void>(directory, (done) => sftp.mkdir(directory, { mode: 0o700 }, done));
    } catch (error) {
      // Made meanwhile by another client: fine. Anything else is the real failure.
      if (!(await isDirectory())) throw error;
    }
  }

  private async discard(temporary: string, handle: Buffer | undefined): Promise<void> {
    const connection = await this.connection?.catch(() => undefined);
    if (!connection) return;
    const { sftp } = connection;
    await new Promise<void>((resolve) => (handle ? sftp.close(handle, () => resolve()) : resolve()));
    await new Promise<void>((resolve) => sftp.unlink(temporary, () => resolve()));
  }

  private async connected(): Promise<SFTPWrapper> {
    return (await this.connectedClient()).sftp;
  }

  private connectedClient(): Promise<{ client: SftpClient; sftp: SFTPWrapper }> {
    this.connection ??= this.connect().catch((error: unknown) => {
      this.connection = undefined;
      throw this.wrap(error, undefined);
    });
    return this.connection;
  }

  private async connect(): Promise<{ client: SftpClient; sftp: SFTPWrapper }> {
    const { host, port = 22, username, passphrase, password, privateKeyFile } = this.options;
    const privateKey = privateKeyFile
      ? await readFile(privateKeyFile, 'utf8').catch((error: unknown) => {
          throw new StorageError(
            'authentication',
            this.name,
            undefined,
            `cannot read the private key file ${privateKeyFile}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`,
          );
        })
      : this.options.privateKey;
    const pinned = this.options.hostKeyFingerprint;
    let presented: string | undefined;
    const client = new SftpClient(this.name);
    try {
      const sftp = await client.connect({
        // The address checked is the one connected to (the host key is pinned, not the name)
        host: this.options.egress ? (await resolveAllowed(host, this.options.egress)).address : host,
        port,
        username,
        ...(privateKey ? { privateKey } : {}),
        ...(passphrase ? { passphrase } : {}),
        ...(password ? { password } : {}),
        readyTimeout: this.options.connectTimeoutMs ?? 20_000,
        keepaliveInterval: 10_000,
        keepaliveCountMax: 3,
        hostVerifier: (key: Buffer) => {
          presented = hostKeyFingerprint(key);
          return pinned !== undefined && presented === pinned.replace(/=+$/, '');
        },
      });
      const reset = () => {
        this.connection = undefined;
        this.ensureDirectory.clear();
      };
      // Small SFTP requests wait on Nagle + delayed ACK otherwise (~40 ms each: 1.5 MB/s reads on loopback).
      (client as unknown as { client: { setNoDelay(on: boolean): void } }).client.setNoDelay(true);
      client.on('close', reset);
      client.on('end', reset);
      return { client, sftp };
    } catch (error) {
      await client.end().catch(() => undefined);
      if (presented !== undefined && presented !== pinned?.replace(/=+$/, '')) {
        throw new StorageError(
          'authentication',
          this.name,
          undefined,
          pinned === undefined
            ? `the server's host key is ${presented}, and no hostKeyFingerprint is set for this target: ` +
                'confirm the key out of band (ssh-keygen -lf on the server) and set hostKeyFingerprint; nothing was sent'
            : `the server's host key changed: it presented ${presented}, the target pins ${pinned}. The key was ` +
                'replaced, or someone is between you and the server; nothing was sent. If the change is expected, ' +
                'update hostKeyFingerprint',
          { cause: error, ownWords: true },
        );
      }
      throw error;
    }
  }

  /** One SFTP request with a timeout; a request that times out closes the connection (its state is unknown). */
  private request<T>(
    key: string | undefined,
    call: (done: (error: Error | null | undefined, value?: T) => void) => void,
  ): Promise<T> {
    const timeoutMs = this.options.requestTimeoutMs ?? 120_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new StorageError('network', this.name, key, `no answer within ${timeoutMs / 1000} s`));
        void this.close();
      }, timeoutMs);
      call((error, value) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve(value as T);
      });
    });
  }

  private rootPath(): string {
    return this.root;
  }

  private pathOf(key: string): string {
    return `${this.rootPath()}/${key}`;
  }

  /** SSH and SFTP failures to the storage vocabulary; messages never carry a key, passphrase or password. */
  private wrap(error: unknown, key: string | undefined): StorageError {
    if (error instanceof StorageError) return error;
    const failure = error as { code?: unknown; level?: string; message?: string };
    const message = failure.message ?? String(error);
    let kind: StorageErrorKind = 'other';
    if (failure.code === NO_SUCH_FILE || /no such file/i.test(message)) kind = 'not-found';
    else if (failure.code === PERMISSION_DENIED || /permission denied/i.test(message)) kind = 'permission';
    else if (
      failure.level === 'client-authentication' ||
      /authentication methods failed|passphrase/i.test(message)
    )
      kind = 'authentication';
    else if (
      (typeof failure.code === 'string' && NETWORK.has(failure.code)) ||
      failure.level === 'client-socket' ||
      failure.level === 'client-timeout' ||
      /timed out|connection (lost|reset|refused)|no sftp connection|not connected/i.test(message)
    )
      kind = 'network';
    else if (/quota|no space/i.test(message)) kind = 'space';
    return new StorageError(kind, this.name, key, redact(message, this.options), { cause: error });
  }
}

function supports(sftp: SFTPWrapper, extension: string): boolean {
  const extensions = (sftp as unknown as { _extensions?: Record<string, string> })._extensions ?? {};
  return extension in extensions;
}

function redact(text: string, options: SftpStorageOptions): string {
  let result = text;
  for (const secret of [options.password, options.passphrase, options.privateKey])
    if (secret) result = result.split(secret).join('***');
  return result;
}
