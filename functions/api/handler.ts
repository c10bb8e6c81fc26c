import { AuditLog } from '../core/audit.ts';
import type { ControlPlane } from '../core/context.ts';
import { optionalEnv, requireEnv } from '../core/env.ts';
import { createLogger, parseLevel } from '../core/log.ts';
import { AwsSecretStore } from '../core/secrets/aws-secret-store.ts';
import { DrTable } from '../core/store/table.ts';
import { VERSION } from '../core/version.ts';
import { createApiHandler } from './app.ts';

/**
 * The API Lambda (API Gateway HTTP API, payload format 2.0). Clients are created once per container, from
 * environment variables that the CDK stack sets.
 */
const logger = createLogger(parseLevel(optionalEnv('LOG_LEVEL')));
const table = new DrTable({ tableName: requireEnv('TABLE_NAME') });
const controlPlane: ControlPlane = {
  table,
  secrets: new AwsSecretStore({ kmsKeyId: optionalEnv('SECRETS_KMS_KEY_ID') }),
  audit: new AuditLog(table, () => new Date(), logger),
  logger,
  now: () => new Date(),
  secretPrefix: requireEnv('SECRET_PREFIX'),
};

export const handler = createApiHandler(controlPlane, { version: VERSION, mode: 'aws' });
