import { Storage as GoogleStorage, type Bucket } from '@google-cloud/storage';
import { JWT, PassThroughClient } from 'google-auth-library';
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type DeletingOneByOne,
  type StorageErrorKind,
} from '../storage.ts';
import { endpointGuard, type EgressPolicy } from '../egress.ts';
import { agentFor, allowGcs } from './transport.ts';

export interface GcsStorageOptions {
  readonly projectId: string;
  readonly bucket: string;
  readonly prefix?: string;
  /**
   * A service-account key: its JSON contents (`keyJson`) or a key file on this machine (`keyFilename`).
   * Neither: Application Default Credentials (the metadata server, GOOGLE_APPLICATION_CREDENTIALS).
   */
  readonly keyJson?: string;
  readonly keyFilename?: string;
  /** For test servers and private endpoints; default https://storage.googleapis.com. */
  readonly apiEndpoint?: string;
  /** Bytes per resumable-upload request (a multiple of 256 KiB; default 8 MiB, held in memory while sent). */
  readonly chunkSize?: number;
  /** Milliseconds per HTTP request (default 120 s). */
  readonly timeoutMs?: number;
  readonly name?: string;
  /** Where connections may go, checked at each connection. Unset: private addresses allowed (drctl). */
  readonly egress?: EgressPolicy;
}

/** Where service-account tokens are fetched. */
const TOKEN_HOSTS = ['oauth2.googleapis.com:443'];

const NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE']);

/**
 * A repository in a Google Cloud Storage bucket. Streams go up as resumable uploads in `chunkSize` requests;
 * GCS creates the object only when the last chunk is in, so a failed upload leaves nothing (the session
 * expires on its own). Buffers go up in one multipart request. Every upload is checked against the CRC32C
 * the service computed.
 */
export class GcsStorage implements DeletingOneByOne {
  readonly name: string;
  private readonly options: GcsStorageOptions;
  private readonly bucket: Bucket;
  private readonly root: string;
  private readonly secret: string | undefined;

