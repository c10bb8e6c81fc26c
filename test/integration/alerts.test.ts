import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runAlertChecks } from '../../functions/core/services/alert-service.ts';
import { Partition } from '../../functions/core/store/table.ts';
import { catalogEntry, slowRestoreTest } from '../support/catalog.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import type { MailMessage } from '../../functions/core/mail.ts';

/**
 * Alerts: one email per episode and one when it ends, across repeated checks, with a controlled clock over a
 * synthetic history; and the local runtime's own path (a failed run → an .eml in the outbox).
 */
const H = 3_600_000;
const T0 = Date.parse('2026-11-01T00:00:00Z');
const at = (hours: number) => new Date(T0 + hours * H).toISOString();
let clock = T0;
let api: TestApi;
const sent: MailMessage[] = [];
const mailer = (message: MailMessage) => {
  sent.push(message);
  return Promise.resolve();
};

function backup(n: number, start: number, status: string) {
  return catalogEntry({
    id: `20261101T${String(n).padStart(2, '0')}0000000Z-abcdef`,
    startedAt: at(start),
    finishedAt: at(start + 0.1),
    status,
    targetType: 'S3',
    ...(status === 'SUCCESS' ? {} : { targetError: 'AccessDenied: no PutObject' }),
  });
}

async function add(item: { id: string }) {
  await api.runtime.controlPlane.table.create(Partition.backup, item.id, item, new Date(clock), 'exists');
}

beforeAll(async () => {
  api = await startTestApi({ now: () => new Date(clock) });
  expect(
    (await api.call('POST', '/api/dr/config', { rto: 4, rpo: 2, notificationEmails: ['ops@example.com'] }))
      .status,
  ).toBe(201);
});
afterAll(async () => {
  await api?.close();
});

it('sends one email when a schedule starts failing, none while it goes on, and one when it recovers', async () => {
  const cp = api.runtime.controlPlane;
  await add(backup(1, 0, 'SUCCESS'));
  clock = T0 + 1 * H;
  expect(await runAlertChecks(cp, mailer)).toEqual({ opened: [], recovered: [], failed: [] });

  await add(backup(2, 1, 'FAILED'));
  clock = T0 + 1.5 * H;
  expect((await runAlertChecks(cp, mailer)).opened).toEqual(['backup-failed:hourly']);
  expect(sent).toHaveLength(1);
  expect(sent[0]).toMatchObject({ to: ['ops@example.com'], subject: '[DR] Backup FAILED — schedule hourly' });
  expect(sent[0]!.text).toContain('- primary (S3): AccessDenied: no PutObject');
  expect(sent[0]!.html).toContain('<p>Targets that do not hold it:</p>');

  // Still failing an hour later, and now the RPO (2 h) is violated too: one new email, for the RPO.
  await add(backup(3, 2, 'FAILED'));
  clock = T0 + 2.5 * H;
  expect((await runAlertChecks(cp, mailer)).opened).toEqual(['rpo']);
  clock = T0 + 2.6 * H;
  expect(await runAlertChecks(cp, mailer)).toEqual({ opened: [], recovered: [], failed: [] });
  expect(sent.map((mail) => mail.subject)).toEqual([
    '[DR] Backup FAILED — schedule hourly',
    '[DR] RPO violated — the newest restore point is older than 2 h',
  ]);
  expect(sent[1]!.text).toContain(
    `Since ${at(2)} the newest restore point (${at(0)}) has been older than the RPO of 2 h`,
  );

  // A good backup ends both episodes: two recovery emails, once.
  await add(backup(4, 3, 'SUCCESS'));
  clock = T0 + 3.5 * H;
  const recovered = await runAlertChecks(cp, mailer);
  expect(recovered.recovered.sort()).toEqual(['backup-failed:hourly', 'rpo']);
  expect(await runAlertChecks(cp, mailer)).toEqual({ opened: [], recovered: [], failed: [] });
  expect(
    sent
      .slice(2)
      .map((mail) => mail.subject)
      .sort(),
  ).toEqual([
    '[DR] Recovered — backups of schedule hourly succeed again',
    '[DR] Recovered — the RPO of 2 h is met again',
  ]);
  const episodes = await api.call('GET', '/api/dr/alerts');
  expect(episodes.body.items.every((item: { active: boolean }) => !item.active)).toBe(true);
});

