import { readFile } from 'node:fs/promises';
import { AzureStorage } from './azure/azure-storage.ts';
import { FtpStorage } from './ftp/ftp-storage.ts';
import { GcsStorage } from './gcs/gcs-storage.ts';
import { LocalStorage } from './local/local-storage.ts';
import type { EgressPolicy } from './egress.ts';
import { withRetries } from './retry.ts';
import { S3Storage } from './s3/s3-storage.ts';
import { SftpStorage } from './sftp/sftp-storage.ts';
import { publicReason, StorageError, type Storage } from './storage.ts';

/**
 * A target as the API stores it (`targetType`, `config` without secrets) plus its secret fields, turned into
 * a Storage with retries composed around it. The one place that knows every adapter: the engine, the worker
 * and the CLI all open targets through it.
 */
export interface TargetSpec {
  readonly name?: string;
  readonly targetType: string;
  readonly config: Readonly<Record<string, unknown>>;
}

const str = (value: unknown): string | undefined =>
  typeof value === 'string' && value !== '' ? value : undefined;

/** The S3 adapter itself (no retries), for what only S3 does: lifecycle rules. */
export function s3Storage(
  spec: TargetSpec,
  secrets: Readonly<Record<string, string>> = {},
  opening: OpenOptions = {},
): S3Storage {
  const config = spec.config;
  const accessKeyId = str(config.accessKeyId);
  const secretAccessKey = secrets.secretAccessKey ?? str(config.secretAccessKey);
  const objectLock = config.objectLock as { mode: 'GOVERNANCE' | 'COMPLIANCE'; days: number } | undefined;
  return new S3Storage({
    bucket: String(config.bucket),
    region: String(config.region),
    ...(str(config.prefix) ? { prefix: str(config.prefix)! } : {}),
    ...(accessKeyId && secretAccessKey ? { credentials: { accessKeyId, secretAccessKey } } : {}),
    ...(str(config.endpoint) ? { endpoint: str(config.endpoint)! } : {}),
    ...(config.forcePathStyle === true ? { forcePathStyle: true } : {}),
    ...(config.encryption === 'AES256' || config.encryption === 'aws:kms'
      ? { encryption: config.encryption }
      : {}),
    ...(str(config.kmsKeyId) ? { kmsKeyId: str(config.kmsKeyId)! } : {}),
    ...(str(config.storageClass) ? { storageClass: str(config.storageClass)! } : {}),
    ...(objectLock ? { objectLock } : {}),
    ...(spec.name ? { name: spec.name } : {}),
    ...(opening.egress ? { egress: opening.egress } : {}),
  });
}

export interface OpenOptions {
  /**
   * Where the target's connections may go, checked as each is made (the API's targets: a name that resolves
   * elsewhere by then, or a redirect, is refused). Unset: anywhere (drctl's target files are the operator's).
   */
  readonly egress?: EgressPolicy;
}