  constructor(options: GcsStorageOptions) {
    this.options = options;
    this.root = options.prefix ? `${options.prefix.replace(/\/+$/, '')}/` : '';
    this.name = options.name ?? `gs://${options.bucket}/${this.root}`;
    let credentials: { client_email: string; private_key: string } | undefined;
    const keyJson =
      options.keyJson ?? (options.keyFilename ? this.readKeyFile(options.keyFilename) : undefined);
    if (keyJson !== undefined) {
      try {
        credentials = JSON.parse(keyJson) as typeof credentials;
      } catch {
        throw new StorageError(
          'authentication',
          this.name,
          undefined,
          'keyFile is not a service-account JSON key',
        );
      }
      if (!credentials?.client_email || !credentials.private_key)
        throw new StorageError(
          'authentication',
          this.name,
          undefined,
          'keyFile lacks client_email or private_key: give a service-account JSON key',
        );
    }
    this.secret = credentials?.private_key;
    // Every connection is checked: the endpoint's host pinned (a redirect elsewhere is refused) and, when
    // the target came through the API, its addresses under the egress policy at the moment of connecting.
    const guard = endpointGuard(
      options.egress ?? { allowPrivate: true },
      options.apiEndpoint ?? 'https://storage.googleapis.com',
      TOKEN_HOSTS,
    );
    allowGcs(guard);
    const transporterOptions = { agent: agentFor(guard) };
    const authClient = credentials
      ? new JWT({
          email: credentials.client_email,
          key: credentials.private_key,
          scopes: ['https://www.googleapis.com/auth/devstorage.read_write'],
          transporterOptions,
        })
      : options.apiEndpoint
        ? // An emulator or private endpoint without credentials: requests go out as they are, guarded
          new PassThroughClient({ transporterOptions })
        : undefined; // Application Default Credentials, towards Google's own hosts
    const client = new GoogleStorage({
      projectId: options.projectId,
      ...(authClient ? { authClient } : {}),
      ...(options.apiEndpoint ? { apiEndpoint: options.apiEndpoint, useAuthWithCustomEndpoint: true } : {}),
      timeout: options.timeoutMs ?? 120_000,
      retryOptions: { autoRetry: true, maxRetries: 3, totalTimeout: 600 },
    });
    this.bucket = client.bucket(options.bucket);
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    const file = this.bucket.file(this.objectName(key));
    try {
      if (Buffer.isBuffer(body)) {
        await file.save(body, {
          resumable: false,
          validation: 'crc32c',
          contentType: 'application/octet-stream',
        });
        return;
      }
      await pipeline(
        body,
        file.createWriteStream({
          resumable: true,
          chunkSize: this.options.chunkSize ?? 8 * 1024 * 1024,
          validation: 'crc32c',
          contentType: 'application/octet-stream',
        }),
        ...(options.signal ? [{ signal: options.signal }] : []),
      );
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const file = this.bucket.file(this.objectName(key));
    // The library reports a missing object only once the stream is read: wait for the answer, so that get()
    // itself fails as the contract says.
    const stream = file.createReadStream({
      validation: false,
      ...(range ? { start: range.offset, end: range.offset + range.length - 1 } : {}),
    });
    const out = new PassThrough();
    stream.on('error', (error: Error) => out.destroy(this.wrap(error, key)));
    stream.pipe(out);
    await new Promise<void>((resolve, reject) => {
      stream.once('response', () => resolve());
      out.once('error', reject);
    });
    return out;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    try {
      const [metadata] = await this.bucket.file(this.objectName(key)).getMetadata();
      return { key, size: Number(metadata.size ?? 0) };
    } catch (error) {
      throw this.wrap(error, key); // not-found: the facade answers undefined
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const full = this.root + prefix;
    let pageToken: string | undefined;
    do {
      let files;
      let next: { pageToken?: string } | null | undefined;
      try {
        [files, next] = await this.bucket.getFiles({
          prefix: full,
          maxResults: 1000,
          autoPaginate: false,
          ...(pageToken ? { pageToken } : {}),
        });
      } catch (error) {
        throw this.wrap(error, prefix);
      }
      for (const file of files)
        yield { key: file.name.slice(this.root.length), size: Number(file.metadata.size ?? 0) };
      pageToken = next?.pageToken;
    } while (pageToken);
  }

  async deleteOne(key: string): Promise<void> {
    try {
      await this.bucket.file(this.objectName(key)).delete({ ignoreNotFound: true });
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  /** A key file on this machine, read here so that its requests go through the same guarded transport. */
  private readKeyFile(file: string): string {
    try {
      return readFileSync(file, 'utf8');
    } catch (error) {
      throw new StorageError(
        'authentication',
        this.name,
        undefined,
        `cannot read the key file ${file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`,
      );
    }
  }

  private objectName(key: string): string {
    return this.root + key;
  }

  /** API and token errors to the storage vocabulary; messages never carry the private key. */
  private wrap(error: unknown, key: string | undefined): StorageError {
    if (error instanceof StorageError) return error;
    const failure = error as {
      code?: unknown;
      status?: number;
      message?: string;
      response?: { status?: number; data?: { error?: unknown; error_description?: string } };
    };
    const status =
      typeof failure.code === 'number' ? failure.code : (failure.status ?? failure.response?.status);
    const oauth = failure.response?.data?.error;
    const message = failure.message ?? String(error);
    let kind: StorageErrorKind = 'other';
    if (
      status === 401 ||
      oauth === 'invalid_grant' ||
      oauth === 'invalid_client' ||
      /invalid_grant|invalid jwt/i.test(message)
    )
      kind = 'authentication';
    else if (status === 403) kind = /quota|limit/i.test(message) ? 'space' : 'permission';
    else if (status === 404) kind = 'not-found';
    else if (status === 416) kind = 'other';
    else if (
      status === 408 ||
      status === 429 ||
      (typeof status === 'number' && status >= 500) ||
      (typeof failure.code === 'string' && NETWORK.has(failure.code)) ||
      /socket hang up|network|timeout|ECONN/i.test(message)
    )
      kind = 'network';
    let detail = message.split('\n')[0] ?? message;
    if (this.secret) detail = detail.split(this.secret).join('***');
    if (status === 404 && key === undefined) detail = `bucket ${this.options.bucket} not found (${detail})`;
    return new StorageError(kind, this.name, key, detail, { cause: error });
  }
}
