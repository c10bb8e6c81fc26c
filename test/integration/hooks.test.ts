import { chmod, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateClusterCommand,
  CreateServiceCommand,
  DescribeServicesCommand,
  ECSClient,
  RegisterTaskDefinitionCommand,
} from '@aws-sdk/client-ecs';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { nightlySchedule } from '../support/catalog.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { startMoto } from '../support/s3-server.ts';
import { startHookReceiver } from '../support/hook-receiver.ts';

/**
 * Application hooks around restores and FAILOVER_TEST, through the local runtime and real PostgreSQL: a
 * signed webhook (verified by the receiver), retried on 5xx; an ECS service scaled to 0 and back (moto's ECS
 * API); a Lambda invoked (aws-sdk-client-mock: moto runs functions in Docker); a command of DR_HOOKS_DIR.
 * The start hook runs on every path once the stop hook ran, a failed restore included; a failed stop hook
 * fails the run before the database is touched; a failed start hook is an issue of the run.
 */
const SECRET = 'the-application-webhook-secret';
let pg: TestPostgres;
let api: TestApi;
let moto: Awaited<ReturnType<typeof startMoto>>;
let ecs: ECSClient;
let work: string;
let hooksDir: string;
let receiver: Awaited<ReturnType<typeof startHookReceiver>>;
let receiverUrl: string;
const lambda = mockClient(LambdaClient);
const invoked: any[] = [];
let lambdaFails = false;
/** The start step itself dies (the worker killed): the run says so. */
let startStepDies = false;

beforeAll(async () => {
  [pg, moto] = await Promise.all([startPostgres(), startMoto()]);
  receiver = await startHookReceiver(SECRET);
  receiverUrl = receiver.url;
  ecs = new ECSClient({
    region: 'eu-west-1',
    endpoint: moto.endpoint,
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
  });
  await ecs.send(new CreateClusterCommand({ clusterName: 'apps' }));
  await ecs.send(
    new RegisterTaskDefinitionCommand({
      family: 'event-manager',
      containerDefinitions: [{ name: 'web', image: 'event-manager:1', memory: 512 }],
    }),
  );
  await ecs.send(
    new CreateServiceCommand({
      cluster: 'apps',
      serviceName: 'event-manager',
      taskDefinition: 'event-manager',
      desiredCount: 3,
    }),
  );
  lambda.on(InvokeCommand).callsFake((input: { Payload: Uint8Array }) => {
    invoked.push(JSON.parse(Buffer.from(input.Payload).toString('utf8')));
    return lambdaFails && invoked.at(-1).event === 'start'
      ? {
          StatusCode: 200,
          FunctionError: 'Unhandled',
          Payload: Buffer.from('{"errorMessage":"cache flush failed"}'),
        }
      : { StatusCode: 200 };
  });
  hooksDir = await mkdtemp(join(tmpdir(), 'dr-hooks-'));
  work = await mkdtemp(join(tmpdir(), 'dr-hooks-work-'));
  await writeFile(
    join(hooksDir, 'app.sh'),
    `#!/bin/sh\necho "$DR_HOOK_EVENT $DR_HOOK_WORKFLOW $DR_HOOK_ENVIRONMENT $*" >> "${work}/app.log"\n`,
  );
  await chmod(join(hooksDir, 'app.sh'), 0o755);
  await writeFile(join(work, 'outside.sh'), '#!/bin/sh\nexit 0\n');
  await chmod(join(work, 'outside.sh'), 0o755);
  await symlink(join(work, 'outside.sh'), join(hooksDir, 'escape.sh'));
  api = await startTestApi({
    taskWrappers: {
      'hooks.start': async (_input, real) => {
        if (startStepDies) throw new Error('the worker was killed');
        return real();
      },
    },
    hooksDir,
    workflowWaitMs: 10,
    ecs: () => ecs,
    lambda: () => lambda as unknown as LambdaClient,
  });
  await pg.createDatabase('app');
  await pg.sql(
    'app',
    'CREATE TABLE guests (id int PRIMARY KEY, name text); INSERT INTO guests SELECT g, g::text FROM generate_series(1, 100) g',
  );
  for (const [path, body] of [
    [
      '/api/dr/config',
      {
        source: { database: { url: pg.url('app') } },
        environments: { STAGING: { database: { url: pg.url('staging') } } },
      },
    ],
    ['/api/dr/targets', { id: 'local', targetType: 'LOCAL', config: { path: join(work, 'repo') } }],
    ['/api/dr/schedules', nightlySchedule(['local'])],
  ] as const)
    expect((await api.call('POST', path, body)).status).toBe(201);
  const started = await api.call('POST', '/api/dr/schedules/nightly/execute');
  expect(started.status).toBe(202);
  await api.runtime.idle();
}, 60_000);

afterAll(async () => {
  lambda.restore();
  await api?.close();
  await receiver?.close();
  await Promise.all([pg?.stop(), moto?.stop()]);
  for (const dir of [hooksDir, work]) if (dir) await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  receiver.received.length = 0;
  receiver.answers.length = 0;
  invoked.length = 0;
  lambdaFails = false;
  startStepDies = false;
});

