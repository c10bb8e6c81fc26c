import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { seedConfig, seedConfigApiReference, seedEncryption } from '../support/seed-examples.ts';

let api: TestApi;
/** A files source under the test runtime's files root (the temporary directory). */
let uploads: string;
beforeAll(async () => {
  api = await startTestApi();
  uploads = await mkdtemp(join(tmpdir(), 'dr-uploads-'));
});
afterAll(async () => {
  await api.close();
});

describe('POST /api/dr/config', () => {
  it('answers 404 with a hint before any config exists', async () => {
    const response = await api.call('GET', '/api/dr/config');
    expect(response.status).toBe(404);
    expect(response.body.error.message).toContain('POST /api/dr/config');
  });

  it('accepts the seed guide example as written and returns it with an ETag', async () => {
    const created = await api.call('POST', '/api/dr/config', seedConfig);
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ ...seedConfig, version: 1 });
    expect(created.headers.get('etag')).toBe('"1"');

    const read = await api.call('GET', '/api/dr/config');
    expect(read.status).toBe(200);
    expect(read.body).toMatchObject(seedConfig);
  });

  it('fills the seed defaults for settings left out (API reference example), keeping the stored emails', async () => {
    const response = await api.call('POST', '/api/dr/config', { ...seedConfigApiReference, rto: 8 });
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({
      rto: 8,
      rpo: 1,
      backupRetentionDays: 30,
      testFrequencyDays: 90,
      autoFailover: false,
      notificationEmails: ['admin@example.com'],
    });
    const back = await api.call('POST', '/api/dr/config', seedConfigApiReference);
    expect(back.body.rto).toBe(4);
  });

  it('accepts the encryption example of the best practices', async () => {
    const response = await api.call('POST', '/api/dr/config', seedEncryption);
    expect(response.status).toBe(200);
    expect(response.body.encryption).toEqual({ algorithm: 'AES-256', keyRotation: 90 });
  });

  it.each([
    ['rto', 0.5, 72, 0.49, 72.01],
    ['rpo', 0.25, 24, 0.24, 24.01],
    ['backupRetentionDays', 7, 365, 6, 366],
    ['testFrequencyDays', 30, 365, 29, 366],
  ])('%s: %s and %s accepted, %s and %s refused naming the field', async (field, low, high, below, above) => {
    for (const value of [low, high]) {
      const response = await api.call('POST', '/api/dr/config', { [field]: value });
      expect(response.status, `${field}=${value}`).toBe(200);
      expect(response.body[field]).toBe(value);
    }
    for (const value of [below, above]) {
      const response = await api.call('POST', '/api/dr/config', { [field]: value });
      expect(response.status, `${field}=${value}`).toBe(400);
      expect(response.body.error.code).toBe('ValidationError');
      expect(fieldsOf(response)).toEqual([field]);
    }
  });

  it.each([
    ['backupRetentionDays', 30.5],
    ['testFrequencyDays', 90.5],
    ['rto', '4'],
    ['autoFailover', 'yes'],
  ])('refuses %s = %j (wrong type or not whole)', async (field, value) => {
    const response = await api.call('POST', '/api/dr/config', { [field]: value });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toEqual([field]);
  });

  it('validates each notification email and names the bad one', async () => {
    const response = await api.call('POST', '/api/dr/config', {
      notificationEmails: ['ops@example.com', 'not-an-address'],
    });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toEqual(['notificationEmails[1]']);
  });

  it('refuses unknown fields by name (typos fail instead of being ignored)', async () => {
    const response = await api.call('POST', '/api/dr/config', { rto: 4, rp0: 1 });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toEqual(['rp0']);
  });

  it('keeps the database password out of the config: from the URL or the password field', async () => {
    const response = await api.call('POST', '/api/dr/config', {
      source: {
        database: { url: 'postgres://events:s3cr%40t-pass@db.internal:5432/event_manager?sslmode=require' },
        rds: { instanceIdentifier: 'event-manager-prod', region: 'eu-west-1' },
        files: { type: 's3', bucket: 'event-manager-uploads', prefix: 'uploads/' },
      },
    });
    expect(response.status).toBe(200);
    expect(response.body.source.database).toEqual({
      url: 'postgres://events@db.internal:5432/event_manager?sslmode=require',
      passwordSet: true,
    });
    expect(response.text).not.toContain('s3cr');

    // Replacing without a password keeps it; null removes it.
    const kept = await api.call('POST', '/api/dr/config', {
      source: { database: { host: 'db.internal', database: 'event_manager', username: 'events' } },
    });
    expect(kept.body.source.database.passwordSet).toBe(true);
    const removed = await api.call('POST', '/api/dr/config', {
      source: {
        database: { host: 'db.internal', database: 'event_manager', username: 'events', password: null },
      },
    });
    expect(removed.body.source.database.passwordSet).toBe(false);
  });

  it('keeps the STAGING environment password in the secret store too, apart from the source one', async () => {
    const both = await api.call('POST', '/api/dr/config', {
      source: { database: { url: 'postgres://events:prod-secret@db.internal/event_manager' } },
      environments: {
        STAGING: { database: { url: 'postgres://events:staging-secret@staging.internal/postgres' } },
      },
    });
    expect(both.status).toBe(200);
    expect(both.body.environments.STAGING.database).toEqual({
      url: 'postgres://events@staging.internal/postgres',
      passwordSet: true,
    });
    expect(both.text).not.toMatch(/prod-secret|staging-secret/);
    // Dropping STAGING's password keeps the source's; the audit names what changed, not the values.
    const changed = await api.call('POST', '/api/dr/config', {
      source: { database: { url: 'postgres://events@db.internal/event_manager' } },
      environments: {
        STAGING: { database: { url: 'postgres://events@staging.internal/postgres', password: null } },
      },
    });
    expect(changed.body.source.database.passwordSet).toBe(true);
    expect(changed.body.environments.STAGING.database.passwordSet).toBe(false);
    const audit = await api.call('GET', '/api/dr/audit?limit=1');
    expect(audit.body.items[0].details.secretsChanged).toEqual(['environments.STAGING.database.password']);
    const bad = await api.call('POST', '/api/dr/config', {
      environments: { STAGING: { database: { host: 'x' } } },
    });
    expect(fieldsOf(bad)).toEqual(['environments.STAGING.database']);
    const unknown = await api.call('POST', '/api/dr/config', { environments: { QA: {} } });
    expect(unknown.status).toBe(400);
  });

  it.each([
    [{ database: { host: 'db' } }, 'source.database'],
    [{ database: { url: 'mysql://db/x' } }, 'source.database.url'],
    [{ database: { url: 'postgres://db/x', host: 'db', database: 'x' } }, 'source.database'],
    [{ rds: { region: 'us-east-1' } }, 'source.rds'],
    [{ rds: { instanceIdentifier: 'a', clusterIdentifier: 'b' } }, 'source.rds'],
    [{ files: { type: 'directory', path: 'relative/dir' } }, 'source.files.path'],
    [{ files: { type: 'directory', path: '/srv/../etc' } }, 'source.files.path'],
    [{ files: { type: 'nfs', path: '/srv' } }, 'source.files.type'],
  ])('refuses source %j naming %s', async (source, field) => {
    const response = await api.call('POST', '/api/dr/config', { source });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toContain(field);
  });

  it("keeps the source, environments and emails a short POST leaves out (the guide's body), and removes them on null", async () => {
    const full = await api.call('POST', '/api/dr/config', {
      ...seedConfig,
      source: {
        database: { url: 'postgres://events:kept-secret@db.internal/event_manager' },
        files: { type: 'directory', path: uploads },
      },
      environments: {
        STAGING: { database: { url: 'postgres://events:st-secret@staging.internal/postgres' } },
      },
    });
    expect(full.status).toBe(200);
    const short = await api.call('POST', '/api/dr/config', { rto: 2, rpo: 0.5, backupRetentionDays: 14 });
    expect(short.status).toBe(200);
    expect(short.body).toMatchObject({
      rto: 2,
      notificationEmails: ['admin@example.com'],
      source: {
        database: { url: 'postgres://events@db.internal/event_manager', passwordSet: true },
        files: { type: 'directory', path: uploads },
      },
      environments: { STAGING: { database: { passwordSet: true } } },
    });
    const removed = await api.call('POST', '/api/dr/config', {
      environments: null,
      notificationEmails: null,
    });
    expect(removed.status).toBe(200);
    expect(removed.body.environments).toBeUndefined();
    expect(removed.body.notificationEmails).toEqual([]);
    expect(removed.body.source.database.passwordSet).toBe(true);
    const noSource = await api.call('POST', '/api/dr/config', { source: null });
    expect(noSource.body.source).toBeUndefined();
  });

  it('PATCH applies a JSON merge patch: members given change, null removes, the rest and the passwords stay', async () => {
    await api.call('POST', '/api/dr/config', {
      ...seedConfig,
      source: {
        database: { url: 'postgres://events:patch-secret@db.internal/event_manager' },
        rds: { instanceIdentifier: 'event-manager-prod', region: 'eu-west-1' },
      },
    });
    const before = await api.call('GET', '/api/dr/config');
    const patched = await api.call(
      'PATCH',
      '/api/dr/config',
      { rpo: 0.5, source: { rds: null, files: { type: 'directory', path: uploads } } },
      { headers: { 'content-type': 'application/merge-patch+json' } },
    );
    expect(patched.status, patched.text).toBe(200);
    expect(patched.body).toMatchObject({
      rto: 4,
      rpo: 0.5,
      notificationEmails: ['admin@example.com'],
      source: {
        database: { url: 'postgres://events@db.internal/event_manager', passwordSet: true },
        files: { type: 'directory', path: uploads },
      },
      version: before.body.version + 1,
    });
    expect(patched.body.source.rds).toBeUndefined();
    expect(patched.headers.get('etag')).toBe(`"${before.body.version + 1}"`);
    // Validated as a whole once applied, naming the field
    const bad = await api.call('PATCH', '/api/dr/config', { rpo: 99, source: { rdss: {} } });
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad).sort()).toEqual(['rpo', 'source.rdss']);
    // Stale If-Match: 409
    const stale = await api.call('PATCH', '/api/dr/config', { rto: 5 }, { headers: { 'if-match': '"1"' } });
    expect(stale.status).toBe(409);
    expect((await api.call('PATCH', '/api/dr/config', [1, 2])).status).toBe(400);
    // null removes a whole part too, even one a replace keeps when it is omitted (it was kept: a bug)
    const removed = await api.call('PATCH', '/api/dr/config', { source: null, notificationEmails: null });
    expect(removed.status, removed.text).toBe(200);
    expect(removed.body.source).toBeUndefined();
    expect(removed.body.notificationEmails).toEqual([]);
  });

  it('refuses a stale version with 409 (optimistic concurrency)', async () => {
    const current = await api.call('GET', '/api/dr/config');
    const stale = current.body.version - 1;
    const viaHeader = await api.call('POST', '/api/dr/config', seedConfig, {
      headers: { 'if-match': `"${stale}"` },
    });
    expect(viaHeader.status).toBe(409);
    const viaBody = await api.call('POST', '/api/dr/config', { ...seedConfig, version: stale });
    expect(viaBody.status).toBe(409);
    const fresh = await api.call('POST', '/api/dr/config', seedConfig, {
      headers: { 'if-match': `"${current.body.version}"` },
    });
    expect(fresh.status).toBe(200);
    expect(fresh.body.version).toBe(current.body.version + 1);
  });
});
