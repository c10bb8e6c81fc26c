import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { seedConfig, seedConfigApiReference, seedEncryption } from '../support/seed-examples.ts';

let api: TestApi;
beforeAll(async () => {
  api = await startTestApi();
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

  it('fills the seed defaults for fields left out (API reference example)', async () => {
    const response = await api.call('POST', '/api/dr/config', seedConfigApiReference);
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({
      rto: 4,
      rpo: 1,
      backupRetentionDays: 30,
      testFrequencyDays: 90,
      autoFailover: false,
      notificationEmails: [],
    });
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
