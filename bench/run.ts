/**
 * `npm run bench`: the engine against pg_dump/pg_restore (and restic, when installed: apt-get install restic)
 * on the same generated database, in one run, printing every figure side by side.
 *
 *   BENCH_SCALE  dataset scale (default 0.25; scale 1 ≈ 2 GB on disk)
 *
 * Figures, not assertions: the goals are in the issues (3, 20) and the measured values go in their closing notes.
 * FULL and restore run at jobs 1 and jobs 2 beside pg_dump -Fc, pg_dump -Fd -j2, pg_restore and pg_restore -j2;
 * peak RSS of each (references through GNU time, when /usr/bin/time is there).
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { generateMasterKey, parseMasterKey } from '../functions/engine/crypto.ts';
import { Repository } from '../functions/engine/repository.ts';
import { LocalStorage } from '../functions/storage/local/local-storage.ts';
import { startPostgres } from '../test/support/postgres.ts';
import { generate, realisticHour, uniformUpdate } from './dataset.ts';
import { checked } from '../functions/storage/facade.ts';

const run = promisify(execFile);
const scale = Number(process.env.BENCH_SCALE ?? '0.25');
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
const rows: [string, string, string][] = [];
const report = (what: string, ours: string, reference: string) => {
  rows.push([what, ours, reference]);
  console.log(`  ${what}: ${ours} | ${reference}`);
};

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now();
  const value = await fn();
  return [value, (performance.now() - started) / 1000];
}

async function shell(command: string, env: NodeJS.ProcessEnv = {}): Promise<number> {
  const [, seconds] = await timed(
    () =>
      new Promise<void>((resolve, reject) => {
        const child = spawn('bash', ['-o', 'pipefail', '-c', command], {
          stdio: ['ignore', 'ignore', 'inherit'],
          env: { ...process.env, ...env },
        });
        child.on('close', (code) =>
          code === 0 ? resolve() : reject(new Error(`${command} exited ${String(code)}`)),
        );
      }),
  );
  return seconds;
}

interface Measured {
  seconds: number;
  maxRssMB: number;
  bytesStored?: number;
  id?: string;
  transactions?: number;
  changes?: number;
}

async function measure(...args: string[]): Promise<Measured> {
  return measureWith(undefined, ...args);
}

/** One engine operation in its own process with `jobs` (tables at once), as drctl --jobs runs it. */
async function measureWith(jobs: number | undefined, ...args: string[]): Promise<Measured> {
  await settle();
  // The V8 flag drctl runs with (its shebang): see functions/cli/drctl.ts.
  const { stdout } = await run(process.execPath, ['--max-semi-space-size=4', 'bench/measure.ts', ...args], {
    maxBuffer: 1 << 20,
    // And the allocator setting drctl runs with (its shebang)
    env: { ...process.env, MALLOC_ARENA_MAX: '2', ...(jobs === undefined ? {} : { JOBS: String(jobs) }) },
  });
  return JSON.parse(stdout) as Measured;
}

/** A reference command's wall time and peak RSS (GNU time's %M, in KB), when /usr/bin/time is there. */
/**
 * Every measured command starts from a checkpoint: what the previous one left dirty (a restore writes
 * gigabytes) is written out before, not during, the next measurement.
 */
async function settle(): Promise<void> {
  await cluster.sql('postgres', 'CHECKPOINT');
}

async function shellMeasured(command: string): Promise<{ seconds: number; maxRssMB?: number }> {
  await settle();
  const rssFile = join(work, 'rss.txt');
  const timed = await hasGnuTime();
  const seconds = await shell(
    timed ? `/usr/bin/time -f %M -o '${rssFile}' bash -o pipefail -c ${JSON.stringify(command)}` : command,
  );
  if (!timed) return { seconds };
  return { seconds, maxRssMB: Number((await readFile(rssFile, 'utf8')).trim().split('\n').at(-1)) / 1024 };
}

async function hasGnuTime(): Promise<boolean> {
  return run('/usr/bin/time', ['-f', '%M', 'true']).then(
    () => true,
    () => false,
  );
}

const rss = (measured: { maxRssMB?: number }) =>
  measured.maxRssMB === undefined ? 'RSS n/a' : `${measured.maxRssMB.toFixed(0)} MB`;

async function duBytes(path: string): Promise<number> {
  const { stdout } = await run('du', ['-sb', path]);
  return Number(stdout.split('\t')[0]);
}

async function hasRestic(): Promise<boolean> {
  return run('restic', ['version']).then(
    () => true,
    () => false,
  );
}

