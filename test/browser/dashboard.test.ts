import { AxeBuilder } from '@axe-core/playwright';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDashboard } from '../../dashboard/build.ts';
import { createEventManager } from '../support/event-manager.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * The dashboard in a real browser (Debian's chromium, headless), over the local runtime and a throwaway
 * PostgreSQL, as an operator uses it: sign in, configure, back up and watch, restore, test, read the metrics.
 * Screenshots of every page go to test-results/dashboard/ (CI keeps them as artifacts); every page is checked
 * with axe for serious or critical accessibility violations.
 */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = join(process.cwd(), 'test-results', 'dashboard');
const HOUR = 3_600_000;

let pg: TestPostgres;
let api: TestApi;
let browser: Browser;
let page: Page;
// The runtime's clock: real time, moved on by the test to let the restore point grow old
let shift = 0;

beforeAll(async () => {
  if (!existsSync(CHROMIUM))
    throw new Error(
      `no chromium at ${CHROMIUM}: apt-get install chromium (.ci/run does), or set CHROMIUM_PATH`,
    );
  await mkdir(SHOTS, { recursive: true });
  pg = await startPostgres();
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  // Enough rows that a backup runs for a few seconds, long enough to watch
  await pg.sql(
    'app',
    'CREATE TABLE bulk (id bigint PRIMARY KEY, body text NOT NULL); INSERT INTO bulk SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 3) FROM generate_series(1, 1200000) g',
  );
  api = await startTestApi({
    dashboard: await buildDashboard(),
    progressMs: 100,
    now: () => new Date(Date.now() + shift),
  });
  const config = await api.call('POST', '/api/dr/config', {
    rpo: 1,
    rto: 4,
    source: { database: { url: pg.url('app') } },
    environments: { STAGING: { database: { url: pg.url('postgres') } } },
  });
  expect(config.status).toBe(201);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  page = await (await browser.newContext({ viewport: { width: 1400, height: 1000 } })).newPage();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await Promise.all([api?.close(), pg?.stop()]);
});

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function accessible(): Promise<void> {
  const results = await new AxeBuilder({ page }).analyze();
  const serious = results.violations.filter(
    (violation) => violation.impact === 'serious' || violation.impact === 'critical',
  );
  expect(
    serious.map((violation) => `${violation.id}: ${violation.nodes.map((node) => node.target).join(' ')}`),
  ).toEqual([]);
}

async function open(hash: string, heading: string): Promise<void> {
  await page.goto(`${api.runtime.url}/${hash}`);
  await page.getByRole('heading', { level: 1, name: heading }).waitFor();
}

