import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MailMessage } from '../../functions/core/mail.ts';
import { healthFigures, runAlertChecks } from '../../functions/core/services/alert-service.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * The watch over the primary, with a real PostgreSQL stopped as a crash would stop it: one failed probe (a
 * restart) opens nothing; three in a row over two minutes open one alert (autoFailover off: nothing done),
 * and its answer again closes it. The runtime's clock moves a minute per check, as the dispatcher's would.
 */
let pg: TestPostgres;
let api: TestApi;
let clock = Date.parse('2026-12-01T10:00:00Z');
const sent: MailMessage[] = [];
const mailer = (message: MailMessage) => {
  sent.push(message);
  return Promise.resolve();
};

beforeAll(async () => {
  [pg, api] = await Promise.all([startPostgres(), startTestApi({ now: () => new Date(clock) })]);
  await pg.createDatabase('app');
  const config = await api.call('POST', '/api/dr/config', {
    notificationEmails: ['ops@example.com'],
    source: { database: { url: pg.url('app') } },
  });
  expect(config.status).toBe(201);
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});

/** A minute later, the alert checks (which probe the primary). */
async function minute(): Promise<{ opened: string[]; recovered: string[] }> {
  clock += 60_000;
  return runAlertChecks(api.runtime.controlPlane, mailer);
}

async function health(): Promise<any> {
  const response = await api.call('GET', '/api/dr/health/primary');
  expect(response.status).toBe(200);
  return response.body;
}

describe('the primary watch', () => {
  it('is UNKNOWN before the first probe, then UP with the probe in its history', async () => {
    expect((await health()).state).toBe('UNKNOWN');
    expect((await minute()).opened).toEqual([]);
    const body = await health();
    expect(body).toMatchObject({
      state: 'UP',
      consecutiveFailures: 0,
      autoFailover: false,
      rule: { failures: 3, windowSeconds: 120, timeoutSeconds: 5 },
      lastProbe: { ok: true, inRecovery: false, writable: true },
    });
    expect(body.history).toHaveLength(1);
    // Checked twice in one minute (the checks, then the health figures): probed once
    await runAlertChecks(api.runtime.controlPlane, mailer);
    expect((await health()).history).toHaveLength(1);
    expect((await healthFigures(api.runtime.controlPlane)).primaryUp).toBe(true);
    // Viewers may look; nobody unauthenticated
    expect((await api.call('GET', '/api/dr/health/primary', undefined, { token: null })).status).toBe(401);
  });

  it('opens nothing for a primary down for one probe (a restart)', async () => {
    await pg.halt();
    expect((await minute()).opened).toEqual([]);
    const failing = await health();
    expect(failing).toMatchObject({ state: 'FAILING', consecutiveFailures: 1 });
    expect(failing.lastProbe.error).toMatch(/ECONNREFUSED|connect/);
    await pg.resume();
    expect((await minute()).opened).toEqual([]);
    expect(await health()).toMatchObject({ state: 'UP', consecutiveFailures: 0 });
    expect(sent).toEqual([]);
  });

  it('counts a read-only primary as failing (it cannot take writes)', async () => {
    await pg.sql('postgres', 'ALTER SYSTEM SET default_transaction_read_only = on');
    await pg.sql('postgres', 'SELECT pg_reload_conf()');
    await minute();
    expect(await health()).toMatchObject({ state: 'FAILING', lastProbe: { ok: false, error: 'read-only' } });
    await pg.sql('postgres', 'ALTER SYSTEM RESET default_transaction_read_only');
    await pg.sql('postgres', 'SELECT pg_reload_conf()');
    await minute();
    expect((await health()).state).toBe('UP');
  });

  it('declares it down after three failed probes over two minutes: one alert, nothing done, then its recovery', async () => {
    await pg.halt();
    expect((await minute()).opened).toEqual([]);
    expect((await minute()).opened).toEqual([]);
    expect((await minute()).opened).toEqual(['primary-down']);
    expect(await health()).toMatchObject({ state: 'DOWN', consecutiveFailures: 3 });
    expect((await healthFigures(api.runtime.controlPlane)).primaryUp).toBe(false);
    expect((await minute()).opened).toEqual([]); // one email per episode
    expect(sent).toHaveLength(1);
    const [alert] = sent;
    expect(alert!.subject).toBe('[DR] The primary database is down');
    expect(alert!.text).toMatch(/autoFailover is off: nothing was done/);
    expect(alert!.text).not.toContain(pg.password);
    expect(JSON.stringify(await health())).not.toContain(pg.password);
    await pg.resume();
    expect((await minute()).recovered).toEqual(['primary-down']);
    expect(sent.at(-1)!.subject).toMatch(/Recovered/);
    const body = await health();
    expect(body.state).toBe('UP');
    expect(body.history.length).toBeGreaterThan(8);
    expect(body.history[0].at > body.history[1].at).toBe(true);
  });
});
