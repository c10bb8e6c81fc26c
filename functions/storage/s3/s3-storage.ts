import {
  DeleteBucketLifecycleCommand,
  DeleteObjectsCommand,
  GetBucketLifecycleConfigurationCommand,
  PutBucketLifecycleConfigurationCommand,
  type LifecycleRule,
  type TransitionStorageClass,
  GetObjectCommand,
  HeadObjectCommand,
  paginateListObjectsV2,
  PutObjectCommand,
  S3Client,
  type PutObjectCommandInput,
  type StorageClass,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Readable } from 'node:stream';
import { endpointGuard, guardedAgents, type EgressGuard, type EgressPolicy } from '../egress.ts';
import {
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type DeletingInBatches,
  type StorageErrorKind,
} from '../storage.ts';

export interface S3StorageOptions {
  readonly bucket: string;
  readonly region: string;
  /** Where the repository lives in the bucket (no leading '/'). */
  readonly prefix?: string;
  /** Static credentials; default: the SDK's chain (the function's role on AWS). */
  readonly credentials?: { readonly accessKeyId: string; readonly secretAccessKey: string };
  /** An S3-compatible endpoint (MinIO, Ceph, a local emulator). */
  readonly endpoint?: string;
  /** Where connections may go (checked at each connection; the endpoint's host pinned). Unset: anywhere. */
  readonly egress?: EgressPolicy;
  readonly forcePathStyle?: boolean;
  readonly encryption?: 'AES256' | 'aws:kms';
  readonly kmsKeyId?: string;
  readonly storageClass?: string;
  /** Object Lock retention on every object written (the bucket must have Object Lock enabled). */
  readonly objectLock?: { readonly mode: 'GOVERNANCE' | 'COMPLIANCE'; readonly days: number };
  /** Multipart part size (default 8 MiB) and parts in flight (default 2): memory is about their product. */
  readonly partSize?: number;
  readonly queueSize?: number;
  readonly name?: string;
  /** Replaces the client (tests). */
  readonly client?: S3Client;
}

/**
 * Lifecycle rules for the repository's objects. Only what is safe for a deduplicating repository: moving
 * objects to classes that still serve ranged reads at once, cleaning up incomplete uploads, and expiring old
 * versions of deleted objects in a versioned bucket. Never the expiry of current objects: a pack written for
 * an old backup still holds chunks that newer ones use; retention deletes what no kept backup needs.
 */
export interface S3Lifecycle {
  readonly transitions?: readonly { readonly days: number; readonly storageClass: string }[];
  readonly abortIncompleteUploadsAfterDays?: number;
  readonly noncurrentVersionExpirationDays?: number;
}

const AUTHENTICATION = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'AuthorizationHeaderMalformed',
  'CredentialsProviderError',
]);
const NETWORK = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'TimeoutError',
  'RequestTimeout',
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
]);

function agentsOf(guard: EgressGuard) {
  const { http, https } = guardedAgents(guard);
  return { httpAgent: http, httpsAgent: https };
}

/**
 * A repository in an S3 bucket (or an S3-compatible store). Large bodies stream as multipart uploads that
 * S3 assembles only when the last part is in, and that are aborted on failure: a failed put leaves no object.
 */
export class S3Storage implements DeletingInBatches {
  readonly name: string;
  private readonly client: S3Client;
  private readonly options: S3StorageOptions;
  private readonly root: string;