describe('the DR Management dashboard', () => {
  it('serves the page and its files with security headers, and refuses a wrong token', async () => {
    const response = await fetch(`${api.runtime.url}/`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect(response.headers.get('x-frame-options')).toBe('DENY');
    // Also at /dashboard/, its files and settings relative to it; nothing else outside /api is served
    for (const path of ['/dashboard', '/dashboard/', '/dashboard/app.js', '/dashboard/config.json'])
      expect((await fetch(`${api.runtime.url}${path}`)).status, path).toBe(200);
    expect(await (await fetch(`${api.runtime.url}/dashboard/config.json`)).json()).toEqual({
      apiBase: '',
      auth: { kind: 'token' },
    });
    for (const path of [
      '/../../etc/passwd',
      '/dashboard/../index.html.bak',
      '/secret.key',
      '/dashboardx/app.js',
    ])
      expect((await fetch(`${api.runtime.url}${path}`)).headers.get('content-type'), path).toMatch(/json/);
    await page.goto(`${api.runtime.url}/`);
    await page.getByLabel('API token').fill('not-the-token-at-all-0123456789');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.getByRole('alert').textContent()).toMatch(/token|authenticat|401/i);
    await shot('sign-in');
    await accessible();
    await page.getByLabel('API token').fill(api.runtime.token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
    // The token is kept for the tab (sessionStorage), never in localStorage or a cookie
    expect(await page.evaluate(() => localStorage.length)).toBe(0);
    expect((await page.context().cookies()).length).toBe(0);
  });

  it('configures a target (with its live check) and a schedule (with its next runs)', async () => {
    const backups = await mkdtemp(join(tmpdir(), 'dr-dashboard-'));
    await open('#/configuration', 'Configuration');
    // The source: its URL without the password, which is write-only; saving without one keeps it (the
    // backups below sign in with it)
    const source = page.getByRole('form', { name: 'Source database' });
    await expect
      .poll(() => source.getByLabel(/^URL/).inputValue())
      .toMatch(/^postgres:\/\/postgres@127\.0\.0\.1:\d+\/app$/);
    await source.getByLabel(/Password \(set/).waitFor();
    await source.getByRole('button', { name: 'Save source' }).click();
    await source.getByText('Source saved.').waitFor();
    expect(await page.content()).not.toContain(pg.password);
    const targetForm = page.getByRole('form', { name: 'Add a target' });
    await targetForm.getByLabel('Name').fill('Local disk');
    await targetForm.getByLabel(/Settings/).fill(JSON.stringify({ path: join(backups, 'repo') }));
    await targetForm.getByRole('button', { name: 'Add target' }).click();
    await page.getByRole('button', { name: 'Check Local disk' }).waitFor();
    await page.getByRole('button', { name: 'Check Local disk' }).click();
    await expect
      .poll(() => page.locator('[data-testid^="check-"]').first().textContent())
      .toMatch(/reachable/);

    // A bad cron is refused with the API's reason, naming the field
    const scheduleForm = page.getByRole('form', { name: 'Add a schedule' });
    await scheduleForm.getByLabel('Name').fill('Nightly full');
    await scheduleForm.getByLabel(/Cron/).fill('not a cron');
    await scheduleForm.getByLabel('Local disk').check();
    await scheduleForm.getByRole('button', { name: 'Add schedule' }).click();
    await expect.poll(() => scheduleForm.getByRole('alert').textContent()).toMatch(/cronExpression/);
    await scheduleForm.getByLabel(/Cron/).fill('0 2 * * *');
    await scheduleForm.getByRole('button', { name: 'Add schedule' }).click();
    const row = page.getByTestId('schedules').getByRole('row', { name: /Nightly full/ });
    await row.waitFor();
    expect(await row.locator('li').count()).toBe(3);
    await shot('configuration');
    await accessible();
  });

  it('runs a backup and shows its progress until it ends, twice (the second with a share done and time left)', async () => {
    for (const run of [1, 2]) {
      await open('#/configuration', 'Configuration');
      await page.getByRole('button', { name: 'Run Nightly full now' }).click();
      const started = await page
        .getByRole('status')
        .filter({ hasText: 'Backup' })
        .locator('code')
        .textContent();
      await open('#/overview', 'Overview');
      const running = page.getByTestId(`running-${started}`);
      await running.getByTestId('progress').waitFor({ timeout: 30_000 });
      const seen: string[] = [];
      for (;;) {
        const text = await running
          .getByTestId('progress')
          .textContent({ timeout: 1000 })
          .catch(() => null);
        if (text === null) break;
        seen.push(text);
        if (run === 2 && seen.length === 1) await shot('overview-running');
        await page.waitForTimeout(150);
      }
      expect(seen.length).toBeGreaterThan(0);
      expect(seen.at(-1)).toMatch(/MB/);
      expect(seen.at(-1)).toMatch(/\/s/);
      if (run === 2) expect(seen.some((text) => /% \)?|left/.test(text))).toBe(true);
      const status = await api.call('GET', `/api/dr/backups?limit=1`);
      expect(status.body.items[0]).toMatchObject({ id: started, status: 'SUCCESS' });
    }
  });

  it('shows the backup in the catalog and in the metrics charts', async () => {
    await open('#/backups', 'Backups');
    const rows = page.getByTestId('catalog').locator('tbody tr');
    await expect.poll(() => rows.count()).toBe(2);
    await expect.poll(() => rows.first().textContent()).toMatch(/SUCCESS.*Local disk/);
    await page.getByRole('button', { name: 'Download' }).first().click();
    await page.getByTestId('download-links').getByRole('link').first().waitFor();
    await shot('backups');
    await accessible();

    await open('#/metrics', 'Metrics');
    await page.getByTestId('chart-success').locator('canvas').waitFor();
    await page.getByTestId('chart-success').getByText('Data').click();
    const today = new Date(Date.now() + shift).toISOString().slice(0, 10);
    await expect
      .poll(() =>
        page
          .getByTestId('chart-success')
          .getByRole('row', { name: new RegExp(today) })
          .textContent(),
      )
      .toMatch(/2\s*2\s*0\s*100\.0%/);
    await expect.poll(() => page.getByTestId('key-figures').textContent()).toMatch(/100\.0%/);
    // Targets by name, not id
    await expect
      .poll(() => page.getByTestId('chart-storage').locator('th').allTextContents())
      .toContain('Local disk');
    await shot('metrics');
    await accessible();
  });

  it('runs a restore: a dry run first, then the restore the plan names', async () => {
    await open('#/backups', 'Backups');
    await page.getByRole('button', { name: 'Restore this' }).first().click();
    await page.getByRole('heading', { level: 1, name: 'Restores and DR tests' }).waitFor();
    const form = page.getByRole('form', { name: 'Restore a backup' });
    expect(await form.getByLabel('Backup id').inputValue()).toMatch(/^\d{8}T/);
    await form.getByLabel(/Database \(empty/).fill('restored_app');
    await form.getByRole('button', { name: 'Dry run' }).click();
    await form.getByTestId('restore-plan').getByText('PLANNED').waitFor({ timeout: 30_000 });
    await form.getByRole('button', { name: 'Restore into restored_app' }).click();
    const id = await form.getByRole('status').locator('code').textContent();
    await page
      .getByTestId(`restore-${id}`)
      .getByText('SUCCEEDED', { exact: true })
      .first()
      .waitFor({ timeout: 60_000 });
    await page
      .getByTestId(`restore-${id}`)
      .getByText(/Workflow: \d+ steps/)
      .click();
    expect(await page.getByTestId(`restore-${id}`).locator('ol.steps li').count()).toBeGreaterThan(2);
    const rows = await pg.sql('restored_app', 'SELECT count(*)::int AS n FROM bulk');
    expect(rows.rows[0].n).toBe(1_200_000);
  });

  it('runs a RESTORE_TEST and follows it to its result', async () => {
    await open('#/runs', 'Restores and DR tests');
    const form = page.getByRole('form', { name: 'Run a DR test' });
    await form.getByLabel('Test').selectOption('RESTORE_TEST');
    await form.getByRole('button', { name: 'Start test' }).click();
    const id = await form.getByRole('status').locator('code').textContent();
    await page
      .getByTestId(`test-${id}`)
      .getByText('PASSED', { exact: true })
      .first()
      .waitFor({ timeout: 90_000 });
    await expect.poll(() => page.getByTestId(`test-${id}`).textContent()).toMatch(/RTO \d/);
    await shot('runs');
    await accessible();
  });

  it('draws an RPO violation once the newest restore point is older than a lowered objective', async () => {
    // Half an hour on: within the RPO of 1 h, outside one of 15 minutes
    shift = HOUR / 2;
    await open('#/overview', 'Overview');
    await expect.poll(() => page.getByTestId('rpo-now').textContent()).toMatch(/MET.*objective 1 h/);
    await open('#/configuration', 'Configuration');
    await page.getByLabel(/^rpo/).fill('0.25');
    await page.getByRole('button', { name: 'Save configuration' }).click();
    await page.getByText('Saved.').waitFor();
    await open('#/overview', 'Overview');
    await expect.poll(() => page.getByTestId('rpo-now').textContent()).toMatch(/VIOLATED.*objective 0.25 h/);
    await expect.poll(() => page.getByTestId('rto-now').textContent()).toMatch(/MET/);
    await expect.poll(() => page.getByRole('row', { name: /Nightly full/ }).count()).toBe(1);
    // The primary watch's state (probed by the alert checks that follow every backup)
    await expect
      .poll(() => page.getByTestId('primary-now').textContent())
      .toMatch(/UP.*last probe.*ms.*autoFailover off/);
    await shot('overview');
    await accessible();
    await open('#/metrics', 'Metrics');
    await expect.poll(() => page.getByTestId('key-figures').textContent()).toMatch(/RPO [1-9]/);
    await page.getByTestId('chart-rpo').getByText('Data').click();
    await expect
      .poll(() => page.getByTestId('chart-rpo').textContent())
      .toMatch(/RPO \(0.25 h\).*RPO violation/);
    await shot('metrics-rpo-violation');
  });

  it('shows the audit log with its chain verified', async () => {
    await open('#/audit', 'Audit log');
    await expect.poll(() => page.getByTestId('audit-chain').textContent()).toMatch(/OK/);
    await expect.poll(() => page.locator('tbody tr').count()).toBeGreaterThan(3);
    await shot('audit');
    await accessible();
  });
});
