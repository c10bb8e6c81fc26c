import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { mkdtemp } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { freePort } from '../support/ports.ts';

/**
 * Server-side request forgery: where a token holder may point a target, and what the answers give away.
 * Real listeners on loopback play the remote side.
 */
const MARKER = 'REMOTE-BODY-7f3a';
let strict: TestApi;
let api: TestApi;
let listening: (HttpServer | Server)[] = [];

async function listen<T extends HttpServer | Server>(server: T): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  listening.push(server);
  return (server.address() as { port: number }).port;
}

beforeAll(async () => {
  [strict, api] = await Promise.all([startTestApi({ egress: {} }), startTestApi()]);
});
afterAll(async () => {
  for (const server of listening) server.close();
  listening = [];
  await Promise.all([strict?.close(), api?.close()]);
});

/** An Azure target whose endpoint is `endpoint` (the storage emulator's well-known account). */
const azure = (endpoint: string, id: string) => ({
  id,
  name: 'azure',
  targetType: 'AZURE',
  config: {
    accountName: 'devstoreaccount1',
    accountKey: 'c2VjcmV0LWtleQ==',
    containerName: 'backups',
    endpoint,
  },
});

const s3 = (endpoint: string, id?: string) => ({
  ...(id ? { id } : {}),
  name: 'minio',
  targetType: 'S3',
  config: {
    bucket: 'event-backups',
    region: 'us-east-1',
    endpoint,
    forcePathStyle: true,
    accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
    secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
  },
});

describe('target endpoints', () => {
  it('refuses the metadata service, link-local, loopback and private addresses by default', async () => {
    for (const [endpoint, reason] of [
      ['http://169.254.169.254/', 'instance-metadata'],
      ['http://[::ffff:169.254.169.254]/', 'instance-metadata'],
      ['http://169.254.170.2/', 'instance-metadata'],
      ['http://metadata.google.internal/', 'instance-metadata'],
      ['http://169.254.10.1/', 'link-local'],
      ['http://127.0.0.1:9000/', 'loopback'],
      ['http://localhost:9000/', 'loopback'],
      ['http://[::1]:9000/', 'loopback'],
      ['http://10.1.2.3/', 'private'],
      ['http://192.168.1.20:9000/', 'private'],
      ['http://[fd12::1]/', 'private'],
    ] as const) {
      const response = await strict.call('POST', '/api/dr/targets', s3(endpoint));
      expect(response.status, endpoint).toBe(400);
      expect(fieldsOf(response)).toEqual(['config.endpoint']);
      expect(response.body.error.details[0].message).toContain(reason);
    }
    expect((await strict.call('POST', '/api/dr/targets', s3('https://s3.example.com/'))).status).toBe(201);
  });

  it('allows private addresses when the operator says so, never the metadata service', async () => {
    const open = await startTestApi({ egress: { allowPrivate: true } });
    try {
      expect((await open.call('POST', '/api/dr/targets', s3('http://10.1.2.3:9000/'))).status).toBe(201);
      expect((await open.call('POST', '/api/dr/targets', s3('http://127.0.0.1:9000/'))).status).toBe(201);
      const metadata = await open.call('POST', '/api/dr/targets', s3('http://169.254.169.254/'));
      expect(metadata.status).toBe(400);
    } finally {
      await open.close();
    }
  });

  it('answers a check with a kind and a short reason, never the remote error body', async () => {
    const port = await listen(
      createHttpServer((_request, response) => {
        response.writeHead(403, { 'content-type': 'application/xml' });
        response.end(
          `<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>${MARKER} internal host db-7.corp</Message></Error>`,
        );
      }),
    );
    const created = await api.call(
      'POST',
      '/api/dr/targets',
      s3(`http://127.0.0.1:${port}/`, 's3-remote-body'),
    );
    expect(created.status, created.text).toBe(201);
    const check = await api.call('POST', '/api/dr/targets/s3-remote-body/check');
    expect(check.status).toBe(200);
    expect(check.body.ok).toBe(false);
    expect(['permission', 'authentication']).toContain(check.body.error.kind);
    expect(check.text).not.toContain(MARKER);
    expect(check.text).not.toContain('corp');
  });

  it('says the same of a closed port and of one that hangs up, so ports cannot be probed', async () => {
    const closed = await freePort();
    const hangUp = await listen(createServer((socket) => socket.destroy()));
    const messages: string[] = [];
    for (const [id, port] of [
      ['probe-closed', closed],
      ['probe-hang-up', hangUp],
    ] as const) {
      expect((await api.call('POST', '/api/dr/targets', s3(`http://127.0.0.1:${port}/`, id))).status).toBe(
        201,
      );
      const check = await api.call('POST', `/api/dr/targets/${id}/check`);
      expect(check.body, check.text).toMatchObject({ ok: false, error: { kind: 'network' } });
      messages.push(check.body.error.message.replace(/^[^:]*127\.0\.0\.1:\d+[^:]*: /, ''));
      expect(check.text).not.toMatch(/ECONNREFUSED|hang up|ECONNRESET/);
    }
    expect(messages[0]).toBe(messages[1]);
  });

  it('answers ok: false (network) within its deadline when an Azure endpoint never answers', async () => {
    const silent = await listen(createServer(() => undefined));
    const created = await api.call(
      'POST',
      '/api/dr/targets',
      azure(`http://127.0.0.1:${silent}/devstoreaccount1`, 'azure-silent'),
    );
    expect(created.status, created.text).toBe(201);
    const started = Date.now();
    const [check, usage] = await Promise.all([
      api.call('POST', '/api/dr/targets/azure-silent/check'),
      api.call('GET', '/api/dr/targets/azure-silent/usage'),
    ]);
    expect(check.status).toBe(200);
    expect(check.body).toMatchObject({ ok: false, error: { kind: 'network' } });
    expect(usage.status).toBe(200);
    expect(usage.body).toMatchObject({ ok: false, error: { kind: 'network' } });
    expect(Date.now() - started).toBeLessThan(29_000);
  });

  it('follows no redirect to another host: S3, Azure and GCS endpoints that answer 307 elsewhere', async () => {
    // The second server is where a redirect would carry the signed request (another port of this machine)
    const reached: string[] = [];
    const elsewhere = await listen(
      createServer((socket) => {
        reached.push('connection');
        socket.destroy();
      }),
    );
    const redirecting = await listen(
      createHttpServer((request, response) => {
        response.writeHead(307, { location: `http://127.0.0.1:${elsewhere}${request.url ?? '/'}` });
        response.end();
      }),
    );
    const endpoint = `http://127.0.0.1:${redirecting}`;
    const targets = [
      s3(`${endpoint}/`, 'redirect-s3'),
      azure(`${endpoint}/devstoreaccount1`, 'redirect-azure'),
      {
        id: 'redirect-gcs',
        name: 'gcs',
        targetType: 'GCP',
        config: { projectId: 'event-manager', bucket: 'event-backups', endpoint },
      },
    ];
    for (const target of targets) {
      const created = await api.call('POST', '/api/dr/targets', target);
      expect(created.status, created.text).toBe(201);
      const check = await api.call('POST', `/api/dr/targets/${target.id}/check`);
      expect(check.status).toBe(200);
      expect(check.body.ok, `${target.id}: ${check.text}`).toBe(false);
      const usage = await api.call('GET', `/api/dr/targets/${target.id}/usage`);
      expect(usage.status).toBe(200);
      expect(reached, target.id).toEqual([]);
    }
  });
});

