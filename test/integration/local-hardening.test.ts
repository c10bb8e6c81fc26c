import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../functions/core/log.ts';
import { startLocalRuntime } from '../../functions/local/runtime.ts';
import { fieldsOf, startTestApi } from '../support/local-api.ts';

/** The local runtime as an attacker on the same machine or in the logs would meet it. */
describe('local runtime hardening', () => {
  it('makes an existing data directory its user’s alone on every start', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'dr-loose-'));
    await mkdir(join(dataDir, 'secrets'));
    await writeFile(join(dataDir, 'secrets', 'old.json'), '{}');
    await writeFile(join(dataDir, 'master.key'), `${'ab'.repeat(32)}\n`);
    await chmod(join(dataDir, 'secrets', 'old.json'), 0o644);
    await chmod(join(dataDir, 'master.key'), 0o644);
    await chmod(join(dataDir, 'secrets'), 0o755);
    await chmod(dataDir, 0o755);
    const api = await startTestApi({ dataDir });
    try {
      const mode = async (path: string) => (await stat(path)).mode & 0o777;
      expect(await mode(dataDir)).toBe(0o700);
      expect(await mode(join(dataDir, 'secrets'))).toBe(0o700);
      expect(await mode(join(dataDir, 'secrets', 'old.json'))).toBe(0o600);
      expect(await mode(join(dataDir, 'master.key'))).toBe(0o600);
      expect(await mode(join(dataDir, 'api-token'))).toBe(0o600);
    } finally {
      await api.close();
    }
  });

  it('refuses an API token shorter than 32 characters, saying why', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'dr-weak-'));
    await expect(
      startLocalRuntime({ dataDir, port: 0, logger: silentLogger, token: 'a', dispatchIntervalMs: 0 }),
    ).rejects.toThrow('DR_API_TOKEN is 1 characters: it must be at least 32');
  });

  it('refuses an operator or viewer token that is short or the same as the admin token', async () => {
    const token = 'a'.repeat(40);
    for (const roleTokens of [
      [{ token: 'short', role: 'viewer' as const }],
      [{ token, role: 'operator' as const }],
    ]) {
      const dataDir = await mkdtemp(join(tmpdir(), 'dr-role-token-'));
      await expect(
        startLocalRuntime({
          dataDir,
          port: 0,
          logger: silentLogger,
          token,
          roleTokens,
          dispatchIntervalMs: 0,
        }),
      ).rejects.toThrow(/must be at least 32 characters and differ from DR_API_TOKEN/);
    }
  });

  it('prints where the generated token is, never the token', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'dr-print-'));
    const child = spawn(process.execPath, ['functions/local/main.ts'], {
      env: { ...process.env, DR_DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'error' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (data: Buffer) => (output += data.toString()));
    child.stderr.on('data', (data: Buffer) => (output += data.toString()));
    try {
      for (let tries = 0; tries < 300 && !output.includes('curl'); tries++)
        await new Promise((resolve) => setTimeout(resolve, 50));
      expect(output).toContain(`API token: generated on first start into ${join(dataDir, 'api-token')}`);
      const token = (await readFile(join(dataDir, 'api-token'), 'utf8')).trim();
      expect(token.length).toBeGreaterThanOrEqual(32);
      expect(output).not.toContain(token);
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  });

  it('refuses names with control or bidirectional-override characters', async () => {
    const api = await startTestApi();
    try {
      for (const name of ['backups\u202Egpj.exe', 'a\u2066b', 'line\nbreak', 'tab\tname']) {
        const response = await api.call('POST', '/api/dr/targets', {
          name,
          targetType: 'LOCAL',
          config: { path: '/var/backups/x' },
        });
        expect(response.status, JSON.stringify(name)).toBe(400);
        expect(fieldsOf(response)).toEqual(['name']);
      }
      const fine = await api.call('POST', '/api/dr/targets', {
        name: 'Sauvegardes – Zürich 東京',
        targetType: 'LOCAL',
        config: { path: '/var/backups/x' },
      });
      expect(fine.status).toBe(201);
    } finally {
      await api.close();
    }
  });
});