  constructor(options: S3StorageOptions) {
    this.options = options;
    this.name = options.name ?? `s3://${options.bucket}/${options.prefix ?? ''}`;
    this.root = options.prefix ? `${options.prefix.replace(/\/+$/, '')}/` : '';
    this.client =
      options.client ??
      new S3Client({
        region: options.region,
        ...(options.credentials ? { credentials: options.credentials } : {}),
        ...(options.endpoint ? { endpoint: options.endpoint } : {}),
        ...(options.forcePathStyle ? { forcePathStyle: true } : {}),
        requestHandler: {
          connectionTimeout: 10_000,
          requestTimeout: 120_000,
          ...(options.egress ? agentsOf(endpointGuard(options.egress, options.endpoint)) : {}),
        },
        maxAttempts: 4,
      });
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    const params: PutObjectCommandInput = {
      Bucket: this.options.bucket,
      Key: this.objectKey(key),
      ...this.writeParams(),
    };
    try {
      if (Buffer.isBuffer(body) && body.length <= (this.options.partSize ?? 8 * 1024 * 1024)) {
        await this.client.send(new PutObjectCommand({ ...params, Body: body, ContentLength: body.length }), {
          abortSignal: options.signal,
        });
        return;
      }
      const upload = new Upload({
        client: this.client,
        params: { ...params, Body: Buffer.isBuffer(body) ? Readable.from([body]) : body },
        partSize: this.options.partSize ?? 8 * 1024 * 1024,
        queueSize: this.options.queueSize ?? 2,
        leavePartsOnError: false,
      });
      options.signal?.addEventListener('abort', () => void upload.abort(), { once: true });
      await upload.done();
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    try {
      const response = await this.client.send(
        new GetObjectCommand({
          Bucket: this.options.bucket,
          Key: this.objectKey(key),
          ...(range ? { Range: `bytes=${range.offset}-${range.offset + range.length - 1}` } : {}),
        }),
      );
      return response.Body as Readable;
    } catch (error) {
      throw this.wrap(error, key);
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    try {
      const head = await this.client.send(
        new HeadObjectCommand({ Bucket: this.options.bucket, Key: this.objectKey(key) }),
      );
      return { key, size: head.ContentLength ?? 0 };
    } catch (error) {
      throw this.wrap(error, key); // not-found: the facade answers undefined
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const full = this.root + prefix;
    try {
      for await (const page of paginateListObjectsV2(
        { client: this.client, pageSize: 1000 },
        { Bucket: this.options.bucket, Prefix: full },
      )) {
        for (const object of page.Contents ?? []) {
          if (object.Key === undefined) continue;
          yield { key: object.Key.slice(this.root.length), size: object.Size ?? 0 };
        }
      }
    } catch (error) {
      throw this.wrap(error, prefix);
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (let index = 0; index < keys.length; index += 1000) {
      const batch = keys.slice(index, index + 1000).map((key) => ({ Key: this.objectKey(key) }));
      try {
        const result = await this.client.send(
          new DeleteObjectsCommand({ Bucket: this.options.bucket, Delete: { Objects: batch, Quiet: true } }),
        );
        const failed = result.Errors?.[0];
        if (failed)
          throw new StorageError(
            'other',
            this.name,
            failed.Key?.slice(this.root.length),
            `delete failed: ${failed.Code ?? ''} ${failed.Message ?? ''}`.trim(),
          );
      } catch (error) {
        throw this.wrap(error, batch[0]?.Key);
      }
    }
  }

  private objectKey(key: string): string {
    return this.root + key;
  }

  private writeParams(): Partial<PutObjectCommandInput> {
    const { encryption, kmsKeyId, storageClass, objectLock } = this.options;
    return {
      ...(encryption ? { ServerSideEncryption: encryption } : {}),
      ...(encryption === 'aws:kms' && kmsKeyId ? { SSEKMSKeyId: kmsKeyId } : {}),
      ...(storageClass ? { StorageClass: storageClass as StorageClass } : {}),
      ...(objectLock
        ? {
            ObjectLockMode: objectLock.mode,
            ObjectLockRetainUntilDate: new Date(Date.now() + objectLock.days * 86_400_000),
          }
        : {}),
    };
  }

  /**
   * Puts this repository's lifecycle rule on the bucket (or removes it, given undefined), keeping every
   * other rule the bucket has: S3 takes a bucket's rules as one document, so they are read, ours replaced,
   * and written back. Our rule is the one with id `dr-automation:<bucket>/<prefix>`.
   */
  async applyLifecycle(lifecycle: S3Lifecycle | undefined): Promise<void> {
    const Bucket = this.options.bucket;
    const id = `dr-automation:${Bucket}/${this.root}`;
    try {
      let rules: LifecycleRule[] = [];
      try {
        const current = await this.client.send(new GetBucketLifecycleConfigurationCommand({ Bucket }));
        rules = current.Rules ?? [];
      } catch (error) {
        const code = (error as { Code?: string; name?: string }).Code ?? (error as { name?: string }).name;
        if (code !== 'NoSuchLifecycleConfiguration') throw error;
      }
      const others = rules.filter((rule) => rule.ID !== id);
      const ours: LifecycleRule[] = lifecycle
        ? [
            {
              ID: id,
              Status: 'Enabled',
              Filter: { Prefix: this.root },
              ...(lifecycle.transitions?.length
                ? {
                    Transitions: lifecycle.transitions.map((transition) => ({
                      Days: transition.days,
                      StorageClass: transition.storageClass as TransitionStorageClass,
                    })),
                  }
                : {}),
              AbortIncompleteMultipartUpload: {
                DaysAfterInitiation: lifecycle.abortIncompleteUploadsAfterDays ?? 7,
              },
              ...(lifecycle.noncurrentVersionExpirationDays === undefined
                ? {}
                : {
                    NoncurrentVersionExpiration: {
                      NoncurrentDays: lifecycle.noncurrentVersionExpirationDays,
                    },
                  }),
            },
          ]
        : [];
      const next = [...others, ...ours];
      if (next.length === 0) {
        if (rules.length > 0) await this.client.send(new DeleteBucketLifecycleCommand({ Bucket }));
        return;
      }
      await this.client.send(
        new PutBucketLifecycleConfigurationCommand({ Bucket, LifecycleConfiguration: { Rules: next } }),
      );
    } catch (error) {
      throw this.wrap(error, undefined);
    }
  }

  /** SDK errors to the storage vocabulary; the message keeps the service's code and text, never credentials. */
  private wrap(error: unknown, key: string | undefined): StorageError {
    if (error instanceof StorageError) return error;
    const failure = error as {
      name?: string;
      Code?: string;
      code?: string;
      message?: string;
      $metadata?: { httpStatusCode?: number };
    };
    const code = failure.Code ?? failure.name ?? failure.code ?? 'Error';
    const status = failure.$metadata?.httpStatusCode;
    let kind: StorageErrorKind = 'other';
    if (AUTHENTICATION.has(code)) kind = 'authentication';
    else if (code === 'AccessDenied' || code === 'AllAccessDisabled' || status === 403) kind = 'permission';
    else if (code === 'NoSuchKey' || code === 'NotFound' || code === 'NoSuchBucket' || status === 404)
      kind = 'not-found';
    else if (
      NETWORK.has(code) ||
      NETWORK.has(failure.code ?? '') ||
      (status !== undefined && status >= 500) ||
      (status === undefined && /socket hang up/i.test(failure.message ?? ''))
    )
      kind = 'network';
    else if (code === 'EntityTooLarge' || code === 'QuotaExceeded') kind = 'space';
    const message =
      kind === 'not-found' && code === 'NoSuchBucket'
        ? `bucket ${this.options.bucket} does not exist`
        : `${code}: ${failure.message ?? 'request failed'}`;
    return new StorageError(kind, this.name, key, message, { cause: error });
  }
}
