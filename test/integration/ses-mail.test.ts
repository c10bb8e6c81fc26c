import { CreateEmailIdentityCommand, SESv2Client } from '@aws-sdk/client-sesv2';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { sesMailer } from '../../functions/aws/ses-mailer.ts';
import { runAlertChecks } from '../../functions/core/services/alert-service.ts';
import { Partition } from '../../functions/core/store/table.ts';
import { runWorkflowTask } from '../../functions/workflows/tasks.ts';
import { testKey } from '../support/engine.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startMoto } from '../support/s3-server.ts';

/**
 * DR-test completion emails as the worker sends them on AWS: the workflow's notify step with the SES mailer,
 * against moto's SES API (sent messages readable at /moto-api/data.json).
 */
let moto: Awaited<ReturnType<typeof startMoto>>;
let api: TestApi;
let ses: SESv2Client;

beforeAll(async () => {
  [moto, api] = await Promise.all([startMoto(), startTestApi()]);
  ses = new SESv2Client({
    region: 'eu-west-1',
    endpoint: moto.endpoint,
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
  });
  await ses.send(new CreateEmailIdentityCommand({ EmailIdentity: 'dr@example.com' }));
  const config = await api.call('POST', '/api/dr/config', {
    rto: 4,
    rpo: 1,
    notificationEmails: ['ops@example.com', 'cto@example.com'],
  });
  expect(config.status).toBe(201);
});
afterAll(async () => {
  await Promise.all([api?.close(), moto?.stop()]);
});

async function sent(): Promise<
  { source: string; subject: string; body: string; destinations: { ToAddresses: string[] } }[]
> {
  const data = (await (await fetch(`${moto.endpoint}/moto-api/data.json`)).json()) as {
    ses: { Message: never[] };
  };
  return data.ses.Message;
}

it('emails the result of a test to the notification list through SES, with the figures and what failed', async () => {
  const started = await api.call('POST', '/api/dr/test', { testType: 'RESTORE_TEST', manual: true });
  const testId = started.body.testId as string;
  await api.call('POST', `/api/dr/test/${testId}/results`, {
    success: false,
    actualRTO: 5.25,
    actualRPO: 0.5,
    issues: ['table public.users: 9 rows, the backup holds 10'],
  });
  const result = await runWorkflowTask(
    api.runtime.controlPlane,
    {
      masterKey: () => Promise.resolve(testKey()),
      notify: sesMailer({ from: 'dr@example.com', client: ses }),
    },
    'test.notify',
    { testId },
  );
  expect(result).toEqual({ sent: true, to: 2 });
  const [message] = await sent();
  expect(message).toMatchObject({
    source: 'dr@example.com',
    destinations: { ToAddresses: ['ops@example.com', 'cto@example.com'] },
    subject: `DR test RESTORE_TEST FAILED (${testId})`,
  });
  expect(message!.body).toContain('Actual RTO: 5.25 h (objective 4 h) — VIOLATED');
  expect(message!.body).toContain('- table public.users: 9 rows, the backup holds 10');
});

it('says why nothing was sent when there is no mail service', async () => {
  const started = await api.call('POST', '/api/dr/test', { testType: 'RESTORE_TEST', manual: true });
  const result = await runWorkflowTask(
    api.runtime.controlPlane,
    { masterKey: () => Promise.resolve(testKey()) },
    'test.notify',
    { testId: started.body.testId },
  );
  expect(result).toEqual({ sent: false, reason: 'no mail service in this deployment' });
});

it('sends alerts through SES too: one per episode, text and HTML', async () => {
  const cp = api.runtime.controlPlane;
  const failed = {
    id: '20261124T020000000Z-abcdef',
    scheduleId: 'nightly',
    scheduleName: 'nightly',
    requestedType: 'FULL',
    type: 'FULL',
    status: 'FAILED',
    trigger: { kind: 'schedule' },
    startedAt: '2026-11-24T02:00:00.000Z',
    heartbeatAt: '2026-11-24T02:00:05.000Z',
    finishedAt: '2026-11-24T02:00:05.000Z',
    error: 'every target failed',
    targets: [
      {
        targetId: 's3',
        name: 'offsite',
        targetType: 'S3',
        status: 'FAILED',
        error: { kind: 'permission', message: 'AccessDenied' },
      },
    ],
  };
  await cp.table.create(Partition.backup, failed.id, failed, cp.now(), 'exists');
  const mailer = sesMailer({ from: 'dr@example.com', client: ses });
  const before = (await sent()).length;
  // (The manual test above exceeded the RTO: its alert goes out in the same check.)
  expect((await runAlertChecks(cp, mailer)).opened.sort()).toEqual([
    'backup-failed:nightly',
    expect.stringMatching(/^rto:/),
  ]);
  expect((await runAlertChecks(cp, mailer)).opened).toEqual([]);
  const messages = (await sent())
    .slice(before)
    .filter((message) => message.subject.includes('Backup FAILED'));
  expect(messages).toHaveLength(1);
  expect(messages[0]).toMatchObject({
    source: 'dr@example.com',
    destinations: { ToAddresses: ['ops@example.com', 'cto@example.com'] },
    subject: '[DR] Backup FAILED — schedule nightly',
  });
  expect(messages[0]!.body).toContain('- offsite (S3): AccessDenied');
});
