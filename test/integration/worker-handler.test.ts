import { IAMClient, ListUserTagsCommand } from '@aws-sdk/client-iam';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import type { Context } from 'aws-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiHandler } from '../../functions/api/app.ts';
import { startLocalDynamo, type LocalDynamo } from '../../functions/local/dynamodb.ts';
import { createEventManager } from '../support/event-manager.ts';
import { httpEvent } from '../support/http-event.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { startMoto } from '../support/s3-server.ts';

/**
 * The AWS path of the change stream's watch with the worker in the operator's subnets: the API Lambda (its
 * environment as the stack sets it with `-c workerSubnets`) never connects to the source; it invokes the
 * worker with `{action: 'watch'}` (Lambda mocked: nothing plays it locally), and the worker Lambda's handler,
 * given that event, measures the real PostgreSQL (password-protected: the password goes through Secrets
 * Manager, moto's) and stores what the API then answers. DynamoDB is dynalite.
 */
const lambda = mockClient(LambdaClient);
// No local server plays IAM: the caller's role is its user's dr-automation:role tag (an admin here)
const iam = mockClient(IAMClient);
iam.on(ListUserTagsCommand).resolves({ Tags: [{ Key: 'dr-automation:role', Value: 'admin' }] });
let dynamo: LocalDynamo;
let pg: TestPostgres;
let moto: Awaited<ReturnType<typeof startMoto>>;
let api: ApiHandler;
let worker: (event: unknown) => Promise<unknown>;
const saved = { ...process.env };
const context = {} as Context;

beforeAll(async () => {
  [dynamo, pg, moto] = await Promise.all([
    startLocalDynamo({ tableName: 'dr-worker-test' }),
    startPostgres(),
    startMoto(),
  ]);
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  await pg.sql('app', 'ALTER TABLE page_views REPLICA IDENTITY FULL');
  lambda.on(InvokeCommand).resolves({ StatusCode: 202 });
  Object.assign(process.env, {
    TABLE_NAME: 'dr-worker-test',
    SECRET_PREFIX: 'DrControlPlane',
    AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
    AWS_ENDPOINT_URL_SECRETS_MANAGER: moto.endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    LOG_LEVEL: 'error',
    MASTER_KEY_SECRET: 'DrControlPlane/repository-master-key',
    // The API's environment with the worker in the operator's subnets
    WORKER_FUNCTION: 'dr-worker',
    SOURCE_FROM_WORKER: 'true',
  });
  ({ handler: api } = await import('../../functions/api/handler.ts'));
  // The worker's environment: it runs in the subnets, and starts nothing
  delete process.env.WORKER_FUNCTION;
  delete process.env.SOURCE_FROM_WORKER;
  const { handler: middyfied } = await import('../../functions/worker/handler.ts');
  worker = (event) => middyfied(event, context);
});
afterAll(async () => {
  process.env = saved;
  await Promise.all([dynamo?.close(), pg?.stop(), moto?.stop()]);
});

async function call(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const response = await api(httpEvent(method, path, body, 'arn:aws:iam::111122223333:user/ops'), context);
  return { status: response.statusCode, body: response.body ? JSON.parse(response.body) : undefined };
}

describe('worker Lambda: the watch action', () => {
  it('measures the source for the API, which only reads what the worker stored', async () => {
    const work = await mkdtemp(join(tmpdir(), 'dr-worker-'));
    expect(
      (await call('POST', '/api/dr/config', { source: { database: { url: pg.url('app') } } })).status,
    ).toBe(201);
    expect(
      (await call('POST', '/api/dr/targets', { id: 'primary', targetType: 'LOCAL', config: { path: work } }))
        .status,
    ).toBe(201);
    const created = await call('POST', '/api/dr/schedules', {
      id: 'frequent',
      name: 'every 5 minutes',
      scheduleType: 'INCREMENTAL',
      cronExpression: '*/5 * * * *',
      targets: ['primary'],
    });
    expect(created.status).toBe(201);
    expect(created.body.changeStream.error).toContain('not measured yet');
    const asked = lambda
      .commandCalls(InvokeCommand)
      .map((invocation) => invocation.args[0].input)
      .filter((input) => input.InvocationType === 'Event');
    expect(
      asked.map((input) => [
        input.FunctionName,
        JSON.parse(Buffer.from(input.Payload as Uint8Array).toString()),
      ]),
    ).toContainEqual(['dr-worker', { action: 'watch' }]);

    const measured = (await worker({ action: 'watch' })) as { measuredAt?: string; failure?: string };
    expect(measured.failure).toBeUndefined();
    expect(measured.measuredAt).toEqual(expect.any(String));

    const report = await call('GET', '/api/dr/change-stream');
    expect(report.status).toBe(200);
    expect(report.body).toMatchObject({
      slot: 'dr_automation_app',
      measuredAt: measured.measuredAt,
      readiness: { available: true, walLevel: 'logical' },
    });
  });
});

describe('worker Lambda: its events', () => {
  it('refuses an unknown action or a missing id, never taking it for a backup', async () => {
    for (const event of [
      {},
      { action: 'bakcup', backupId: 'b-1' },
      { action: 'backup' },
      { action: 'workflow', task: 'restore.plan' },
    ])
      await expect(worker(event), JSON.stringify(event)).rejects.toThrow(/not a worker event/);
  });
});
