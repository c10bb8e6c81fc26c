import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';

/**
 * Stored secrets are bound to where they go: a target or database setting that is pointed elsewhere without
 * its secrets given again is refused, and a listener on the new destination receives nothing.
 */
let api: TestApi;
let listener: Server;
let port: number;
const received: string[] = [];

beforeAll(async () => {
  api = await startTestApi();
  // A would-be FTP server that records whatever a client sends it
  listener = createServer((socket) => {
    socket.write('220 ready\r\n');
    socket.on('data', (data) => {
      received.push(data.toString('utf8'));
      socket.write('331 go on\r\n');
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  port = (listener.address() as { port: number }).port;
});
afterAll(async () => {
  listener?.close();
  await api?.close();
});

const ftp = (config: Record<string, unknown>) => ({
  name: 'offsite ftp',
  targetType: 'FTP',
  config: { host: 'ftp.example.com', username: 'backup', path: '/backups', tls: 'required', ...config },
});

describe('secrets bound to their destination', () => {
  it('refuses to move an FTP target to another host or port without its password, and audits the move', async () => {
    const created = await api.call('POST', '/api/dr/targets', ftp({ password: 'stored-ftp-secret' }));
    expect(created.status).toBe(201);
    const id = created.body.id as string;

    for (const change of [
      { host: '127.0.0.1', port },
      { port: 2121 },
      { username: 'other' },
      { tls: 'off' },
    ]) {
      const moved = await api.call('PUT', `/api/dr/targets/${id}`, ftp(change));
      expect(moved.status, JSON.stringify(change)).toBe(400);
      expect(fieldsOf(moved)).toEqual(['config.password']);
      expect(moved.body.error.details[0].message).toContain('must be given again');
    }
    // Nothing was saved, so a check still goes to the old destination: the listener got nothing
    expect((await api.call('GET', `/api/dr/targets/${id}`)).body.config.host).toBe('ftp.example.com');
    await api.call('POST', `/api/dr/targets/${id}/check`);
    expect(received.join('')).not.toContain('stored-ftp-secret');

    // A rename keeps the secret; restating it moves the target, and the audit names the new destination
    expect((await api.call('PUT', `/api/dr/targets/${id}`, { ...ftp({}), name: 'renamed' })).status).toBe(
      200,
    );
    const restated = await api.call(
      'PUT',
      `/api/dr/targets/${id}`,
      ftp({ host: '127.0.0.1', port, tls: 'off', password: 'new-ftp-secret' }),
    );
    expect(restated.status, restated.text).toBe(200);
    const audit = (await api.call('GET', '/api/dr/audit?limit=1')).body.items[0];
    expect(audit).toMatchObject({
      action: 'target.update',
      details: { destinationChanged: { host: '127.0.0.1', port, tls: 'off' }, secretsChanged: ['password'] },
    });
    expect(JSON.stringify(audit)).not.toContain('ftp-secret');
    await api.call('POST', `/api/dr/targets/${id}/check`);
    expect(received.join('')).not.toContain('stored-ftp-secret');
  });

  it('refuses to point an Azure or S3 target at another endpoint without its keys', async () => {
    const azure = await api.call('POST', '/api/dr/targets', {
      name: 'azure',
      targetType: 'AZURE',
      config: { accountName: 'eventbackups', accountKey: 'c2VjcmV0LWtleQ==', containerName: 'backups' },
    });
    expect(azure.status, azure.text).toBe(201);
    const moved = await api.call('PUT', `/api/dr/targets/${azure.body.id}`, {
      name: 'azure',
      targetType: 'AZURE',
      config: { accountName: 'eventbackups', containerName: 'backups', endpoint: `http://127.0.0.1:${port}` },
    });
    expect(moved.status).toBe(400);
    expect(fieldsOf(moved)).toEqual(['config.accountKey']);

    const s3 = await api.call('POST', '/api/dr/targets', {
      name: 's3',
      targetType: 'S3',
      config: {
        bucket: 'event-backups',
        region: 'eu-west-1',
        accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
        secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
      },
    });
    expect(s3.status, s3.text).toBe(201);
    const otherBucket = await api.call('PUT', `/api/dr/targets/${s3.body.id}`, {
      name: 's3',
      targetType: 'S3',
      config: { bucket: 'attacker-bucket', region: 'eu-west-1', accessKeyId: 'AKIAIOSFODNN7EXAMPLE' },
    });
    expect(otherBucket.status).toBe(400);
    expect(fieldsOf(otherBucket)).toEqual(['config.secretAccessKey']);
  });

  it("refuses to point the config's database elsewhere without its password", async () => {
    const created = await api.call('POST', '/api/dr/config', {
      source: { database: { url: 'postgres://events:db-secret@db.internal:5432/event_manager' } },
    });
    expect(created.status).toBe(201);
    for (const url of [
      `postgres://events@127.0.0.1:${port}/event_manager`,
      'postgres://events@db.internal:6543/event_manager',
      'postgres://postgres@db.internal:5432/event_manager',
      'postgres://events@db.internal:5432/other',
    ]) {
      const moved = await api.call('POST', '/api/dr/config', { source: { database: { url } } });
      expect(moved.status, url).toBe(400);
      expect(fieldsOf(moved)).toEqual(['source.database.password']);
    }
    const patched = await api.call('PATCH', '/api/dr/config', {
      source: { database: { url: `postgres://events@127.0.0.1:${port}/event_manager` } },
    });
    expect(patched.status).toBe(400);
    // The same server written another way keeps the password
    const same = await api.call('POST', '/api/dr/config', {
      source: { database: { host: 'DB.internal', database: 'event_manager', username: 'events' } },
    });
    expect(same.status, same.text).toBe(200);
    expect(same.body.source.database.passwordSet).toBe(true);
    const restated = await api.call('POST', '/api/dr/config', {
      source: {
        database: { url: 'postgres://events@db2.internal/event_manager', password: 'new-db-secret' },
      },
    });
    expect(restated.status).toBe(200);
    const audit = (await api.call('GET', '/api/dr/audit?limit=1')).body.items[0];
    expect(audit.details).toMatchObject({
      destinationChanged: ['source.database'],
      secretsChanged: ['source.database.password'],
    });
  });
});
