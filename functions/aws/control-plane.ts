import { iamPrincipalRoles } from './principal-roles.ts';
import { createHash } from 'node:crypto';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { AuditLog } from '../core/audit.ts';
import { egressFromEnv } from '../storage/egress.ts';
import { pathPolicyFromEnv } from '../core/paths.ts';
import type { ControlPlane } from '../core/context.ts';
import { heavyStepsFromEnv, optionalEnv, requireEnv } from '../core/env.ts';
import { createLogger, parseLevel } from '../core/log.ts';
import { AwsSecretStore } from './secret-store.ts';
import { DynamoTable } from './dynamodb-table.ts';
import { cloudWatchFreeStorage } from './free-storage.ts';
import { rdsDatabaseStatus } from './rds-status.ts';
import { awsLauncherFromEnv } from './launcher.ts';
import { s3DownloadLinks } from './s3-downloads.ts';
import { awsWorkflowsFromEnv } from './workflows.ts';

/** The control plane of a Lambda or Fargate task, from the environment the CDK stack sets. */
export function awsControlPlane(): ControlPlane {
  const logger = createLogger(parseLevel(optionalEnv('LOG_LEVEL')));
  const table = new DynamoTable({ tableName: requireEnv('TABLE_NAME') });
  const runs = awsLauncherFromEnv();
  const workflows = awsWorkflowsFromEnv();
  const cp: ControlPlane = {
    table,
    secrets: new AwsSecretStore({ kmsKeyId: optionalEnv('SECRETS_KMS_KEY_ID') }),
    audit: new AuditLog(table, () => new Date(), logger),
    logger,
    now: () => new Date(),
    secretPrefix: requireEnv('SECRET_PREFIX'),
    ...(runs ? { runs } : {}),
    ...(workflows ? { workflows } : {}),
    ...(optionalEnv('SOURCE_FROM_WORKER') === 'true' ? { sourceFromWorker: true } : {}),
    freeStorage: cloudWatchFreeStorage(),
    databaseStatus: rdsDatabaseStatus(),
    egress: egressFromEnv(),
    paths: pathPolicyFromEnv([]),
    heavySteps: heavyStepsFromEnv(),
    ...(optionalEnv('BACKUP_FANOUT_MACHINE') ? { fanOut: true } : {}),
    // IAM callers' roles from their principal's tag (a JWT carries its groups or scopes itself)
    principalRole: iamPrincipalRoles(),
  };
  const bucket = optionalEnv('DOWNLOAD_BUCKET');
  if (!bucket || !runs?.export) return cp;
  const startExport = runs.export.bind(runs);
  return { ...cp, downloads: s3DownloadLinks(cp, { bucket, startExport }) };
}

/**
 * The repositories' master key on AWS: SHA-256 of the string in the Secrets Manager secret the stack creates
 * (`<stack>/repository-master-key`, random, never rotated by itself: rekey with drctl to change it).
 * Operators derive the same key for drctl:
 *   printf %s "$(aws secretsmanager get-secret-value --secret-id … --query SecretString --output text)" | sha256sum
 */
export async function masterKeyBytesFromSecret(
  secretId: string,
  client: SecretsManagerClient = new SecretsManagerClient({}),
): Promise<Buffer> {
  const secret = await client.send(new GetSecretValueCommand({ SecretId: secretId }));
  if (!secret.SecretString) throw new Error(`secret ${secretId} holds no string`);
  return createHash('sha256').update(secret.SecretString, 'utf8').digest();
}