it('sends one email per DR test that exceeded the RTO, and says when a test type is overdue', async () => {
  const cp = api.runtime.controlPlane;
  sent.length = 0;
  const test = slowRestoreTest({
    id: '20261101T050000000Z-abcdef',
    startedAt: at(5),
    finishedAt: at(10),
    rtoViolated: true,
  });
  await cp.table.create(Partition.drTest, test.id, test, new Date(clock), 'exists');
  clock = T0 + 10.5 * H;
  await add(backup(10, 10, 'SUCCESS'));
  expect((await runAlertChecks(cp, mailer)).opened).toEqual([`rto:${test.id}`]);
  expect(sent[0]!.subject).toBe('[DR] RTO violated — RESTORE_TEST took 5 h (objective 4 h)');
  expect((await runAlertChecks(cp, mailer)).opened).toEqual([]);

  // A new deployment is not overdue on its first day: GET /api/dr/test and the alerts agree
  const early = (await api.call('GET', '/api/dr/test')).body.compliance.types.FAILOVER_TEST;
  expect(early.overdue).toBe(false);
  expect(Date.parse(early.dueAt)).toBeGreaterThan(clock + 89 * 86_400_000);

  // 91 days after the config was created (testFrequencyDays 90), the types that never passed are overdue.
  clock = Date.now() + 91 * 86_400_000;
  await add({ ...backup(11, (clock - T0) / H - 0.5, 'SUCCESS'), id: '20270301T000000000Z-abcdef' });
  const overdue = await runAlertChecks(cp, mailer);
  expect(overdue.opened.sort()).toEqual(
    [
      'test-overdue:BACKUP_VERIFICATION',
      'test-overdue:FAILOVER_TEST',
      'test-overdue:RECOVERY_TIME_TEST',
      'test-overdue:RESTORE_TEST',
    ].sort(),
  );
  const mail = sent.find((one) => one.subject.includes('FAILOVER_TEST'))!;
  expect(mail.text).toContain(
    'FAILOVER_TEST has never passed since the DR config was created; it was due at',
  );
  expect((await api.call('GET', '/api/dr/test')).body.compliance.types.FAILOVER_TEST.overdue).toBe(true);
  expect(mail.text).not.toMatch(/password|secret/i);
});

it('warns when a target stores more, or has less free space, than its thresholds, and when it is back within them', async () => {
  const cp = api.runtime.controlPlane;
  sent.length = 0;
  const dir = await mkdtemp(join(tmpdir(), 'dr-capacity-'));
  await writeFile(join(dir, 'pack'), Buffer.alloc(2 * 1024 * 1024));
  const target = (capacity: Record<string, number>) => ({
    id: 'disk',
    name: 'disk',
    targetType: 'LOCAL',
    config: { path: dir },
    capacity,
  });
  expect((await api.call('POST', '/api/dr/targets', target({ maxStoredBytes: 1024 * 1024 }))).status).toBe(
    201,
  );
  expect((await runAlertChecks(cp, mailer)).opened).toContain('capacity:disk');
  const warning = sent.find((mail) => mail.subject === '[DR] Storage capacity warning — target disk')!;
  expect(warning.text).toContain('- it stores 2.0 MiB, more than the threshold of 1.0 MiB');

  // A higher threshold: back within it (the hourly measurement is reused), one recovery email.
  const current = await api.call('GET', '/api/dr/targets/disk');
  expect(
    (
      await api.call('PUT', '/api/dr/targets/disk', {
        ...target({ maxStoredBytes: 10 * 1024 * 1024 }),
        version: current.body.version,
      })
    ).status,
  ).toBe(200);
  expect((await runAlertChecks(cp, mailer)).recovered).toEqual(['capacity:disk']);

  // Free space below a (huge) minimum, measured again an hour later.
  const again = await api.call('GET', '/api/dr/targets/disk');
  const huge = await api.call('PUT', '/api/dr/targets/disk', {
    ...target({ minFreeBytes: 2 ** 50 }),
    version: again.body.version,
  });
  expect(huge.status).toBe(200);
  clock += 61 * 60_000;
  expect((await runAlertChecks(cp, mailer)).opened).toEqual(['capacity:disk']);
  expect(sent.at(-1)!.text).toMatch(/- free space .* is below the threshold of 1\.0 PiB/);
  const episodes = (await api.call('GET', '/api/dr/alerts')).body.items;
  expect(episodes[0]).toMatchObject({ key: 'capacity:disk', active: true });
  expect(episodes.some((item: { key: string }) => item.key.startsWith('usage:'))).toBe(false);
});

it('in the local runtime, a failed run puts an alert in the outbox', async () => {
  const local = await startTestApi();
  try {
    const work = await mkdtemp(join(tmpdir(), 'dr-alerts-'));
    const blocker = join(work, 'a-file');
    await writeFile(blocker, 'not a directory');
    const calls: [string, string, unknown][] = [
      [
        'POST',
        '/api/dr/config',
        { notificationEmails: ['ops@example.com'], source: { files: { type: 'directory', path: work } } },
      ],
      [
        'POST',
        '/api/dr/targets',
        { id: 'broken', targetType: 'LOCAL', config: { path: join(blocker, 'repo') } },
      ],
      [
        'POST',
        '/api/dr/schedules',
        {
          id: 'files',
          name: 'files',
          scheduleType: 'FULL',
          cronExpression: '0 2 * * *',
          targets: ['broken'],
        },
      ],
    ];
    for (const [method, path, body] of calls) expect((await local.call(method, path, body)).status).toBe(201);
    expect((await local.call('POST', '/api/dr/schedules/files/execute')).status).toBe(202);
    await local.runtime.idle();
    const outbox = join(local.dataDir, 'outbox');
    const mails = await Promise.all(
      (await readdir(outbox)).map((name) => readFile(join(outbox, name), 'utf8')),
    );
    const alerts = mails.filter((mail) =>
      mail.includes('The newest backup of schedule files (files) is FAILED.'),
    );
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatch(/^To: ops@example.com\r$/m);
    expect(alerts[0]).toMatch(/^Subject: =\?UTF-8\?Q\?=5BDR=5D_Backup_FAILED/m);
    expect(alerts[0]).toContain('Content-Type: text/html');
  } finally {
    await local.close();
  }
});
