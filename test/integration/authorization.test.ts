import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tableChecksums } from '../support/event-manager.ts';
import { deployWithOneBackup } from '../support/deployment.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * Roles through the local runtime's HTTP API, as a deployment's callers meet them: a viewer reads, an
 * operator runs things, only an admin changes targets or restores into PRODUCTION or over existing data (and
 * then only naming the database in `confirm`). Every refusal is in the audit log.
 */
const VIEWER = 'v'.repeat(43);
const OPERATOR = 'o'.repeat(43);
let api: TestApi;
let pg: TestPostgres;
let backupId: string;

beforeAll(async () => {
  pg = await startPostgres();
  api = await startTestApi({
    roleTokens: [
      { token: VIEWER, role: 'viewer' },
      { token: OPERATOR, role: 'operator' },
    ],
  });
  backupId = await deployWithOneBackup(api, pg);
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});

const as = (token: string) => ({ token });

async function refusals(): Promise<{ action: string; resource: string }[]> {
  const log = await api.call('GET', '/api/dr/audit?limit=100');
  return log.body.items.filter((entry: { action: string }) => entry.action.endsWith('.refused'));
}

describe('roles', () => {
  it('lets a viewer read, and refuses it anything that runs or changes, with 403', async () => {
    expect((await api.call('GET', '/api/dr/config', undefined, as(VIEWER))).status).toBe(200);
    expect((await api.call('GET', '/api/dr/backups', undefined, as(VIEWER))).status).toBe(200);
    const run = await api.call('POST', '/api/dr/schedules/nightly/execute', undefined, as(VIEWER));
    expect(run.status).toBe(403);
    expect(run.body.error).toMatchObject({
      code: 'Forbidden',
      message: 'POST /api/dr/schedules/nightly/execute needs the operator role; this caller is a viewer',
    });
    // A download is the whole database: operators only
    const download = await api.call('GET', `/api/dr/backups/${backupId}/download`, undefined, as(VIEWER));
    expect(download.status).toBe(403);
    expect(await refusals()).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          action: 'authz.refused',
          resource: 'POST /api/dr/schedules/nightly/execute',
          actor: expect.objectContaining({ principal: 'local-viewer', role: 'viewer' }),
        }),
      ]),
    );
  });

  it('lets an operator run backups and restores into STAGING, but not change targets or the config', async () => {
    const run = await api.call('POST', '/api/dr/schedules/nightly/execute', undefined, as(OPERATOR));
    expect(run.status).toBe(202);
    await api.runtime.idle();
    const staging = await api.call(
      'POST',
      '/api/dr/restore',
      { backupId, destination: { environment: 'STAGING', database: 'by_operator' } },
      as(OPERATOR),
    );
    expect(staging.status, staging.text).toBe(202);
    await api.runtime.idle();
    expect((await api.call('GET', `/api/dr/restore/${staging.body.restoreId}`)).body.status).toBe(
      'SUCCEEDED',
    );
    const target = await api.call(
      'POST',
      '/api/dr/targets',
      { id: 'elsewhere', targetType: 'LOCAL', config: { path: '/tmp/elsewhere' } },
      as(OPERATOR),
    );
    expect(target.status).toBe(403);
    expect((await api.call('PATCH', '/api/dr/config', { rpo: 2 }, as(OPERATOR))).status).toBe(403);
  });

  it('refuses an operator a restore into PRODUCTION or with overwrite, and audits it', async () => {
    for (const body of [
      { backupId, destination: { environment: 'PRODUCTION', database: 'prod_copy' }, confirm: 'prod_copy' },
      {
        backupId,
        destination: { environment: 'STAGING', database: 'by_operator' },
        overwrite: true,
        confirm: 'by_operator',
      },
    ]) {
      const refused = await api.call('POST', '/api/dr/restore', body, as(OPERATOR));
      expect(refused.status).toBe(403);
      expect(refused.body.error.message).toMatch(/needs the admin role; this caller is a operator$/);
    }
    // A dry run touches nothing: an operator may plan a PRODUCTION restore
    const plan = await api.call(
      'POST',
      '/api/dr/restore',
      { backupId, destination: { environment: 'PRODUCTION' }, dryRun: true },
      as(OPERATOR),
    );
    expect(plan.status, plan.text).toBe(202);
    expect((await refusals()).filter((entry) => entry.action === 'restore.refused')).toHaveLength(2);
  });

  it('lets an admin restore into PRODUCTION only naming the database it writes into', async () => {
    const missing = await api.call('POST', '/api/dr/restore', {
      backupId,
      destination: { environment: 'PRODUCTION', database: 'prod_copy' },
    });
    expect(missing.status).toBe(400);
    expect(missing.body.error.details).toEqual([
      {
        field: 'confirm',
        message:
          'a restore into PRODUCTION writes into "prod_copy" on PRODUCTION: give confirm: "prod_copy" to go ahead',
      },
    ]);
    // Without a database named, the environment's own: the production database itself
    const own = await api.call('POST', '/api/dr/restore', {
      backupId,
      destination: { environment: 'PRODUCTION' },
      overwrite: true,
      confirm: 'prod_copy',
    });
    expect(own.status).toBe(400);
    expect(own.body.error.details[0].message).toContain('give confirm: "app"');
    const sums = await tableChecksums(pg, 'app');
    const done = await api.call('POST', '/api/dr/restore', {
      backupId,
      destination: { environment: 'PRODUCTION', database: 'prod_copy' },
      confirm: 'prod_copy',
    });
    expect(done.status, done.text).toBe(202);
    await api.runtime.idle();
    expect((await api.call('GET', `/api/dr/restore/${done.body.restoreId}`)).body.status).toBe('SUCCEEDED');
    expect(await tableChecksums(pg, 'prod_copy')).toEqual(sums);
  });
});
