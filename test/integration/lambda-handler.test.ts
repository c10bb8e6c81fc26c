import { IAMClient, ListUserTagsCommand } from '@aws-sdk/client-iam';
import { CreateSecretCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import type { Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiHandler } from '../../functions/api/app.ts';
import { startLocalDynamo, type LocalDynamo } from '../../functions/local/dynamodb.ts';
import { seedTargets } from '../support/seed-examples.ts';
import { httpEvent as event } from '../support/http-event.ts';

/**
 * The Lambda entry point as AWS runs it: configuration from the environment the stack sets, DynamoDB through
 * the SDK's default client (pointed at dynalite by AWS_ENDPOINT_URL_DYNAMODB), Secrets Manager mocked, and
 * API Gateway HTTP API events (payload 2.0) carrying the IAM authorizer's identity.
 */
const secretsManager = mockClient(SecretsManagerClient);
// No local server plays IAM: the caller's role is its user's dr-automation:role tag (an admin here)
const iam = mockClient(IAMClient);
iam.on(ListUserTagsCommand).resolves({ Tags: [{ Key: 'dr-automation:role', Value: 'admin' }] });
let dynamo: LocalDynamo;
let handler: ApiHandler;
const saved = { ...process.env };

beforeAll(async () => {
  dynamo = await startLocalDynamo({ tableName: 'dr-lambda-test' });
  Object.assign(process.env, {
    TABLE_NAME: 'dr-lambda-test',
    SECRET_PREFIX: 'DrControlPlane',
    SECRETS_KMS_KEY_ID: 'arn:aws:kms:us-east-1:111122223333:key/test',
    AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    LOG_LEVEL: 'error',
  });
  secretsManager.on(CreateSecretCommand).resolves({});
  ({ handler } = await import('../../functions/api/handler.ts'));
});
afterAll(async () => {
  process.env = saved;
  await dynamo.close();
});

const operator = 'arn:aws:iam::111122223333:user/ops';
const context = {} as Context;

describe('API Lambda handler', () => {
  it('creates a target, storing its secret in Secrets Manager under the stack prefix and key', async () => {
    const response = await handler(event('POST', '/api/dr/targets', seedTargets.FTP, operator), context);
    expect(response.statusCode).toBe(201);
    expect(response.body).not.toContain('secure-password');
    const [call] = secretsManager.commandCalls(CreateSecretCommand);
    expect(call!.args[0].input.Name).toMatch(/^DrControlPlane\/target\/[0-9a-f-]{36}\/[0-9a-f]{12}$/);
    expect(call!.args[0].input.KmsKeyId).toBe('arn:aws:kms:us-east-1:111122223333:key/test');
  });

  it('refuses an IAM caller whose user is not tagged for it: a viewer may read, not change', async () => {
    iam.on(ListUserTagsCommand, { UserName: 'intern' }).resolves({ Tags: [] });
    const intern = 'arn:aws:iam::111122223333:user/intern';
    expect((await handler(event('GET', '/api/dr/targets', undefined, intern), context)).statusCode).toBe(200);
    const refused = await handler(
      event('POST', '/api/dr/targets', { id: 'x', targetType: 'LOCAL', config: { path: '/tmp/x' } }, intern),
      context,
    );
    expect(refused.statusCode).toBe(403);
    expect(JSON.parse(refused.body).error.message).toBe(
      'POST /api/dr/targets needs the admin role; this caller is a viewer',
    );
  });

  it('audits the IAM principal and source address', async () => {
    const response = await handler(event('GET', '/api/dr/audit', undefined, operator), context);
    const created = JSON.parse(response.body).items.find(
      (entry: { action: string }) => entry.action === 'target.create',
    );
    expect(created.actor).toEqual({
      principal: operator,
      role: 'admin',
      sourceIp: '203.0.113.9',
      userAgent: 'aws-cli/2',
    });
  });

  it('refuses a request that reaches it without an authorizer identity', async () => {
    const response = await handler(event('GET', '/api/dr/targets'), context);
    expect(response.statusCode).toBe(401);
  });
});
