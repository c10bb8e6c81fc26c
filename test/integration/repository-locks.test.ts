import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { RepositoryLockedError } from '../../functions/engine/errors.ts';
import { gc, listBackups, verify } from '../../functions/engine/maintenance.ts';
import { newRepository } from '../support/engine.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * gc and backups in separate processes on one repository, with a delay injected into gc (strace makes its
 * read of a manifest wait) or a backup frozen (SIGSTOP) past the stale limit. Whatever the interleaving,
 * every backup that reports success verifies.
 */
const run = promisify(execFile);
let pg: TestPostgres;

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('small');
  await pg.sql('small', 'CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)');
  await pg.createDatabase('big');
  await pg.sql(
    'big',
    `CREATE TABLE bulk (id int PRIMARY KEY, body text); INSERT INTO bulk SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 4) FROM generate_series(1, 150000) g;`,
  );
});
afterAll(async () => {
  await pg?.stop();
});

async function repositoryWithKey() {
  const created = await newRepository();
  const keyFile = join(created.dir, 'master.key');
  await writeFile(keyFile, Buffer.alloc(32, 1).toString('hex'));
  return { ...created, keyFile };
}

function drctl(
  args: string[],
  prefix: string[] = [],
): { child: ChildProcess; done: Promise<{ code: number; stderr: string; stdout: string }> } {
  const command = [...prefix, process.execPath, 'functions/cli/drctl.ts', ...args];
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (data: Buffer) => (stdout += data.toString()));
  child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
  const done = new Promise<{ code: number; stderr: string; stdout: string }>((resolve) =>
    child.once('close', (code) => resolve({ code: code ?? -1, stderr, stdout })),
  );
  return { child, done };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('gc and backups racing on one repository', () => {
  it('a backup that starts while gc runs waits for it, and its data survives', async () => {
    const { dir, repository, keyFile } = await repositoryWithKey();
    // A backup for gc to read (its manifest is where the delay is injected)
    const first = (await backup(repository, { type: 'FULL', source: { database: pg.connection('small') } }))
      .manifest;
    const repo = ['--repo', dir, '--key-file', keyFile];
    // gc waits 6 s when it opens that manifest: without a lock of its own, a backup that ran meanwhile had its
    // packs taken for dead (the packs are listed after the manifests are read)
    const gcRun = drctl(
      ['gc', ...repo],
      [
        'strace',
        '-qq',
        '-f',
        '-o',
        '/dev/null',
        '-P',
        join(dir, 'backups', first.id),
        '-e',
        'trace=openat',
        '-e',
        'inject=openat:delay_enter=6000000',
      ],
    );
    await sleep(1500);
    const backupRun = drctl(['backup', ...repo, '--db', pg.url('big'), '--pack-size', '65536']);
    const [gcResult, backupResult] = await Promise.all([gcRun.done, backupRun.done]);
    // Assess: gc ran; the backup either waited for it or made gc back off; either way it verifies
    expect(backupResult.code, backupResult.stderr).toBe(0);
    const backups = await listBackups(repository);
    expect(backups.map((summary) => summary.id)).toContain(first.id);
    expect(backups).toHaveLength(2);
    for (const summary of backups) expect((await verify(repository, summary.id)).problems).toEqual([]);
    const verified = await run(process.execPath, ['functions/cli/drctl.ts', 'verify', 'latest', ...repo]);
    expect(verified.stdout).toContain('is intact');
    expect(await readdir(join(dir, 'locks'))).toEqual([]);
    expect([0, 1]).toContain(gcResult.code);
    if (gcResult.code === 1) expect(gcResult.stderr).toContain('the repository is in use');
    else expect(backupResult.stderr).toMatch(/waiting for gc \(exclusive\)/);
  });

  it('a backup frozen past the stale limit keeps its lock: gc refuses, and the backup completes intact', async () => {
    const { dir, repository, keyFile } = await repositoryWithKey();
    const repo = ['--repo', dir, '--key-file', keyFile];
    const backupRun = drctl(['backup', ...repo, '--db', pg.url('big'), '--pack-size', '65536']);
    // Freeze it once it has stored a few packs
    for (let tries = 0; tries < 3000; tries++) {
      const packs = await readdir(join(dir, 'data'), { recursive: true }).catch(() => []);
      if (packs.filter((name) => String(name).length > 60).length >= 3) break;
      await sleep(10);
    }
    process.kill(backupRun.child.pid!, 'SIGSTOP');
    try {
      // gc in another process, with a stale limit of 0 (as if the backup had run for hours)
      const gcResult = await drctl(['gc', ...repo, '--stale-lock-minutes', '0']).done;
      expect(gcResult.code).toBe(1);
      expect(gcResult.stderr).toMatch(/the repository is in use \(backup \S+ \(shared\)/);
      // In this process too
      await expect(gc(repository, { staleLockMs: 0 })).rejects.toBeInstanceOf(RepositoryLockedError);
    } finally {
      process.kill(backupRun.child.pid!, 'SIGCONT');
    }
    const backupResult = await backupRun.done;
    expect(backupResult.code, backupResult.stderr).toBe(0);
    const [only] = await listBackups(repository);
    expect((await verify(repository, only!.id)).problems).toEqual([]);
    // And gc afterwards keeps every pack the backup uses
    const report = await gc(repository);
    expect(report.deletedPacks).toBe(0);
    expect((await verify(repository, only!.id)).ok).toBe(true);
  });
});