describe('names checked when connecting, not only when saved (DNS rebinding)', () => {
  it('refuses a name that resolved to a public address when saved and to this machine when used', async () => {
    // A resolver whose answer changes, as a rebinding attacker's DNS server's does
    let answer = '93.184.216.34';
    const resolve = async () => [{ address: answer, family: 4 }];
    const rebinding = await startTestApi({ egress: { resolve } });
    const reached: string[] = [];
    const capture = await listen(
      createServer((socket) => {
        reached.push('connection');
        socket.end('220 ready\r\n');
      }),
    );
    try {
      const s3Target = await rebinding.call(
        'POST',
        '/api/dr/targets',
        s3(`http://storage.rebind.example:${capture}/`, 'rebind-s3'),
      );
      expect(s3Target.status, s3Target.text).toBe(201);
      const ftpTarget = await rebinding.call('POST', '/api/dr/targets', {
        id: 'rebind-ftp',
        name: 'ftp',
        targetType: 'FTP',
        config: {
          host: 'ftp.rebind.example',
          port: capture,
          username: 'backup',
          password: 'ftp-secret-1',
          path: '/backups',
          tls: 'off',
        },
      });
      expect(ftpTarget.status, ftpTarget.text).toBe(201);
      answer = '127.0.0.1';
      for (const id of ['rebind-s3', 'rebind-ftp']) {
        const check = await rebinding.call('POST', `/api/dr/targets/${id}/check`);
        expect(check.status).toBe(200);
        expect(check.body, check.text).toMatchObject({ ok: false, error: { kind: 'egress' } });
        expect(check.body.error.message).toContain('resolves to 127.0.0.1');
      }
      // A scheduled backup (the worker opens the targets itself) is refused the same way
      expect(
        (
          await rebinding.call('POST', '/api/dr/config', {
            source: { files: { type: 'directory', path: await mkdtemp(join(tmpdir(), 'dr-rebind-')) } },
          })
        ).status,
      ).toBeLessThan(300);
      expect(
        (
          await rebinding.call('POST', '/api/dr/schedules', {
            id: 'rebind-full',
            name: 'full',
            scheduleType: 'FULL',
            cronExpression: '0 2 * * *',
            targets: ['rebind-s3', 'rebind-ftp'],
          })
        ).status,
      ).toBe(201);
      const started = await rebinding.call('POST', '/api/dr/schedules/rebind-full/execute');
      expect(started.status).toBe(202);
      await rebinding.runtime.idle();
      const run = (await rebinding.call('GET', `/api/dr/backups/${started.body.id}`)).body;
      expect(run.status).toBe('FAILED');
      expect(run.targets.map((result: { error?: { kind: string } }) => result.error?.kind)).toEqual([
        'egress',
        'egress',
      ]);
      expect(reached).toEqual([]);
      // Saved now, the same names are refused at once
      const again = await rebinding.call(
        'POST',
        '/api/dr/targets',
        s3(`http://storage.rebind.example:${capture}/`),
      );
      expect(again.status).toBe(400);
    } finally {
      await rebinding.close();
    }
  });

  it('refuses FTP and SFTP hosts on this machine or the metadata address when saved', async () => {
    for (const [targetType, host] of [
      ['FTP', '127.0.0.1'],
      ['SFTP', 'localhost'],
      ['FTP', '169.254.169.254'],
      ['SFTP', '10.0.0.8'],
    ] as const) {
      const response = await strict.call('POST', '/api/dr/targets', {
        name: 'remote',
        targetType,
        config: {
          host,
          username: 'backup',
          password: 'remote-secret-1',
          path: '/backups',
          ...(targetType === 'SFTP' ? { hostKeyFingerprint: 'SHA256:' + 'A'.repeat(43) } : { tls: 'off' }),
        },
      });
      expect(response.status, `${targetType} ${host}`).toBe(400);
      expect(fieldsOf(response)).toEqual(['config.host']);
    }
  });
});
