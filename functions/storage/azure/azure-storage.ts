import { BlobServiceClient, StorageSharedKeyCredential, type ContainerClient } from '@azure/storage-blob';
import type { Readable } from 'node:stream';
import { endpointGuard, guardedAgents, type EgressGuard, type EgressPolicy } from '../egress.ts';
import {
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type DeletingOneByOne,
  type StorageErrorKind,
} from '../storage.ts';

export interface AzureStorageOptions {
  readonly accountName: string;
  readonly containerName: string;
  /** One of the three: a shared key, a SAS token, or a connection string. */
  readonly accountKey?: string;
  readonly sasToken?: string;
  readonly connectionString?: string;
  /** Default https://<accountName>.blob.core.windows.net (Azurite: http://127.0.0.1:<port>/<account>). */
  readonly endpoint?: string;
  readonly prefix?: string;
  readonly accessTier?: 'Hot' | 'Cool' | 'Cold' | 'Archive';
  /** Block size and blocks in flight for streaming uploads (default 8 MiB × 2). */
  readonly blockSize?: number;
  readonly concurrency?: number;
  readonly name?: string;
  /** Where connections may go (checked at each connection; the endpoint's host pinned). Unset: anywhere. */
  readonly egress?: EgressPolicy;
}

const NETWORK = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'REQUEST_SEND_ERROR',
  'ServerBusy',
  'OperationTimedOut',
  'InternalError',
]);

/** Whether the client will speak plain HTTP (Azurite), from the endpoint or the connection string. */
function plainHttp(endpoint: string, connectionString: string | undefined): boolean {
  if (connectionString === undefined) return endpoint.startsWith('http:');
  if (/UseDevelopmentStorage=true/i.test(connectionString)) return true;
  const blobEndpoint = /(?:^|;)\s*BlobEndpoint=([a-z]+):/i.exec(connectionString)?.[1];
  const protocol = /(?:^|;)\s*DefaultEndpointsProtocol=([a-z]+)/i.exec(connectionString)?.[1];
  return (blobEndpoint ?? protocol ?? 'https').toLowerCase() === 'http';
}

/**
 * A repository in an Azure Blob container. Streaming uploads stage blocks and commit the block list only when
 * the last block is in: a failed upload leaves no blob (uncommitted blocks expire on their own).
 */
export class AzureStorage implements DeletingOneByOne {
  readonly name: string;
  private readonly container: ContainerClient;
  private readonly options: AzureStorageOptions;
  private readonly root: string;

  constructor(options: AzureStorageOptions) {
    this.options = options;
    this.name =
      options.name ?? `azure://${options.accountName}/${options.containerName}/${options.prefix ?? ''}`;
    this.root = options.prefix ? `${options.prefix.replace(/\/+$/, '')}/` : '';
    const endpoint = options.endpoint ?? `https://${options.accountName}.blob.core.windows.net`;
    // Redirects are not followed: a 3xx from the endpoint must not send the signed request elsewhere. The
    // guard pins the host the client was made for (known once it is made: a connection string names it).
    let guard: EgressGuard | undefined;
    const agents = options.egress ? guardedAgents(() => (guard ? [guard] : [])) : undefined;
    const retry = {
      retryOptions: { maxTries: 4, tryTimeoutInMs: 120_000 },
      redirectOptions: { maxRetries: 0 },
      // core-rest-pipeline's agent option (storage-blob passes its options through, not in its types)
      ...(agents
        ? { agent: plainHttp(endpoint, options.connectionString) ? agents.http : agents.https }
        : {}),
    };
    let service: BlobServiceClient;
    if (options.connectionString)
      service = BlobServiceClient.fromConnectionString(options.connectionString, retry);
    else if (options.accountKey)
      service = new BlobServiceClient(
        endpoint,
        new StorageSharedKeyCredential(options.accountName, options.accountKey),
        retry,
      );
    else if (options.sasToken)
      service = new BlobServiceClient(`${endpoint}?${options.sasToken.replace(/^\?/, '')}`, undefined, retry);
    else
      throw new StorageError(
        'authentication',
        this.name,
        undefined,
        'give accountKey, sasToken or connectionString',
      );
    if (options.egress) guard = endpointGuard(options.egress, service.url);
    this.container = service.getContainerClient(options.containerName);
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    const blob = this.container.getBlockBlobClient(this.blobName(key));
    const common = {
      ...(this.options.accessTier ? { tier: this.options.accessTier } : {}),
      ...(options.signal ? { abortSignal: options.signal } : {}),
    };
    try {
      if (Buffer.isBuffer(body))
        await blob.uploadData(body, { ...common, blockSize: this.options.blockSize ?? 8 * 1024 * 1024 });
      else
        await blob.uploadStream(
          body,
          this.options.blockSize ?? 8 * 1024 * 1024,
          this.options.concurrency ?? 2,
          common,
        );
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    try {
      const response = await this.container
        .getBlobClient(this.blobName(key))
        .download(range?.offset ?? 0, range?.length);
      return response.readableStreamBody as Readable;
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    try {
      const properties = await this.container.getBlobClient(this.blobName(key)).getProperties();
      return { key, size: properties.contentLength ?? 0 };
    } catch (error) {
      throw this.wrap(error, key); // not-found: the facade answers undefined
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const full = this.root + prefix;
    try {
      for await (const page of this.container.listBlobsFlat({ prefix: full }).byPage({ maxPageSize: 1000 })) {
        for (const item of page.segment.blobItems)
          yield { key: item.name.slice(this.root.length), size: item.properties.contentLength ?? 0 };
      }
    } catch (error) {
      throw this.wrap(error, prefix);
    }
  }

  async deleteOne(key: string): Promise<void> {
    try {
      await this.container.getBlobClient(this.blobName(key)).deleteIfExists();
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  private blobName(key: string): string {
    return this.root + key;
  }

  /** Azure REST errors to the storage vocabulary; messages keep the service's code, never a key or SAS. */
  private wrap(error: unknown, key: string | undefined): StorageError {
    if (error instanceof StorageError) return error;
    const failure = error as { name?: string; code?: string; statusCode?: number; message?: string };
    const code = failure.code ?? failure.name ?? 'Error';
    const status = failure.statusCode;
    let kind: StorageErrorKind = 'other';
    if (
      code === 'AuthenticationFailed' ||
      code === 'InvalidAuthenticationInfo' ||
      (status === 403 && /authenticat|signature/i.test(failure.message ?? ''))
    )
      kind = 'authentication';
    else if (status === 403 || code.startsWith('Authorization')) kind = 'permission';
    else if (status === 404 || code === 'BlobNotFound' || code === 'ContainerNotFound') kind = 'not-found';
    else if (
      NETWORK.has(code) ||
      (status !== undefined && status >= 500) ||
      (status === undefined && /socket hang up|ECONN/i.test(failure.message ?? ''))
    )
      kind = 'network';
    else if (code === 'RequestBodyTooLarge' || code === 'InsufficientAccountPermissions') kind = 'space';
    const detail =
      code === 'ContainerNotFound'
        ? `container ${this.options.containerName} does not exist`
        : `${code}: ${(failure.message ?? 'request failed').split('\n')[0]}`;
    return new StorageError(kind, this.name, key, redact(detail, this.options), { cause: error });
  }
}

function redact(text: string, options: AzureStorageOptions): string {
  let result = text;
  for (const secret of [options.accountKey, options.sasToken, options.connectionString])
    if (secret) result = result.split(secret).join('***');
  return result.replace(/sig=[^&\s]+/g, 'sig=***');
}
