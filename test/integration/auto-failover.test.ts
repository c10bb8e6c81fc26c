import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MailMessage } from '../../functions/core/mail.ts';
import { runAlertChecks } from '../../functions/core/services/alert-service.ts';
import { sourceForRun } from '../../functions/core/services/config-service.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { startHookReceiver } from '../support/hook-receiver.ts';
import { nightlySchedule } from '../support/catalog.ts';

/**
 * Automatic failover with real PostgreSQL: a primary and a streaming replica of it (pg_basebackup -R), the
 * primary stopped as a crash stops it (pg_ctl stop -m immediate). With autoFailover off: an alert, nothing
 * done. On: after the configured failures the replica is promoted (pg_promote), the application is stopped
 * and started around it (a signed webhook), the endpoint hook is told the new primary (a command of
 * DR_HOOKS_DIR), writes succeed there, backups read it, and the email names the data loss measured. A
 * primary down for one probe triggers nothing. The failback is refused until the old primary has followed
 * the new one.
 */
let primary: TestPostgres;
let replica: TestPostgres;
let api: TestApi;
let hooksDir: string;
let clock = Date.parse('2026-12-01T10:00:00Z');
const alerts: MailMessage[] = [];
const mailer = (message: MailMessage) => {
  alerts.push(message);
  return Promise.resolve();
};
const SECRET = 'a-webhook-secret-of-some-length';
const OPERATOR = 'o'.repeat(43);
let webhook: Awaited<ReturnType<typeof startHookReceiver>>;
let webhookUrl: string;

beforeAll(async () => {
  primary = await startPostgres({ settings: ['track_commit_timestamp=on'] });
  await primary.createDatabase('events');
  await primary.sql(
    'events',
    'CREATE TABLE bookings (id serial PRIMARY KEY, guest text NOT NULL); INSERT INTO bookings (guest) SELECT g::text FROM generate_series(1, 500) g',
  );
  replica = await startPostgres({ replicaOf: primary, settings: ['track_commit_timestamp=on'] });
  webhook = await startHookReceiver(SECRET);
  webhookUrl = `${webhook.url}/hooks/app`;
  hooksDir = await mkdtemp(join(tmpdir(), 'dr-hooks-'));
  // The endpoint switch as an operator would script it: here it writes down what it was told.
  await writeFile(
    join(hooksDir, 'point-app.sh'),
    `#!/bin/sh\necho "$DR_HOOK_EVENT $DR_HOOK_PRIMARY_HOST:$DR_HOOK_PRIMARY_PORT" >> "${hooksDir}/switched.log"\n`,
  );
  await chmod(join(hooksDir, 'point-app.sh'), 0o755);
  api = await startTestApi({
    now: () => new Date(clock),
    hooksDir,
    workflowWaitMs: 10,
    roleTokens: [{ token: OPERATOR, role: 'operator' }],
  });
  const config = await api.call('POST', '/api/dr/config', {
    notificationEmails: ['ops@example.com'],
    autoFailover: false,
    source: { database: { url: primary.url('events') } },
    failover: {
      failures: 3,
      windowSeconds: 120,
      standby: { type: 'replica', database: { url: replica.url('events') } },
      endpoint: { type: 'command', script: 'point-app.sh' },
    },
    hooks: { PRODUCTION: [{ type: 'webhook', name: 'event-manager', url: webhookUrl, secret: SECRET }] },
  });
  expect(config.status, JSON.stringify(config.body)).toBe(201);
  // Backups: a FULL and change-stream INCREMENTALs of the source, into a local repository
  for (const [path, body] of [
    ['/api/dr/targets', { id: 'local', targetType: 'LOCAL', config: { path: join(hooksDir, 'repo') } }],
    ['/api/dr/schedules', { ...nightlySchedule(['local']), id: 'full' }],
    [
      '/api/dr/schedules',
      {
        id: 'changes',
        name: 'changes',
        scheduleType: 'INCREMENTAL',
        cronExpression: '*/15 * * * *',
        mode: 'change-stream',
        targets: ['local'],
      },
    ],
  ] as const)
    expect((await api.call('POST', path, body)).status).toBe(201);
}, 120_000);