const cluster = await startPostgres();
const work = await mkdtemp(join(tmpdir(), 'dr-bench-'));
try {
  console.log(`scale ${scale}: generating the Event Manager dataset…`);
  await cluster.createDatabase('bench');
  const client = new pg.Client({ connectionString: cluster.url('bench') });
  client.on('error', () => undefined); // the failing query reports it
  await client.connect();
  const [, generateSeconds] = await timed(() => generate(client, scale));
  const size = Number(
    (await client.query<{ size: string }>("SELECT pg_database_size('bench')::text AS size")).rows[0]!.size,
  );
  console.log(`database: ${mb(size)} on disk, generated in ${generateSeconds.toFixed(1)} s\n`);
  const url = cluster.url('bench');

  // References: pg_dump -Fc to a file; pg_dump -Fc -Z0 | zstd -3; restic on the uncompressed stream.
  const dumpFile = join(work, 'bench.dump');
  const pgDump = await shellMeasured(`pg_dump -Fc --dbname='${url}' -f '${dumpFile}'`);
  const pgDumpSeconds = pgDump.seconds;
  const pgDumpDir = await shellMeasured(`pg_dump -Fd -j2 --dbname='${url}' -f '${join(work, 'bench.dir')}'`);
  const pgDumpBytes = (await stat(dumpFile)).size;
  const zstdSeconds = await shell(
    `pg_dump -Fc -Z0 --dbname='${url}' | zstd -3 -q -o '${join(work, 'bench.dump.zst')}'`,
  );
  const zstdBytes = (await stat(join(work, 'bench.dump.zst'))).size;
  const restic = await hasRestic();
  const resticRepo = join(work, 'restic');
  const resticEnv = { RESTIC_REPOSITORY: resticRepo, RESTIC_PASSWORD: 'bench' };
  const resticBackup = async () => {
    const before = await duBytes(resticRepo);
    const seconds = await shell(
      `pg_dump -Fc -Z0 --dbname='${url}' | restic backup --quiet --stdin --stdin-filename bench.dump`,
      resticEnv,
    );
    return { seconds, added: (await duBytes(resticRepo)) - before };
  };
  if (restic) await shell('restic init --quiet --repository-version 2', resticEnv);
  const resticFull = restic ? await resticBackup() : undefined;

  // Ours.
  const key = generateMasterKey();
  const repo = join(work, 'repo');
  await Repository.init(checked(new LocalStorage(repo)), parseMasterKey(key));
  // jobs 1 in a repository of its own (a FULL shares nothing with earlier backups), then jobs 2, the one the
  // INCREMENTALs below build on.
  const repoOne = join(work, 'repo-jobs1');
  await Repository.init(checked(new LocalStorage(repoOne)), parseMasterKey(key));
  const fullOne = await measureWith(1, 'backup', repoOne, key, url, 'FULL');
  const full = await measureWith(2, 'backup', repo, key, url, 'FULL');
  // Change-stream mode, in a repository of its own: a FULL that starts the slot, then the same workloads.
  const repoChanges = join(work, 'repo-changes');
  await Repository.init(checked(new LocalStorage(repoChanges)), parseMasterKey(key));
  const fullChanges = await measure('backup', repoChanges, key, url, 'FULL', 'changes');

  console.log('FULL backup (ours | reference)');
  report(
    'wall time, jobs 1',
    `${fullOne.seconds.toFixed(1)} s (${(fullOne.seconds / pgDumpSeconds).toFixed(2)}× pg_dump -Fc), peak RSS ${rss(fullOne)}`,
    `pg_dump -Fc ${pgDumpSeconds.toFixed(1)} s, ${rss(pgDump)}`,
  );
  report(
    'wall time, jobs 2',
    `${full.seconds.toFixed(1)} s (${(full.seconds / pgDumpSeconds).toFixed(2)}× pg_dump -Fc), peak RSS ${rss(full)}`,
    `pg_dump -Fd -j2 ${pgDumpDir.seconds.toFixed(1)} s, ${rss(pgDumpDir)}; pg_dump -Z0 | zstd -3 ${zstdSeconds.toFixed(1)} s${resticFull ? `; restic ${resticFull.seconds.toFixed(1)} s` : ''}`,
  );
  report(
    'stored',
    `${mb(full.bytesStored!)} (${(full.bytesStored! / pgDumpBytes).toFixed(2)}× the pg_dump -Fc file)`,
    `pg_dump -Fc ${mb(pgDumpBytes)}; zstd ${mb(zstdBytes)}${resticFull ? `; restic ${mb(resticFull.added)}` : ''}`,
  );
  report('peak RSS, change-stream FULL', `${fullChanges.maxRssMB.toFixed(0)} MB`, '');

  console.log(
    '\nINCREMENTAL after a realistic hour (1% new registrations and audit rows, recent status updates, after VACUUM)',
  );
  await client.query('VACUUM');
  await realisticHour(client);
  const hour = await measure('backup', repo, key, url, 'INCREMENTAL');
  const hourChanges = await measure('backup', repoChanges, key, url, 'INCREMENTAL', 'changes');
  const resticHour = restic ? await resticBackup() : undefined;
  report(
    'stored, change stream',
    `${mb(hourChanges.bytesStored!)} = ${((hourChanges.bytesStored! / fullChanges.bytesStored!) * 100).toFixed(1)}% of its FULL, ${hourChanges.seconds.toFixed(1)} s`,
    '',
  );
  report(
    'stored',
    `${mb(hour.bytesStored!)} = ${((hour.bytesStored! / full.bytesStored!) * 100).toFixed(1)}% of the FULL, ${hour.seconds.toFixed(1)} s`,
    resticHour
      ? `restic ${mb(resticHour.added)} = ${((resticHour.added / resticFull!.added) * 100).toFixed(1)}% of its first`
      : 'restic not installed',
  );

  console.log('\nINCREMENTAL after 1% of registrations updated uniformly');
  await client.query('VACUUM');
  await uniformUpdate(client);
  const uniform = await measure('backup', repo, key, url, 'INCREMENTAL');
  const uniformChanges = await measure('backup', repoChanges, key, url, 'INCREMENTAL', 'changes');
  const resticUniform = restic ? await resticBackup() : undefined;
  report(
    'stored, change stream',
    `${mb(uniformChanges.bytesStored!)} = ${((uniformChanges.bytesStored! / fullChanges.bytesStored!) * 100).toFixed(1)}% of its FULL, ${uniformChanges.seconds.toFixed(1)} s`,
    '',
  );
  report(
    'stored',
    `${mb(uniform.bytesStored!)} = ${((uniform.bytesStored! / full.bytesStored!) * 100).toFixed(1)}% of the FULL, ${uniform.seconds.toFixed(1)} s`,
    resticUniform
      ? `restic ${mb(resticUniform.added)} = ${((resticUniform.added / resticFull!.added) * 100).toFixed(1)}% of its first`
      : 'restic not installed',
  );
  await client.end();

  console.log('\nRestore of the FULL into an empty database (ours | pg_restore of the pg_dump -Fc file)');
  // Each restore goes into a new database, dropped once measured: the autovacuum of one restore's gigabytes
  // of new tables must not run during the next measurement. Ours and pg_restore alternate.
  const into = async <T>(name: string, measured: (url: string) => Promise<T>): Promise<T> => {
    await cluster.createDatabase(name);
    try {
      return await measured(cluster.url(name));
    } finally {
      await cluster.sql('postgres', `DROP DATABASE "${name}"`);
    }
  };
  const restoredOne = await into('restore_ours1', (url) =>
    measureWith(1, 'restore', repo, key, url, full.id!),
  );
  const pgRestore1 = await into('restore_pg1', (url) =>
    shellMeasured(`pg_restore --dbname='${url}' '${dumpFile}'`),
  );
  const restored = await into('restore_ours', (url) => measureWith(2, 'restore', repo, key, url, full.id!));
  const pgRestore2 = await into('restore_pg2', (url) =>
    shellMeasured(`pg_restore -j2 --dbname='${url}' '${dumpFile}'`),
  );
  report(
    'wall time, jobs 1',
    `${restoredOne.seconds.toFixed(1)} s (${(restoredOne.seconds / pgRestore1.seconds).toFixed(2)}× pg_restore), peak RSS ${rss(restoredOne)}`,
    `pg_restore ${pgRestore1.seconds.toFixed(1)} s, ${rss(pgRestore1)}`,
  );
  report(
    'wall time, jobs 2',
    `${restored.seconds.toFixed(1)} s (${(restored.seconds / pgRestore2.seconds).toFixed(2)}× pg_restore -j2), peak RSS ${rss(restored)}`,
    `pg_restore -j2 ${pgRestore2.seconds.toFixed(1)} s, ${rss(pgRestore2)}`,
  );

  console.log(
    '\nRestore of the last change-stream INCREMENTAL (its FULL, then every change of both workloads)',
  );
  const replayed = await into('restore_changes', (url) =>
    measure('restore', repoChanges, key, url, uniformChanges.id!),
  );
  // The FULL's restore (jobs 2) measured above is the base; a difference within a second is noise
  const applying = replayed.seconds - restored.seconds;
  report(
    'wall time',
    `${replayed.seconds.toFixed(1)} s: ${replayed.changes} row changes in ${replayed.transactions} transactions applied after the FULL, ${applying > 1 ? `≈ ${Math.round(replayed.changes! / applying)} changes/s beyond the FULL's restore` : "within the noise of the FULL's restore"}`,
    '',
  );
  report('peak RSS', `${replayed.maxRssMB.toFixed(0)} MB`, '');

  console.log('\nSummary');
  for (const [what, ours, reference] of rows) console.log(`| ${what} | ${ours} | ${reference} |`);
} finally {
  await cluster.stop();
  await rm(work, { recursive: true, force: true });
}
