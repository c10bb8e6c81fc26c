import { z } from 'zod';
import { text, type TargetDriver } from '../driver.ts';
import { httpUrl, objectPrefix, secret } from '../fields.ts';

const gcpConfig = z.strictObject({
  projectId: z.string().regex(/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/, {
    error: 'must be a Google Cloud project id (6-30 lowercase letters, digits, hyphens)',
  }),
  bucket: z
    .string()
    .regex(/^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$/, { error: 'must be a Cloud Storage bucket name' }),
  prefix: objectPrefix.optional(),
  /** The service-account key: its JSON contents, or a path to it on the machine that runs backups. */
  keyFile: secret,
  endpoint: httpUrl.optional(),
});

/** Google Cloud Storage. */
export const gcsDriver = {
  type: 'GCP',
  config: gcpConfig,
  secretFields: ['keyFile'],
  destinationFields: ['projectId', 'bucket', 'endpoint'],
  async open(spec, secrets, opening) {
    const { GcsStorage } = await import('./gcs-storage.ts');
    const config = spec.config;
    // The service-account key's JSON contents, or the path of a key file on the machine that runs backups.
    const keyFile = secrets.keyFile ?? text(config.keyFile);
    return new GcsStorage({
      projectId: String(config.projectId),
      bucket: String(config.bucket),
      ...(keyFile ? (keyFile.trim().startsWith('{') ? { keyJson: keyFile } : { keyFilename: keyFile }) : {}),
      ...(text(config.prefix) ? { prefix: text(config.prefix)! } : {}),
      ...(text(config.endpoint) ? { apiEndpoint: text(config.endpoint)! } : {}),
      ...(spec.name ? { name: spec.name } : {}),
      ...(opening.egress ? { egress: opening.egress } : {}),
    });
  },
} satisfies TargetDriver;
