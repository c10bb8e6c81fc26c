import { z } from 'zod';
import { issue, text, type OpenOptions, type TargetDriver, type TargetSpec } from '../driver.ts';
import { awsRegion, httpUrl, objectPrefix, s3Bucket, secret, wholeRange } from '../fields.ts';
import { S3Storage } from './s3-storage.ts';

/** Storage classes that still serve a ranged read at once (GLACIER and DEEP_ARCHIVE need a restore first). */
const INSTANT_CLASSES = ['STANDARD_IA', 'ONEZONE_IA', 'INTELLIGENT_TIERING', 'GLACIER_IR'] as const;

/**
 * Lifecycle rules an S3 target puts on its bucket, for its prefix. No expiry of current objects: packs are
 * shared between backups, and retention deletes what no kept backup needs.
 */
const s3Lifecycle = z
  .strictObject({
    transitions: z
      .array(
        z
          .strictObject({
            days: wholeRange(0, 36_500, 'days'),
            storageClass: z.enum(INSTANT_CLASSES, {
              error: `must be one of ${INSTANT_CLASSES.join(', ')}: classes that serve reads at once (GLACIER and DEEP_ARCHIVE need a restore before any backup in them can be read)`,
            }),
          })
          .refine((step) => !step.storageClass.endsWith('_IA') || step.days >= 30, {
            error: 'S3 moves objects to STANDARD_IA or ONEZONE_IA only after 30 days or more',
            path: ['days'],
          }),
      )
      .max(4, { error: 'must have at most 4 steps' })
      .refine((steps) => steps.every((step, index) => index === 0 || step.days > steps[index - 1]!.days), {
        error: 'steps must have increasing days',
      })
      .optional(),
    abortIncompleteUploadsAfterDays: wholeRange(1, 365, 'days').optional(),
    noncurrentVersionExpirationDays: wholeRange(1, 36_500, 'days').optional(),
    expirationDays: z
      .never({
        error:
          'is not allowed: a pack written for an old backup holds chunks newer backups use; set retentionDays on the schedules, and retention deletes what no kept backup needs',
      })
      .optional(),
  })
  .optional();

const s3Config = z.strictObject({
  bucket: s3Bucket,
  region: awsRegion,
  prefix: objectPrefix.optional(),
  accessKeyId: z
    .string()
    .regex(/^[A-Z0-9]{16,128}$/, { error: 'must be an AWS access key id' })
    .nullable()
    .optional(),
  secretAccessKey: secret,
  /** For S3-compatible stores (MinIO, Ceph, a local emulator). */
  endpoint: httpUrl.optional(),
  forcePathStyle: z.boolean().optional(),
  encryption: z.enum(['AES256', 'aws:kms']).default('AES256'),
  kmsKeyId: z.string().min(1).max(2048).optional(),
  storageClass: z
    .enum([
      'STANDARD',
      'STANDARD_IA',
      'ONEZONE_IA',
      'INTELLIGENT_TIERING',
      'GLACIER_IR',
      'GLACIER',
      'DEEP_ARCHIVE',
    ])
    .optional(),
  objectLock: z
    .strictObject({
      mode: z.enum(['GOVERNANCE', 'COMPLIANCE']),
      days: wholeRange(1, 36_500, 'days'),
    })
    .optional(),
  lifecycle: s3Lifecycle,
});

/** The S3 adapter itself, for what only S3 does (lifecycle rules) besides opening it. */
export function s3Storage(
  spec: TargetSpec,
  secrets: Readonly<Record<string, string>> = {},
  opening: OpenOptions = {},
): S3Storage {
  const config = spec.config;
  const accessKeyId = text(config.accessKeyId);
  const secretAccessKey = secrets.secretAccessKey ?? text(config.secretAccessKey);
  const objectLock = config.objectLock as { mode: 'GOVERNANCE' | 'COMPLIANCE'; days: number } | undefined;
  return new S3Storage({
    bucket: String(config.bucket),
    region: String(config.region),
    ...(text(config.prefix) ? { prefix: text(config.prefix)! } : {}),
    ...(accessKeyId && secretAccessKey ? { credentials: { accessKeyId, secretAccessKey } } : {}),
    ...(text(config.endpoint) ? { endpoint: text(config.endpoint)! } : {}),
    ...(config.forcePathStyle === true ? { forcePathStyle: true } : {}),
    ...(config.encryption === 'AES256' || config.encryption === 'aws:kms'
      ? { encryption: config.encryption }
      : {}),
    ...(text(config.kmsKeyId) ? { kmsKeyId: text(config.kmsKeyId)! } : {}),
    ...(text(config.storageClass) ? { storageClass: text(config.storageClass)! } : {}),
    ...(objectLock ? { objectLock } : {}),
    ...(spec.name ? { name: spec.name } : {}),
    ...(opening.egress ? { egress: opening.egress } : {}),
  });
}

/** S3 and S3-compatible stores (MinIO, Ceph). */
export const s3Driver = {
  type: 'S3',
  config: s3Config,
  secretFields: ['secretAccessKey'],
  destinationFields: ['bucket', 'region', 'endpoint', 'accessKeyId'],
  requirements(config, secrets) {
    const issues = [];
    if ((config.accessKeyId !== undefined) !== secrets.has('secretAccessKey'))
      issues.push(
        issue(
          'secretAccessKey',
          'accessKeyId and secretAccessKey go together (omit both to use the function role)',
        ),
      );
    if (config.encryption === 'aws:kms' && config.kmsKeyId === undefined)
      issues.push(issue('kmsKeyId', "is required when encryption is 'aws:kms'"));
    if (config.encryption !== 'aws:kms' && config.kmsKeyId !== undefined)
      issues.push(issue('kmsKeyId', "only applies when encryption is 'aws:kms'"));
    return issues;
  },
  open: (spec, secrets, opening) => Promise.resolve(s3Storage(spec, secrets, opening)),
} satisfies TargetDriver;