export function openTarget(
  spec: TargetSpec,
  secrets: Readonly<Record<string, string>> = {},
  opening: OpenOptions = {},
): Storage {
  const config = spec.config;
  const name = spec.name;
  const egress = opening.egress ? { egress: opening.egress } : {};
  switch (spec.targetType) {
    case 'LOCAL':
      return withRetries(new LocalStorage(String(config.path), name ?? `local:${String(config.path)}`));
    case 'S3':
      return withRetries(s3Storage(spec, secrets, opening));
    case 'AZURE': {
      const accountKey = secrets.accountKey ?? str(config.accountKey);
      const sasToken = secrets.sasToken ?? str(config.sasToken);
      const connectionString = secrets.connectionString ?? str(config.connectionString);
      return withRetries(
        new AzureStorage({
          accountName: String(config.accountName),
          containerName: String(config.containerName),
          ...(accountKey ? { accountKey } : {}),
          ...(sasToken ? { sasToken } : {}),
          ...(connectionString ? { connectionString } : {}),
          ...(str(config.endpoint) ? { endpoint: str(config.endpoint)! } : {}),
          ...(str(config.prefix) ? { prefix: str(config.prefix)! } : {}),
          ...(str(config.accessTier) ? { accessTier: str(config.accessTier) as 'Hot' } : {}),
          ...(name ? { name } : {}),
          ...egress,
        }),
      );
    }
    case 'GCP': {
      // The service-account key's JSON contents, or the path of a key file on the machine that runs backups.
      const keyFile = secrets.keyFile ?? str(config.keyFile);
      return withRetries(
        new GcsStorage({
          projectId: String(config.projectId),
          bucket: String(config.bucket),
          ...(keyFile
            ? keyFile.trim().startsWith('{')
              ? { keyJson: keyFile }
              : { keyFilename: keyFile }
            : {}),
          ...(str(config.prefix) ? { prefix: str(config.prefix)! } : {}),
          ...(str(config.endpoint) ? { apiEndpoint: str(config.endpoint)! } : {}),
          ...(name ? { name } : {}),
          ...egress,
        }),
      );
    }
    case 'FTP': {
      const password = secrets.password ?? str(config.password) ?? '';
      const tls = config.tls === 'off' || config.tls === 'required' ? config.tls : 'auto';
      return withRetries(
        new FtpStorage({
          host: String(config.host),
          port: Number(config.port ?? 21),
          username: String(config.username),
          password,
          path: String(config.path),
          tls,
          ...(config.allowSelfSignedCertificate === true ? { allowSelfSignedCertificate: true } : {}),
          ...(name ? { name } : {}),
          ...egress,
        }),
      );
    }
    case 'SFTP': {
      const privateKey = secrets.privateKey ?? str(config.privateKey);
      const passphrase = secrets.passphrase ?? str(config.passphrase);
      const password = secrets.password ?? str(config.password);
      return withRetries(
        new SftpStorage({
          host: String(config.host),
          port: Number(config.port ?? 22),
          username: String(config.username),
          path: String(config.path),
          // The key's contents, or the path of a key file on the machine that runs backups.
          ...(privateKey
            ? privateKey.includes('PRIVATE KEY')
              ? { privateKey }
              : { privateKeyFile: privateKey }
            : {}),
          ...(passphrase ? { passphrase } : {}),
          ...(password ? { password } : {}),
          ...(str(config.hostKeyFingerprint) ? { hostKeyFingerprint: str(config.hostKeyFingerprint)! } : {}),
          ...(name ? { name } : {}),
          ...egress,
        }),
      );
    }
    default:
      throw new StorageError(
        'other',
        name ?? spec.targetType,
        undefined,
        `unknown target type ${spec.targetType} (LOCAL, S3, AZURE, GCP, FTP, SFTP)`,
      );
  }
}

/** A target file for drctl: the API's target JSON (`{ "targetType": …, "config": { … } }`), secrets inline. */
export async function readTargetFile(file: string): Promise<TargetSpec> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new StorageError(
      'other',
      file,
      undefined,
      `cannot read the target file: ${(error as Error).message}`,
    );
  }
  const spec = parsed as Partial<TargetSpec>;
  if (typeof spec.targetType !== 'string' || typeof spec.config !== 'object' || spec.config === null) {
    throw new StorageError(
      'other',
      file,
      undefined,
      'a target file holds {"targetType": …, "config": {…}} as the API takes it',
    );
  }
  return spec as TargetSpec;
}

export interface ProbeResult {
  readonly ok: boolean;
  /** Round trip of write, read back and delete, in milliseconds. */
  readonly latencyMs: number;
  readonly steps: { readonly write?: number; readonly read?: number; readonly delete?: number };
  readonly error?: { readonly kind: string; readonly message: string };
  /** What the connection revealed that an operator should know (FTP without TLS, for one). */
  readonly warnings?: readonly string[];
}

/** Writes, reads back and deletes a small object: does this target work, and how fast. */
export async function probeTarget(
  storage: Storage,
  now: () => number = () => performance.now(),
  onError: (error: unknown) => void = () => undefined,
): Promise<ProbeResult> {
  const key = `dr-check/${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const payload = Buffer.from(`dr-automation check ${new Date().toISOString()}`);
  const steps: { write?: number; read?: number; delete?: number } = {};
  const started = now();
  let at = started;
  const step = (name: keyof typeof steps) => {
    const current = now();
    steps[name] = Math.round(current - at);
    at = current;
  };
  try {
    await storage.put(key, payload);
    step('write');
    const back = await storage.read(key);
    step('read');
    if (!back.equals(payload))
      throw new StorageError('other', storage.name, key, 'the object read back differs from the one written');
    await storage.delete([key]);
    step('delete');
    const warnings = storage.warnings ?? [];
    return {
      ok: true,
      latencyMs: Math.round(now() - started),
      steps,
      ...(warnings.length > 0 ? { warnings: [...warnings] } : {}),
    };
  } catch (error) {
    onError(error);
    return { ok: false, latencyMs: Math.round(now() - started), steps, error: publicReason(error) };
  }
}