afterAll(async () => {
  await api?.close();
  await webhook?.close();
  await Promise.all([primary?.stop(), replica?.stop()]);
  if (hooksDir) await rm(hooksDir, { recursive: true, force: true });
});

/** A minute later, the alert checks (which probe the primary and decide). */
async function minute(): Promise<{ opened: string[]; recovered: string[] }> {
  clock += 60_000;
  const result = await runAlertChecks(api.runtime.controlPlane, mailer);
  await api.runtime.idle();
  return result;
}

/** Runs a schedule now and waits for its backup. */
async function run(schedule: string): Promise<any> {
  clock += 60_000; // backup ids are time-ordered: one a minute
  const started = await api.call('POST', `/api/dr/schedules/${schedule}/execute`);
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/backups/${started.body.id}`)).body;
}

async function failovers(): Promise<any[]> {
  const response = await api.call('GET', '/api/dr/failover');
  expect(response.status).toBe(200);
  return response.body.items;
}

async function outbox(): Promise<string[]> {
  const dir = join(api.dataDir, 'outbox');
  const names = (await readdir(dir).catch(() => [] as string[])).sort();
  // Quoted-printable bodies, decoded (soft line breaks joined)
  return Promise.all(
    names.map(async (name) =>
      (await readFile(join(dir, name), 'utf8'))
        .replace(/=\r?\n/g, '')
        .replace(/=([0-9A-F]{2})/g, (_whole, hex: string) => String.fromCharCode(parseInt(hex, 16))),
    ),
  );
}

describe('automatic failover to a streaming replica', () => {
  it('keeps the standby passwords and webhook secrets out of the API, and shows the rule', async () => {
    const config = await api.call('GET', '/api/dr/config');
    const text = JSON.stringify(config.body);
    expect(text).not.toContain(primary.password);
    expect(text).not.toContain(SECRET);
    expect(config.body.failover.standby.database.passwordSet).toBe(true);
    expect(config.body.hooks.PRODUCTION[0]).toMatchObject({ type: 'webhook', secretSet: true, retries: 2 });
    await minute();
    const health = (await api.call('GET', '/api/dr/health/primary')).body;
    expect(health).toMatchObject({
      state: 'UP',
      rule: { failures: 3, windowSeconds: 120, cooldownMinutes: 60 },
    });
    expect(health.lastProbe.lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(health.lastProbe.lastCommitAt).toBeDefined();
  });

  it('refuses a failover by hand while the watch sees the primary up, and one not confirmed', async () => {
    const unconfirmed = await api.call('POST', '/api/dr/failover', {});
    expect(unconfirmed.status).toBe(400);
    expect(unconfirmed.body.error.details[0].field).toBe('confirm');
    const up = await api.call('POST', '/api/dr/failover', { confirm: 'FAILOVER' });
    expect(up.status).toBe(409);
    expect(up.body.error.message).toMatch(
      /the watch sees the primary up: a failover now makes two primaries/,
    );
    const audit = (await api.call('GET', '/api/dr/audit?limit=5')).body.items;
    expect(audit[0]).toMatchObject({ action: 'failover.refused', details: { trigger: 'manual' } });
    const operator = await api.call('POST', '/api/dr/failover', { confirm: 'FAILOVER' }, { token: OPERATOR });
    expect(operator.status).toBe(403);
    expect(await failovers()).toEqual([]);
  });

  it('with autoFailover off: an alert when the primary is down, and nothing done', async () => {
    await primary.halt();
    for (let i = 0; i < 3; i++) await minute();
    expect(alerts.at(-1)!.subject).toBe('[DR] The primary database is down');
    expect(alerts.at(-1)!.text).toMatch(/autoFailover is off: nothing was done/);
    expect(await failovers()).toEqual([]);
    expect((await replica.sql('postgres', 'SELECT pg_is_in_recovery() AS r')).rows[0].r).toBe(true);
    await primary.resume();
    expect((await minute()).recovered).toEqual(['primary-down']);
  });

  it('does nothing for a primary down for one probe (a restart), autoFailover on', async () => {
    expect((await api.call('PATCH', '/api/dr/config', { autoFailover: true })).status).toBe(200);
    await primary.halt();
    await minute();
    await primary.resume();
    await minute();
    expect(await failovers()).toEqual([]);
    expect(webhook.received).toEqual([]);
  });

  it('backs up the primary: a FULL, then a change-stream INCREMENTAL', async () => {
    expect(await run('full')).toMatchObject({ status: 'SUCCESS' });
    await primary.sql('events', "INSERT INTO bookings (guest) VALUES ('after-the-full')");
    expect(await run('changes')).toMatchObject({ status: 'SUCCESS' });
  });

  it('promotes the replica after three failed probes, switches the endpoint, checks writes, and emails the data loss', async () => {
    await primary.sql('events', "INSERT INTO bookings (guest) VALUES ('last-before-the-crash')");
    // The replica has it before the crash (asynchronous replication, caught up on loopback).
    for (let i = 0; i < 50; i++) {
      const { rows } = await replica.sql(
        'events',
        "SELECT count(*)::int AS n FROM bookings WHERE guest = 'last-before-the-crash'",
      );
      if (rows[0].n === 1) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await minute(); // the last probe that sees it up, with its WAL position
    await primary.halt();
    await minute();
    await minute();
    expect(await failovers()).toEqual([]); // two failures: not yet
    await minute();
    const [failover] = await failovers();
    expect(failover, JSON.stringify(failover)).toMatchObject({
      status: 'SUCCEEDED',
      trigger: 'automatic',
      standbyType: 'replica',
      newPrimary: `127.0.0.1:${replica.port}`,
      endpoint: { type: 'command', switched: true },
      checks: { ok: true, issues: [] },
      dataLoss: { walBytes: 0 },
      hooks: {
        environment: 'PRODUCTION',
        stop: [{ name: 'event-manager', ok: true, event: 'stop' }],
        start: [{ name: 'event-manager', ok: true, event: 'start' }],
      },
    });
    expect(failover.dataLoss.note).toMatch(/replayed all the WAL/);
    expect(failover.steps.map((step: { task: string }) => step.task)).toEqual([
      'failover.standby',
      'hooks.stop',
      'failover.promote',
      'failover.promoted',
      'failover.switch',
      'failover.verify',
      'hooks.start',
      'failover.finish',
    ]);
    // The replica is a primary now, and takes writes; nothing was lost
    expect((await replica.sql('postgres', 'SELECT pg_is_in_recovery() AS r')).rows[0].r).toBe(false);
    await replica.sql('events', "INSERT INTO bookings (guest) VALUES ('after-the-failover')");
    expect(
      (
        await replica.sql(
          'events',
          "SELECT count(*)::int AS n FROM bookings WHERE guest = 'last-before-the-crash'",
        )
      ).rows[0].n,
    ).toBe(1);
    // The application was stopped, then started, by signed webhooks; the endpoint hook was told the new primary
    expect(webhook.received.map((delivery) => [delivery.event, delivery.signed])).toEqual([
      ['stop', true],
      ['start', true],
    ]);
    expect(webhook.received[0]!.body).toMatchObject({
      environment: 'PRODUCTION',
      workflow: 'failover',
      runId: failover.id,
    });
    expect(await readFile(join(hooksDir, 'switched.log'), 'utf8')).toBe(`switch 127.0.0.1:${replica.port}\n`);
    // The email says what happened and the data loss measured
    const mail = (await outbox()).find((text) => /Subject: \[DR\] Failed over to the standby/.test(text));
    expect(mail).toBeDefined();
    expect(mail).toMatch(/Data loss: 0 bytes of WAL, 0 s of commits/);
    expect(mail).toContain(`127.0.0.1:${replica.port}`);
    expect(mail).not.toContain(primary.password);
    // The watch now probes the new primary, and says the failover is in force
    expect((await minute()).recovered).toEqual(['primary-down']);
    expect(alerts.at(-1)!.subject).toBe('[DR] Recovered — the promoted standby serves as the primary');
    const health = (await api.call('GET', '/api/dr/health/primary')).body;
    expect(health).toMatchObject({ state: 'UP', failedOver: { failoverId: failover.id } });
    expect((await sourceForRun(api.runtime.controlPlane))!.database!.url).toContain(
      `:${replica.port}/events`,
    );
    // Every decision audited
    const audit = (await api.call('GET', '/api/dr/audit?limit=100')).body.items.map(
      (entry: any) => entry.action,
    );
    expect(audit).toEqual(expect.arrayContaining(['failover.start', 'failover.finish']));
  });

  it('backs up the new primary: the first change-stream INCREMENTAL there is taken as a FULL (its stream is new)', async () => {
    // The slot was on the old primary: no chain of changes crosses the failover
    const first = await run('changes');
    expect(first).toMatchObject({ status: 'SUCCESS', requestedType: 'INCREMENTAL', type: 'FULL' });
    expect(first.notice).toMatch(
      /replication slot .* no longer exists: this INCREMENTAL was taken as a FULL/,
    );
    await replica.sql('events', "INSERT INTO bookings (guest) VALUES ('on-the-new-primary')");
    const next = await run('changes');
    expect(next, JSON.stringify(next)).toMatchObject({ status: 'SUCCESS', type: 'INCREMENTAL' });
    expect(next.changes.transactions).toBeGreaterThan(0);
  });

  it('starts no second failover while the first is in force, and refuses a manual one with the reason', async () => {
    const again = await api.call('POST', '/api/dr/failover', { confirm: 'FAILOVER', force: true });
    expect(again.status).toBe(409);
    expect(again.body.error.message).toMatch(/in force: the standby is the primary; fail back first/);
    expect(await failovers()).toHaveLength(1);
  });

  it('refuses a failback while the old primary has not followed the new one, and changes nothing', async () => {
    await primary.resume();
    const [failover] = await failovers();
    const asked = await api.call('POST', `/api/dr/failover/${failover.id}/failback`, {});
    expect(asked.status).toBe(202);
    await api.runtime.idle();
    const after = (await api.call('GET', `/api/dr/failover/${failover.id}`)).body;
    expect(after.status).toBe('SUCCEEDED');
    expect(after.failback.error).toMatch(
      /the original primary \(timeline 1\) has not followed the standby \(timeline 2\)/,
    );
    const health = (await api.call('GET', '/api/dr/health/primary')).body;
    expect(health.failedOver.failoverId).toBe(failover.id);
    // Only admins may ask
    const operator = await api.call(
      'POST',
      `/api/dr/failover/${failover.id}/failback`,
      {},
      { token: OPERATOR },
    );
    expect(operator.status).toBe(403);
  });

  it('fails back when forced: the endpoint hook is told the original primary, and backups read it again', async () => {
    const [failover] = await failovers();
    const asked = await api.call('POST', `/api/dr/failover/${failover.id}/failback`, { force: true });
    expect(asked.status).toBe(202);
    await api.runtime.idle();
    const after = (await api.call('GET', `/api/dr/failover/${failover.id}`)).body;
    expect(after.status, JSON.stringify(after.failback)).toBe('FAILED_BACK');
    expect(await readFile(join(hooksDir, 'switched.log'), 'utf8')).toMatch(
      new RegExp(`switch 127.0.0.1:${primary.port}\\n$`),
    );
    const health = (await api.call('GET', '/api/dr/health/primary')).body;
    expect(health.failedOver).toBeUndefined();
    expect((await sourceForRun(api.runtime.controlPlane))!.database!.url).toContain(
      `:${primary.port}/events`,
    );
  });
});
