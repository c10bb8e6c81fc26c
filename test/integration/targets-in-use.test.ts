import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTarget } from '../../functions/storage/targets.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';
import { startS3, type TestS3 } from '../support/s3-server.ts';
import { startSftp, type TestSftp } from '../support/sftp-server.ts';
import { startFtp, type TestFtp } from '../support/ftp-server.ts';
import { startGcs, type TestGcs } from '../support/gcs-server.ts';

const exec = promisify(execFile);

/** Remote targets as operators use them: checked through the API, and as drctl repositories. */
let api: TestApi;
let s3: TestS3;
let pg: TestPostgres;
let sftp: TestSftp;
let ftp: TestFtp;
let gcs: TestGcs;
beforeAll(async () => {
  [api, s3, pg, sftp, ftp, gcs] = await Promise.all([
    startTestApi(),
    startS3('backups'),
    startPostgres(),
    startSftp(),
    startFtp(),
    startGcs(['dr-backups']),
  ]);
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
});
afterAll(async () => {
  await Promise.all([api?.close(), s3?.stop(), pg?.stop(), sftp?.stop(), ftp?.stop(), gcs?.stop()]);
});

const s3Target = () => ({
  name: 'S3 (moto)',
  targetType: 'S3',
  config: {
    bucket: 'backups',
    region: 'us-east-1',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    ...s3.credentials,
  },
});

const sftpTarget = (hostKeyFingerprint?: string) => ({
  name: 'SFTP (OpenSSH)',
  targetType: 'SFTP',
  config: {
    host: sftp.host,
    port: sftp.port,
    username: sftp.username,
    privateKey: sftp.privateKey,
    passphrase: sftp.passphrase,
    path: `${sftp.directory}/api`,
    ...(hostKeyFingerprint ? { hostKeyFingerprint } : {}),
  },
});

describe('POST /api/dr/targets/{id}/check', () => {
  it('checks a GCS target, and reports a missing bucket as not found', async () => {
    const target = (bucket: string) => ({
      name: `GCS ${bucket}`,
      targetType: 'GCP',
      config: { projectId: 'dr-test-project', bucket, prefix: 'api', endpoint: gcs.endpoint },
    });
    const created = await api.call('POST', '/api/dr/targets', target('dr-backups'));
    expect(created.status).toBe(201);
    expect((await api.call('POST', `/api/dr/targets/${created.body.id}/check`)).body).toMatchObject({
      ok: true,
    });
    const missing = await api.call('POST', '/api/dr/targets', target('no-such-bucket'));
    const check = await api.call('POST', `/api/dr/targets/${missing.body.id}/check`);
    expect(check.body).toMatchObject({ ok: false, error: { kind: 'not-found' } });
  });

  it('checks an FTP target, warning when the server makes the password travel in clear', async () => {
    const created = await api.call('POST', '/api/dr/targets', {
      name: 'FTP without TLS',
      targetType: 'FTP',
      config: {
        host: ftp.host,
        port: ftp.port,
        username: ftp.username,
        password: ftp.password,
        path: '/api',
      },
    });
    expect(created.status).toBe(201);
    const check = await api.call('POST', `/api/dr/targets/${created.body.id}/check`);
    expect(check.body).toMatchObject({ ok: true });
    expect(check.body.warnings[0]).toContain('travel in clear');
    expect(check.text).not.toContain(ftp.password);
  });

  it('refuses an SFTP server until its host key is pinned, showing the key to pin', async () => {
    const created = await api.call('POST', '/api/dr/targets', sftpTarget());
    expect(created.status).toBe(201);
    expect(created.body.warnings[0]).toContain('hostKeyFingerprint');
    const refused = await api.call('POST', `/api/dr/targets/${created.body.id}/check`);
    expect(refused.body).toMatchObject({ ok: false, error: { kind: 'authentication' } });
    expect(refused.body.error.message).toContain(sftp.hostKeyFingerprint);

    const pinned = await api.call('PUT', `/api/dr/targets/${created.body.id}`, {
      ...sftpTarget(sftp.hostKeyFingerprint),
      version: created.body.version,
    });
    expect(pinned.status).toBe(200);
    const check = await api.call('POST', `/api/dr/targets/${created.body.id}/check`);
    expect(check.body).toMatchObject({ ok: true });
    expect(check.text).not.toContain(sftp.passphrase);
  });
  it('probes an S3 target with its stored credentials and reports latency', async () => {
    const created = await api.call('POST', '/api/dr/targets', s3Target());
    expect(created.status).toBe(201);
    const check = await api.call('POST', `/api/dr/targets/${created.body.id}/check`);
    expect(check.status).toBe(200);
    expect(check.body).toMatchObject({ id: created.body.id, targetType: 'S3', ok: true });
    // The whole round trip, at least its three steps (each rounded to the millisecond)
    const {
      write,
      read,
      delete: removed,
    } = check.body.steps as {
      write: number;
      read: number;
      delete: number;
    };
    expect(check.body.latencyMs).toBeGreaterThanOrEqual(write + read + removed - 3);
    expect(Object.keys(check.body.steps)).toEqual(['write', 'read', 'delete']);
    expect(check.text).not.toContain(s3.credentials.secretAccessKey);
  });

  it('answers ok: false with a classified reason when the target does not work', async () => {
    const file = join(await mkdtemp(join(tmpdir(), 'dr-check-')), 'a-file');
    await writeFile(file, 'not a directory');
    const local = await api.call('POST', '/api/dr/targets', {
      name: 'broken',
      targetType: 'LOCAL',
      config: { path: `${file}/repo` },
    });
    const broken = await api.call('POST', `/api/dr/targets/${local.body.id}/check`);
    expect(broken.status).toBe(200);
    expect(broken.body).toMatchObject({ ok: false, error: { kind: 'other' } });
    expect(broken.body.error.message).toContain('ENOTDIR');

    expect((await api.call('POST', '/api/dr/targets/no-such-target/check')).status).toBe(404);
  });
});

