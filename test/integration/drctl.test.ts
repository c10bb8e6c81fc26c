import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeTree, makeFilesTree } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

const exec = promisify(execFile);

/** drctl as an operator runs it: a separate process, only the repository path and the key. */
async function drctl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, ['functions/cli/drctl.ts', ...args], {
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr };
  }
}

let pg: TestPostgres;
let work: string;
let repo: string;
let key: string;
beforeAll(async () => {
  pg = await startPostgres();
  await pg.createDatabase('app');
  await createEventManager(pg, 'app');
  work = await mkdtemp(join(tmpdir(), 'dr-cli-'));
  repo = join(work, 'repo');
  key = join(work, 'master.key');
});
afterAll(async () => {
  await pg?.stop();
});

describe('drctl', () => {
  it("checks a --target file with the API's rules for its type, naming the field", async () => {
    const misspelt = join(work, 'target-misspelt.json');
    await writeFile(
      misspelt,
      JSON.stringify({
        targetType: 'SFTP',
        config: { host: 'backup.example.com', usename: 'x', path: '/b' },
      }),
    );
    const refused = await drctl('list', '--target', misspelt, '--key-file', key);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/config\.(usename|username)/);
    const unknown = join(work, 'target-unknown.json');
    await writeFile(unknown, JSON.stringify({ targetType: 'DROPBOX', config: {} }));
    const type = await drctl('list', '--target', unknown, '--key-file', key);
    expect(type.code).not.toBe(0);
    expect(type.stderr).toContain('unknown target type DROPBOX (LOCAL, S3, AZURE, GCP, FTP, SFTP)');
  });

  it('answers --help through npx, for the tool and each command', async () => {
    const { stdout } = await exec('npx', ['drctl', '--help']);
    for (const command of ['init', 'backup', 'list', 'verify', 'restore', 'export', 'gc', 'rekey'])
      expect(stdout).toContain(command);
    const restoreHelp = await drctl('restore', '--help');
    expect(restoreHelp.stdout).toContain('--clean');
    expect(restoreHelp.stdout).toContain('--table <name>');
  });

  it('backs up, lists, verifies, restores and exports with only the repository and the key', async () => {
    const generated = await drctl('key', 'generate');
    expect(generated.stdout.trim()).toMatch(/^[0-9a-f]{64}$/);
    await writeFile(key, generated.stdout, { mode: 0o600 });
    expect((await drctl('init', '--repo', repo, '--key-file', key)).code).toBe(0);

    const files = await makeFilesTree();
    const made = await drctl(
      'backup',
      '--repo',
      repo,
      '--key-file',
      key,
      '--db',
      pg.url('app'),
      '--files',
      files,
    );
    expect(made.code).toBe(0);
    expect(made.stdout).toMatch(/^backup \S+ \(FULL\) done in/);

    const list = JSON.parse((await drctl('list', '--repo', repo, '--key-file', key, '--json')).stdout);
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ type: 'FULL', tables: 6, files: 4 });

    const verified = await drctl('verify', 'latest', '--repo', repo, '--key-file', key);
    expect(verified.code).toBe(0);
    expect(verified.stdout).toContain('is intact');

    await pg.createDatabase('from_cli');
    const destination = join(work, 'files-restored');
    const restored = await drctl(
      'restore',
      'latest',
      '--repo',
      repo,
      '--key-file',
      key,
      '--db',
      pg.url('from_cli'),
      '--files-to',
      destination,
    );
    expect(restored.code).toBe(0);
    expect(restored.stdout).toContain('every table matches its recorded checksum');
    expect(await tableChecksums(pg, 'from_cli')).toEqual(await tableChecksums(pg, 'app'));
    expect(await describeTree(destination)).toEqual(await describeTree(files));

    const again = await drctl(
      'restore',
      'latest',
      '--repo',
      repo,
      '--key-file',
      key,
      '--db',
      pg.url('from_cli'),
    );
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('not empty');

    const sql = join(work, 'backup.sql');
    expect((await drctl('export', list[0].id, '--repo', repo, '--key-file', key, '--sql', sql)).code).toBe(0);
    expect(await readFile(sql, 'utf8')).toContain('COPY "public"."users"');
    const archive = join(work, 'backup.dump');
    expect(
      (await drctl('export', list[0].id, '--repo', repo, '--key-file', key, '--archive', archive)).code,
    ).toBe(0);
    const listing = await promisify(execFile)('pg_restore', ['--list', archive]);
    expect(listing.stdout).toMatch(/ TABLE DATA public users /);

    const gc = await drctl('gc', '--repo', repo, '--key-file', key, '--dry-run');
    expect(gc.stdout).toContain('would delete 0 packs');
  });

  it('exits 4 on a wrong key, 3 on damage, and re-keys', async () => {
    const other = join(work, 'other.key');
    await writeFile(other, (await drctl('key', 'generate')).stdout);
    const wrong = await drctl('list', '--repo', repo, '--key-file', other);
    expect(wrong.code).toBe(4);
    expect(wrong.stderr).toContain('does not open the repository');

    const rekeyed = await drctl('rekey', '--repo', repo, '--key-file', key, '--new-key-file', other);
    expect(rekeyed.code).toBe(0);
    expect((await drctl('list', '--repo', repo, '--key-file', other)).code).toBe(0);
    expect((await drctl('list', '--repo', repo, '--key-file', key)).code).toBe(4);

    const packs = (await readdir(join(repo, 'data'), { recursive: true, withFileTypes: true })).filter(
      (entry) => entry.isFile(),
    );
    const victim = join(packs[0]!.parentPath, packs[0]!.name);
    const body = await readFile(victim);
    body[50] = body[50]! ^ 0xff;
    await writeFile(victim, body);
    const damaged = await drctl('verify', 'latest', '--repo', repo, '--key-file', other);
    expect(damaged.code).toBe(3);
    expect(damaged.stdout).toContain('DAMAGED');
    expect(damaged.stdout).toContain(packs[0]!.name);
  });

  it('never takes a SCHEMA backup for latest; restoring one says it is structure only and holds no files', async () => {
    const dir = join(work, 'schema-repo');
    const repoArgs = ['--repo', dir, '--key-file', key];
    expect((await drctl('init', ...repoArgs)).code).toBe(0);
    const files = await makeFilesTree();
    expect((await drctl('backup', ...repoArgs, '--db', pg.url('app'))).code).toBe(0);
    const schema = await drctl(
      'backup',
      ...repoArgs,
      ...['--db', pg.url('app'), '--files', files, '--type', 'SCHEMA', '--json'],
    );
    expect(schema.code, schema.stderr).toBe(0);
    const made = JSON.parse(schema.stdout) as { id: string; files: number; notice: string };
    expect(made.files).toBe(0);
    expect(made.notice).toContain('structure only: the files were not backed up');

    // latest = the FULL, with its rows
    await pg.createDatabase('from_latest');
    const latest = await drctl(
      'restore',
      'latest',
      '--repo',
      dir,
      '--key-file',
      key,
      '--db',
      pg.url('from_latest'),
    );
    expect(latest.code, latest.stderr).toBe(0);
    expect(latest.stdout).not.toContain(made.id);
    expect(await tableChecksums(pg, 'from_latest')).toEqual(await tableChecksums(pg, 'app'));
    expect((await drctl('verify', 'latest', '--repo', dir, '--key-file', key)).stdout).not.toContain(made.id);

    // By id: the structure, and it says so
    await pg.createDatabase('from_schema');
    const structure = await drctl(
      'restore',
      made.id,
      '--repo',
      dir,
      '--key-file',
      key,
      '--db',
      pg.url('from_schema'),
    );
    expect(structure.code, structure.stderr).toBe(0);
    expect(structure.stdout).toContain('structure only');
    expect((await pg.sql('from_schema', 'SELECT count(*)::int AS n FROM users')).rows[0].n).toBe(0);
  });

  it('exits 5 when a FULL shrank, keeps it out of latest, and takes it once confirmed', async () => {
    const dir = join(work, 'shrink-repo');
    await pg.sql('postgres', 'CREATE DATABASE shrink_cli TEMPLATE app');
    const repoArgs = ['--repo', dir, '--key-file', key];
    expect((await drctl('init', ...repoArgs)).code).toBe(0);
    const first = await drctl('backup', ...repoArgs, '--db', pg.url('shrink_cli'), '--json');
    expect(first.code, first.stderr).toBe(0);
    await pg.sql('shrink_cli', 'DELETE FROM tickets; DELETE FROM registrations; DELETE FROM audit_log');
    const shrunk = await drctl('backup', ...repoArgs, '--db', pg.url('shrink_cli'));
    expect(shrunk.code).toBe(5);
    expect(shrunk.stdout).toContain('FLAGGED FOR REVIEW');
    const id = /backup (\S+) \(FULL\)/.exec(shrunk.stdout)![1]!;
    expect(shrunk.stdout).toContain(`drctl confirm ${id}`);
    const verified = await drctl('verify', 'latest', ...repoArgs);
    expect(verified.stdout).toContain(`backup ${(JSON.parse(first.stdout) as { id: string }).id} is intact`);

    const confirmed = await drctl('confirm', id, ...repoArgs);
    expect(confirmed.code, confirmed.stderr).toBe(0);
    expect((await drctl('verify', 'latest', ...repoArgs)).stdout).toContain(`backup ${id} is intact`);
    expect((await drctl('list', ...repoArgs)).stdout).not.toContain('REVIEW');
  });

  it('lists and verifies past an unreadable manifest, naming it', async () => {
    const dir = join(work, 'damaged-manifest-repo');
    expect((await drctl('init', '--repo', dir, '--key-file', key)).code).toBe(0);
    for (let i = 0; i < 2; i++)
      expect((await drctl('backup', '--repo', dir, '--key-file', key, '--db', pg.url('app'))).code).toBe(0);
    const [older, newer] = (await readdir(join(dir, 'backups'))).sort();
    // The newest manifest is damaged
    const victim = join(dir, 'backups', newer!);
    const body = await readFile(victim);
    body[20] = body[20]! ^ 0xff;
    await writeFile(victim, body);

    const listed = await drctl('list', '--repo', dir, '--key-file', key);
    expect(listed.code).toBe(3);
    expect(listed.stdout).toContain(older);
    expect(listed.stderr).toContain(`skipped backups/${newer!}, which cannot be read`);
    const verified = await drctl('verify', 'latest', '--repo', dir, '--key-file', key);
    expect(verified.code, verified.stderr).toBe(0);
    expect(verified.stdout).toContain(`backup ${older!} is intact`);
    expect(verified.stderr).toContain(`skipped backups/${newer!}`);
    // verify all: every readable backup verified, the unreadable one named, exit 3
    const all = await drctl('verify', 'all', '--repo', dir, '--key-file', key);
    expect(all.code).toBe(3);
    expect(all.stdout).toContain(`backup ${older!} is intact`);
    expect(all.stderr).toContain(`skipped backups/${newer!}`);
  });

  it('clears setuid and setgid bits on restore unless --preserve-special-bits', async () => {
    const dir = join(work, 'suid-repo');
    const repoArgs = ['--repo', dir, '--key-file', key];
    expect((await drctl('init', ...repoArgs)).code).toBe(0);
    const files = await mkdtemp(join(tmpdir(), 'dr-cli-suid-'));
    await writeFile(join(files, 'tool'), '#!/bin/sh\n');
    await chmod(join(files, 'tool'), 0o6755);
    expect((await drctl('backup', ...repoArgs, '--files', files)).code).toBe(0);
    const plain = join(work, 'suid-plain');
    expect((await drctl('restore', 'latest', ...repoArgs, '--files-to', plain)).code).toBe(0);
    expect((await stat(join(plain, 'tool'))).mode & 0o7777).toBe(0o755);
    const kept = join(work, 'suid-kept');
    const preserved = await drctl(
      'restore',
      'latest',
      ...repoArgs,
      '--files-to',
      kept,
      '--preserve-special-bits',
    );
    expect(preserved.code, preserved.stderr).toBe(0);
    expect((await stat(join(kept, 'tool'))).mode & 0o7777).toBe(0o6755);
  });

  it('backs up one table at a time or several, and restores with as many jobs, to the same data', async () => {
    const jobsRepo = join(work, 'jobs-repo');
    const key = join(work, 'jobs.key');
    await writeFile(key, (await drctl('key', 'generate')).stdout, { mode: 0o600 });
    const repository = ['--repo', jobsRepo, '--key-file', key];
    expect((await drctl('init', ...repository)).code).toBe(0);
    const backupWith = (jobs: string) =>
      drctl('backup', ...repository, '--db', pg.url('app'), '--jobs', jobs, '--json');
    const sums = await tableChecksums(pg, 'app');
    // Backed up with one job, restored with three; and the other way round
    for (const [backupJobs, restoreJobs] of [
      ['1', '3'],
      ['3', '1'],
    ]) {
      const made = await backupWith(backupJobs!);
      expect(made.code, made.stderr).toBe(0);
      const { id } = JSON.parse(made.stdout) as { id: string };
      const database = `jobs_${backupJobs}_${restoreJobs}`;
      await pg.createDatabase(database);
      const restored = await drctl(
        'restore',
        id,
        ...repository,
        '--db',
        pg.url(database),
        '--jobs',
        restoreJobs!,
      );
      expect(restored.code, restored.stderr).toBe(0);
      expect(await tableChecksums(pg, database)).toEqual(sums);
    }
    for (const bad of ['0', '65', 'two']) {
      const refused = await backupWith(bad);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toMatch(/--jobs <n>.*must be (a positive whole number|at most 64)/);
    }
  });

  it('explains missing arguments', async () => {
    const missing = await drctl('restore', 'latest', '--repo', repo, '--key-file', key);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('give --db, --files-to, or both');
    const noKey = await drctl('list', '--repo', repo);
    expect(noKey.stderr).toContain('no master key');
  });

  it('backs up a change stream and restores to an instant with --until', async () => {
    await pg.createDatabase('shop');
    await createEventManager(pg, 'shop');
    await pg.sql('shop', 'ALTER TABLE page_views REPLICA IDENTITY FULL');
    const streamRepo = join(work, 'stream-repo');
    const common = ['--repo', streamRepo, '--key-file', key];
    expect((await drctl('init', ...common)).code).toBe(0);
    const backup = (type: string) =>
      drctl('backup', ...common, '--db', pg.url('shop'), '--type', type, '--change-stream');

    const full = await backup('FULL');
    expect(full.code, full.stderr).toBe(0);
    expect(full.stdout).toContain('change stream drctl_shop started at');
    const instants: { at: string; sums: Record<string, string> }[] = [];
    for (const sql of [
      "UPDATE users SET name = 'moved' WHERE id % 50 = 0",
      'DELETE FROM tickets WHERE registration_id % 7 = 0',
    ]) {
      await pg.sql('shop', sql);
      const clock = await pg.sql('shop', 'SELECT clock_timestamp() AS at');
      instants.push({
        at: (clock.rows[0] as { at: Date }).at.toISOString(),
        sums: await tableChecksums(pg, 'shop'),
      });
    }
    const incremental = await backup('INCREMENTAL');
    expect(incremental.code, incremental.stderr).toBe(0);
    expect(incremental.stdout).toMatch(/\(INCREMENTAL on \S+\)/);
    expect(incremental.stdout).toContain('change stream drctl_shop: 2 transactions');
    // Committed: the slot released what the INCREMENTAL holds, so the next one starts after it
    const again = await backup('INCREMENTAL');
    expect(again.stdout).toContain('change stream drctl_shop: 0 transactions');

    for (const [index, instant] of instants.entries()) {
      const into = `shop_at_${index}`;
      await pg.createDatabase(into);
      const restored = await drctl(
        'restore',
        'latest',
        ...common,
        '--db',
        pg.url(into),
        '--until',
        instant.at,
      );
      expect(restored.code, restored.stderr).toBe(0);
      expect(restored.stdout).toContain(`changes: ${index + 1} transactions`);
      expect(await tableChecksums(pg, into)).toEqual(instant.sums);
    }

    // Instants it cannot reach are refused with the reason
    const fullId = /^backup (\S+)/.exec(full.stdout)![1]!;
    await pg.createDatabase('shop_early');
    const early = await drctl(
      'restore',
      fullId,
      ...common,
      '--db',
      pg.url('shop_early'),
      '--until',
      '2020-01-01T00:00:00Z',
    );
    expect(early.code).toBe(1);
    expect(early.stderr).toContain(`is before`);
    const garbage = await drctl(
      'restore',
      'latest',
      ...common,
      '--db',
      pg.url('shop_early'),
      '--until',
      'noon',
    );
    expect(garbage.stderr).toContain('not an ISO 8601 instant');
    await pg.sql('shop', "SELECT pg_drop_replication_slot('drctl_shop')");
  });
});