async function setHooks(STAGING: unknown[]): Promise<void> {
  const response = await api.call('PATCH', '/api/dr/config', { hooks: { STAGING } });
  expect(response.status, response.text).toBe(200);
}

async function restoreInto(database: string, extra: Record<string, unknown> = {}): Promise<any> {
  const backups = await api.call('GET', '/api/dr/backups?latest=true');
  const started = await api.call('POST', '/api/dr/restore', {
    backupId: backups.body.items[0].id,
    destination: { environment: 'STAGING', database },
    ...extra,
  });
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/restore/${started.body.restoreId}`)).body;
}

async function desiredCount(): Promise<number | undefined> {
  const found = await ecs.send(new DescribeServicesCommand({ cluster: 'apps', services: ['event-manager'] }));
  return found.services?.[0]?.desiredCount;
}

const webhook = (path: string, extra: Record<string, unknown> = {}) => ({
  type: 'webhook',
  name: `web ${path}`,
  url: `${receiverUrl}${path}`,
  secret: SECRET,
  retries: 1,
  ...extra,
});

describe('application hooks', () => {
  it('refuses hooks it could not run, by field: no secret, a script out of DR_HOOKS_DIR, a path', async () => {
    for (const [hooks, field, message] of [
      [[{ type: 'webhook', url: `${receiverUrl}/x` }], 'hooks.STAGING[0].secret', /is required/],
      [[{ type: 'command', script: 'escape.sh' }], 'hooks.STAGING[0].script', /leads out of DR_HOOKS_DIR/],
      [[{ type: 'command', script: 'missing.sh' }], 'hooks.STAGING[0].script', /not in DR_HOOKS_DIR/],
      [
        [{ type: 'command', script: '../outside.sh' }],
        'hooks.STAGING[0].script',
        /a file name in DR_HOOKS_DIR/,
      ],
      [[{ type: 'webhook', url: 'file:///etc/passwd', secret: SECRET }], 'hooks.STAGING[0].url', /http/],
    ] as const) {
      const response = await api.call('PATCH', '/api/dr/config', { hooks: { STAGING: hooks } });
      expect(response.status, JSON.stringify(hooks)).toBe(400);
      const issue = response.body.error.details.find((each: { field: string }) => each.field === field);
      expect(issue, response.text).toBeDefined();
      expect(issue.message).toMatch(message);
    }
  });

  it('keeps a webhook secret out of the API, and never sends it to a new URL', async () => {
    await setHooks([webhook('/app')]);
    const config = await api.call('GET', '/api/dr/config');
    expect(JSON.stringify(config.body)).not.toContain(SECRET);
    expect(config.body.hooks.STAGING[0]).toMatchObject({ type: 'webhook', secretSet: true });
    // Same URL, no secret: kept. Another URL, no secret: refused.
    await setHooks([{ type: 'webhook', name: 'web /app', url: `${receiverUrl}/app`, retries: 1 }]);
    const moved = await api.call('PATCH', '/api/dr/config', {
      hooks: { STAGING: [{ type: 'webhook', url: 'https://hooks.example.com/app' }] },
    });
    expect(moved.status).toBe(400);
    expect(moved.body.error.details[0]).toMatchObject({
      field: 'hooks.STAGING[0].secret',
      message: expect.stringMatching(/URL changed/),
    });
  });

  it('stops the application before a restore and starts it after: a signed webhook, ECS to 0 and back, a Lambda, a command', async () => {
    await setHooks([
      webhook('/app'),
      { type: 'ecs', cluster: 'apps', service: 'event-manager', region: 'eu-west-1', timeoutSeconds: 10 },
      { type: 'lambda', functionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:flush-cache' },
      { type: 'command', script: 'app.sh', args: ['--quick'] },
    ]);
    expect(await desiredCount()).toBe(3);
    const restore = await restoreInto('hooked');
    expect(restore.status, JSON.stringify(restore)).toBe('SUCCEEDED');
    expect(restore.hooks.stop.map((hook: any) => [hook.type, hook.event, hook.ok])).toEqual([
      ['webhook', 'stop', true],
      ['ecs', 'stop', true],
      ['lambda', 'stop', true],
      ['command', 'stop', true],
    ]);
    // Started in reverse order; ECS back to the 3 tasks it had
    expect(restore.hooks.start.map((hook: any) => [hook.type, hook.event, hook.ok])).toEqual([
      ['command', 'start', true],
      ['lambda', 'start', true],
      ['ecs', 'start', true],
      ['webhook', 'start', true],
    ]);
    expect(restore.hooks.stop[1].previousCount).toBe(3);
    expect(await desiredCount()).toBe(3);
    expect(restore.issues).toBeUndefined();
    expect(receiver.received.map((each) => [each.event, each.signed])).toEqual([
      ['stop', true],
      ['start', true],
    ]);
    expect(receiver.received[0]!.body).toMatchObject({
      environment: 'STAGING',
      workflow: 'restore',
      runId: restore.id,
    });
    expect(invoked.map((each) => each.event)).toEqual(['stop', 'start']);
    expect(await readFile(join(work, 'app.log'), 'utf8')).toBe(
      'stop restore STAGING --quick\nstart restore STAGING --quick\n',
    );
    // The steps, in order: the hooks around the database work
    const tasks = restore.steps.map((step: { task: string }) => step.task);
    expect(tasks.indexOf('hooks.stop')).toBeLessThan(tasks.indexOf('restore.prepare'));
    expect(tasks.indexOf('hooks.start')).toBeGreaterThan(tasks.indexOf('restore.database'));
  });

  it('runs the start hook after a failed restore', async () => {
    await setHooks([webhook('/app')]);
    await pg.createDatabase('occupied');
    await pg.sql('occupied', 'CREATE TABLE t (x int)');
    const restore = await restoreInto('occupied');
    expect(restore.status).toBe('FAILED');
    expect(restore.error).toMatch(/DestinationNotEmpty/);
    expect(receiver.received.map((each) => each.event)).toEqual(['stop', 'start']);
    expect(restore.hooks.start).toEqual([expect.objectContaining({ event: 'start', ok: true })]);
  });

  it('retries a webhook that answered 503, with the same delivery id', async () => {
    await setHooks([webhook('/app')]);
    receiver.answers.push(503);
    const restore = await restoreInto('retried');
    expect(restore.status).toBe('SUCCEEDED');
    expect(restore.hooks.stop[0]).toMatchObject({ ok: true, attempts: 2 });
    expect(receiver.received.map((each) => each.event)).toEqual(['stop', 'stop', 'start']);
    expect(receiver.received[0]!.delivery).toBe(receiver.received[1]!.delivery);
  });

  it('fails the restore before touching the database when a stop hook fails, and still starts what it stopped', async () => {
    await setHooks([
      { type: 'ecs', cluster: 'apps', service: 'event-manager', region: 'eu-west-1', timeoutSeconds: 10 },
      webhook('/app'),
    ]);
    receiver.answers.push(500, 500, 204);
    const restore = await restoreInto('never_created');
    expect(restore.status).toBe('FAILED');
    expect(restore.error).toMatch(
      /HookFailed: the stop hook web \/app failed: .*answered 500 \(attempt 2 of 2\); the database was not touched/,
    );
    const databases = await pg.sql('postgres', "SELECT 1 FROM pg_database WHERE datname = 'never_created'");
    expect(databases.rowCount).toBe(0);
    // Both were reached by stop, so both are started (in reverse order)
    expect(restore.hooks.start.map((hook: any) => [hook.type, hook.ok])).toEqual([
      ['webhook', true],
      ['ecs', true],
    ]);
    expect(await desiredCount()).toBe(3);
  });

  it('records a failed start hook as an issue of a restore that succeeded', async () => {
    await setHooks([
      { type: 'lambda', functionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:flush-cache' },
    ]);
    lambdaFails = true;
    const restore = await restoreInto('start_fails');
    expect(restore.status).toBe('SUCCEEDED');
    expect(restore.issues).toEqual([
      expect.stringMatching(
        /the start hook lambda flush-cache failed: the function failed \(Unhandled\): .*cache flush failed/,
      ),
    ]);
  });

  it('says so when the start step itself dies: the application may be down', async () => {
    await setHooks([webhook('/app')]);
    startStepDies = true;
    const restore = await restoreInto('start_step_dies');
    expect(restore.status).toBe('SUCCEEDED');
    expect(restore.issues).toEqual([
      expect.stringMatching(
        /the start hooks did not run: .*the worker was killed; start the application by hand/,
      ),
    ]);
    expect(receiver.received.map((each) => each.event)).toEqual(['stop']);
  });

  it('never calls a webhook at the instance-metadata address', async () => {
    await setHooks([webhook('/app', { url: 'http://169.254.169.254/latest/meta-data/' })]);
    const restore = await restoreInto('metadata');
    expect(restore.status).toBe('FAILED');
    expect(restore.hooks.stop[0]).toMatchObject({ ok: false, attempts: 1 });
    expect(restore.hooks.stop[0].error).toMatch(/egress|metadata|refused/i);
  });

  it('stops and starts STAGING around a FAILOVER_TEST', async () => {
    await setHooks([webhook('/staging')]);
    const started = await api.call('POST', '/api/dr/test', {
      testType: 'FAILOVER',
      targetEnvironment: 'STAGING',
    });
    expect(started.status, started.text).toBe(202);
    await api.runtime.idle();
    const test = (await api.call('GET', `/api/dr/test/${started.body.testId}`)).body;
    expect(test.hooks?.stop, JSON.stringify(test)).toEqual([
      expect.objectContaining({ event: 'stop', ok: true }),
    ]);
    expect(test.hooks.start, JSON.stringify(test.steps)).toEqual([
      expect.objectContaining({ event: 'start', ok: true }),
    ]);
    expect(receiver.received.map((each) => [each.path, each.event, each.body.workflow])).toEqual([
      ['/staging', 'stop', 'failover-test'],
      ['/staging', 'start', 'failover-test'],
    ]);
  });
});