describe('GET /api/dr/targets/{id}/usage', () => {
  it('measures bytes stored, and free capacity where the protocol tells (SFTP statvfs)', async () => {
    const created = await api.call('POST', '/api/dr/targets', {
      ...sftpTarget(sftp.hostKeyFingerprint),
      name: 'SFTP usage',
      config: { ...sftpTarget(sftp.hostKeyFingerprint).config, path: `${sftp.directory}/usage` },
    });
    const storage = await openTarget(
      { targetType: 'SFTP', config: { ...created.body.config } },
      { privateKey: sftp.privateKey, passphrase: sftp.passphrase },
    );
    await storage.put('data/one', Buffer.alloc(1234));
    await storage.put('data/two', Buffer.alloc(766));
    await storage.close?.();
    const usage = await api.call('GET', `/api/dr/targets/${created.body.id}/usage`);
    expect(usage.status).toBe(200);
    expect(usage.body).toMatchObject({ ok: true, targetType: 'SFTP', bytesStored: 2000 });
    expect(usage.body.bytesFree).toBeGreaterThan(0);
    expect(Date.parse(usage.body.measuredAt)).not.toBeNaN();
  });

  it('answers ok: false with the reason when the target cannot be read', async () => {
    const created = await api.call('POST', '/api/dr/targets', sftpTarget(sftp.otherFingerprint));
    const usage = await api.call('GET', `/api/dr/targets/${created.body.id}/usage`);
    expect(usage.body).toMatchObject({ ok: false, error: { kind: 'authentication' } });
    expect((await api.call('GET', '/api/dr/targets/missing/usage')).status).toBe(404);
  });
});

describe('drctl --target', () => {
  it('keeps a repository on S3: init, backup, verify, restore', async () => {
    const work = await mkdtemp(join(tmpdir(), 'dr-cli-target-'));
    const target = join(work, 's3.json');
    await writeFile(
      target,
      JSON.stringify({ ...s3Target(), config: { ...s3Target().config, prefix: 'cli-repo' } }),
      { mode: 0o600 },
    );
    const env = { ...process.env, DR_MASTER_KEY: 'ab'.repeat(32), DR_TARGET: target };
    const drctl = (...args: string[]) => exec(process.execPath, ['functions/cli/drctl.ts', ...args], { env });
    expect((await drctl('init')).stdout).toContain('created repository');
    expect((await drctl('backup', '--db', pg.url('app'))).stdout).toContain('(FULL) done');
    expect((await drctl('verify', 'latest')).stdout).toContain('is intact');
    await pg.createDatabase('from_cli_s3');
    const restored = await drctl('restore', 'latest', '--db', pg.url('from_cli_s3'));
    expect(restored.stdout).toContain('every table matches its recorded checksum');
    expect(await tableChecksums(pg, 'from_cli_s3')).toEqual(await tableChecksums(pg, 'app'));
    const both = await drctl('list', '--repo', work).catch(
      (error: { code: number; stderr: string }) => error,
    );
    expect(both).toMatchObject({ code: 2 });
    expect((both as { stderr: string }).stderr).toContain('not both');
  });

  it('keeps a repository on SFTP, and exits when done (the SSH connection is closed)', async () => {
    const work = await mkdtemp(join(tmpdir(), 'dr-cli-sftp-'));
    const target = join(work, 'sftp.json');
    const keyFile = join(work, 'id_ed25519');
    await writeFile(keyFile, sftp.privateKey, { mode: 0o600 });
    // The key as a path on this machine, as an operator's target file may give it.
    const spec = sftpTarget(sftp.hostKeyFingerprint);
    await writeFile(target, JSON.stringify({ ...spec, config: { ...spec.config, privateKey: keyFile } }), {
      mode: 0o600,
    });
    const env = { ...process.env, DR_MASTER_KEY: 'cd'.repeat(32), DR_TARGET: target };
    const drctl = (...args: string[]) =>
      exec(process.execPath, ['functions/cli/drctl.ts', ...args], { env, timeout: 60_000 });
    expect((await drctl('init')).stdout).toContain('created repository');
    expect((await drctl('backup', '--db', pg.url('app'))).stdout).toContain('(FULL) done');
    expect((await drctl('verify', 'latest')).stdout).toContain('is intact');
  });
});
