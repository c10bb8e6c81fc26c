#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=4
import { availableParallelism, hostname } from 'node:os';
import { createWriteStream } from 'node:fs';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import cliProgress from 'cli-progress';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { backup } from '../engine/backup.ts';
import type { ProgressEvent } from '../engine/progress.ts';
import { generateMasterKey, loadMasterKey } from '../engine/crypto.ts';
import { BackupNotFoundError, CorruptDataError, WrongKeyError } from '../engine/errors.ts';
import { exportArchive, exportSql, exportTar } from '../engine/export.ts';
import type { BackupType } from '../engine/manifest.ts';
import {
  confirmReview,
  forget,
  gc,
  listBackups,
  newestRestorePoint,
  rekey,
  summarize,
  verify,
  verifyAll,
  type Problem,
  type VerifyReport,
} from '../engine/maintenance.ts';
import { connectionFrom, databaseName } from '../engine/postgres.ts';
import { DEFAULT_PACK_SIZE, Repository } from '../engine/repository.ts';
import { backupForInstant, restoreDatabase, restoreFiles } from '../engine/restore.ts';
import { changeStreamFor, confirmBackup, ownChangeSet } from '../engine/changes.ts';
import { LocalStorage } from '../storage/local/local-storage.ts';
import type { Storage } from '../storage/storage.ts';
import { openTarget, readTargetFile } from '../storage/targets.ts';
import { VERSION } from '../core/version.ts';
import { compose } from '../storage/facade.ts';

/**
 * drctl: the backup engine from the command line, standalone — no control plane, no AWS account: only the
 * repository's location and the master key. This is the emergency-restore tool.
 *
 * Exit codes: 0 done; 1 failed; 2 bad usage; 3 verify found damage or a restore check failed; 4 wrong key.
 *
 * `--max-semi-space-size=4` (shebang): backups allocate fast and briefly; with V8's default young generation
 * the heap's committed size grew to 150 MB for 27 MB in use and peak RSS grew with the database (277 MB at
 * 2.5 GB). Capped, peak RSS stays about 195 MB at every scale measured (bench, issue 3 note).
 *
 * `MALLOC_ARENA_MAX=2` (shebang; the Lambda functions, the worker image and `npm start` set it too): the
 * cutting and sealing threads allocate chunks that another thread frees, and glibc gives each thread its own
 * arena, which keeps what was freed in it — 35 to 50 MB more peak RSS in a FULL at jobs 2 (bench, issue 20).
 */
const EXIT = { failed: 1, usage: 2, damaged: 3, wrongKey: 4, flagged: 5 } as const;

interface Common {
  repo?: string;
  target?: string;
  keyFile?: string;
  json?: boolean;
}

const program = new Command('drctl')
  .description('DR Automation backup engine: back up PostgreSQL and files, verify, restore, export')
  .version(VERSION)
  .showHelpAfterError()
  .configureOutput({ writeErr: (text) => process.stderr.write(text) })
  // A bad option or argument is a usage error (exit 2), as when an action finds one; help and version exit 0.
  .exitOverride((error) => {
    throw error;
  });

const repoOption = () => new Option('--repo <path>', 'repository in a local directory').env('DR_REPO');
const targetOption = () =>
  new Option(
    '--target <file>',
    'repository on a target: the API\'s target JSON ({"targetType":"S3","config":{…}}), secrets inline',
  ).env('DR_TARGET');
const keyOption = () => new Option('--key-file <file>', 'master key file (or set DR_MASTER_KEY)');
const jsonOption = () => new Option('--json', 'print the result as JSON');

/** Storages this run opened, closed before exit (SFTP and FTP hold a connection open). */
const opened: Storage[] = [];

async function storageFrom(options: Common): Promise<Storage> {
  if (options.target && options.repo) throw new InvalidArgumentError('give --repo or --target, not both');
  if (options.target) {
    const storage = await openTarget(await readTargetFile(options.target));
    opened.push(storage);
    return storage;
  }
  if (options.repo) return compose(new LocalStorage(options.repo));
  throw new InvalidArgumentError('give --repo <dir> (or DR_REPO) or --target <file> (or DR_TARGET)');
}

async function open(options: Common): Promise<Repository> {
  return Repository.open(await storageFrom(options), await loadMasterKey({ keyFile: options.keyFile }));
}

function print(options: { json?: boolean }, value: unknown, text: string): void {
  process.stdout.write(options.json ? `${JSON.stringify(value, null, 2)}\n` : `${text}\n`);
}

function positiveInt(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed <= 0)
    throw new InvalidArgumentError('must be a positive whole number');
  return parsed;
}

/**
 * `--jobs`: tables a backup reads (each in the backup's one snapshot) or a restore loads and indexes at once.
 * Default: the cores available, at most 4 (each job holds its own buffers: memory grows with jobs).
 */
function jobsOption(what: string): Option {
  return new Option('--jobs <n>', `${what} at once (1-64)`)
    .argParser((value: string) => {
      const jobs = positiveInt(value);
      if (jobs > 64) throw new InvalidArgumentError('must be at most 64');
      return jobs;
    })
    .default(Math.min(availableParallelism(), 4), 'the cores available, at most 4');
}

function collectValues(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Bytes and rate on stderr: a bar on a terminal, a line every few seconds otherwise. */
function progressReporter(label: string): { update: (event: ProgressEvent) => void; stop: () => void } {
  const started = Date.now();
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${label} {phase} | {value} bytes | {rate} MB/s | {item}`,
        stream: process.stderr,
        hideCursor: true,
        fps: 5,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(0, 0, { phase: '', rate: '0.0', item: '' });
    return {
      update: (event) => {
        bar.setTotal(event.bytes);
        bar.update(event.bytes, {
          phase: event.phase,
          item: event.item ?? '',
          rate: (event.bytes / 1e6 / Math.max(0.001, (Date.now() - started) / 1000)).toFixed(1),
        });
      },
      stop: () => bar.stop(),
    };
  }
  let last = 0;
  return {
    update: (event) => {
      if (Date.now() - last < 5000) return;
      last = Date.now();
      const rate = event.bytes / 1e6 / Math.max(0.001, (Date.now() - started) / 1000);
      process.stderr.write(
        `${label}: ${event.phase} ${event.item ?? ''} ${(event.bytes / 1e6).toFixed(1)} MB read, ${rate.toFixed(1)} MB/s\n`,
      );
    },
    stop: () => undefined,
  };
}

/** `latest`: the newest backup with data that is not flagged (never a SCHEMA backup, which has no rows). */
async function resolveId(repository: Repository, id: string): Promise<string> {
  if (id !== 'latest') return id;
  const unreadable: Problem[] = [];
  const newest = await newestRestorePoint(repository, unreadable);
  warnUnreadable(unreadable);
  if (!newest) throw new BackupNotFoundError('the repository holds no good backup with data');
  return newest.id;
}

function warnUnreadable(unreadable: readonly Problem[]): void {
  for (const problem of unreadable)
    process.stderr.write(`drctl: skipped ${problem.object}, which cannot be read: ${problem.message}\n`);
}

function output(target: string): { stream: Writable; done: () => Promise<void> } {
  if (target === '-') return { stream: process.stdout, done: () => Promise.resolve() };
  const stream = createWriteStream(target, { mode: 0o600 });
  return {
    stream,
    done: async () => {
      stream.end();
      await finished(stream);
    },
  };
}

program
  .command('key')
  .description('master keys')
  .command('generate')
  .description('print a new random master key (store it like a password: without it no backup can be read)')
  .action(() => {
    process.stdout.write(`${generateMasterKey()}\n`);
  });

program
  .command('init')
  .description('create a repository in an empty location')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .addOption(jsonOption())
  .action(async (options: Common) => {
    const storage = await storageFrom(options);
    const repository = await Repository.init(storage, await loadMasterKey({ keyFile: options.keyFile }));
    print(
      options,
      { id: repository.config.id, chunker: repository.config.chunker },
      `created repository ${repository.config.id} at ${storage.name}`,
    );
  });

program
  .command('backup')
  .description('back up a database and/or a directory')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .addOption(
    new Option('--type <type>', 'FULL, INCREMENTAL or SCHEMA')
      .choices(['FULL', 'INCREMENTAL', 'SCHEMA'])
      .default('FULL'),
  )
  .option('--db <url>', 'postgres://user@host:port/database (password from PGPASSWORD)')
  .option('--files <dir>', 'a directory tree to back up')
  .option(
    '--parent <id>',
    'INCREMENTAL: the backup to build on (default: the newest good one of the same series)',
  )
  .option('--tag <key=value>', 'a tag (repeatable); series=<name> groups incrementals', collectValues)
  .option(
    '--change-stream',
    'with --db: a FULL starts the logical replication slot drctl_<database>, an INCREMENTAL stores the row changes since its parent (restore with --until to any instant); dump mode, with a note, where the database does not allow it',
  )
  .option(
    '--review-below <fraction>',
    'flag the backup when its data is below this fraction of its parent (0-1)',
    Number.parseFloat,
    0.5,
  )
  .addOption(jobsOption('tables read'))
  .addOption(
    new Option('--pack-size <bytes>', 'target pack size')
      .argParser(positiveInt)
      .default(DEFAULT_PACK_SIZE)
      .hideHelp(),
  )
  .addOption(jsonOption())
  .action(
    async (
      options: Common & {
        type: BackupType;
        db?: string;
        files?: string;
        parent?: string;
        tag?: string[];
        changeStream?: boolean;
        reviewBelow: number;
        packSize: number;
        jobs: number;
      },
    ) => {
      if (options.changeStream && !options.db) throw new InvalidArgumentError('--change-stream needs --db');
      const repository = await open(options);
      const database = options.db ? connectionFrom(options.db, process.env.PGPASSWORD) : undefined;
      const stream =
        options.changeStream && database ? changeStreamFor(databaseName(database), 'drctl') : undefined;
      const tags = Object.fromEntries(
        (options.tag ?? []).map((tag) => tag.split('=', 2) as [string, string]),
      );
      const progress = progressReporter('backup');
      let result;
      try {
        result = await backup(repository, {
          type: options.type,
          source: {
            ...(database ? { database } : {}),
            ...(options.files ? { files: options.files } : {}),
          },
          ...(options.parent ? { parent: options.parent } : {}),
          ...(stream ? { changeStream: stream } : {}),
          ...(Object.keys(tags).length > 0 ? { tags } : {}),
          reviewBelow: options.reviewBelow,
          packSize: options.packSize,
          tableConcurrency: options.jobs,
          onProgress: progress.update,
          onLockWait: (holders) => process.stderr.write(`backup: waiting for ${holders} to finish\n`),
        });
      } finally {
        progress.stop();
      }
      const { manifest, notice } = result;
      // The backup is committed (its manifest written): the slot may now release the WAL before its end.
      if (database) await confirmBackup(database, manifest);
      const set = ownChangeSet(manifest);
      const s = manifest.stats;
      const seconds = (Date.parse(manifest.finishedAt) - Date.parse(manifest.startedAt)) / 1000;
      print(
        options,
        { ...summarize(manifest), notice },
        [
          `backup ${manifest.id} (${manifest.type}${manifest.parent ? ` on ${manifest.parent}` : ''}) done in ${seconds.toFixed(1)} s`,
          `  restore point ${manifest.restorePoint}`,
          ...(manifest.changes
            ? [
                set
                  ? `  change stream ${manifest.changes.slot}: ${set.transactions} transactions (${set.changes} changes) since ${manifest.parent ?? '?'}`
                  : `  change stream ${manifest.changes.slot} started at ${manifest.changes.startLsn}`,
              ]
            : []),
          `  read ${s.bytesRead} bytes in ${s.chunks} chunks; new ${s.bytesNew} bytes in ${s.newChunks} chunks; stored ${s.bytesStored} bytes in ${s.packs} packs`,
          ...(notice ? [`  note: ${notice}`] : []),
          ...(manifest.review
            ? [
                `  FLAGGED FOR REVIEW: ${manifest.review.reason}. It is no restore point (not latest, not a parent) until you check the source and run: drctl confirm ${manifest.id}`,
              ]
            : []),
        ].join('\n'),
      );
      if (manifest.review) process.exitCode = EXIT.flagged;
    },
  );

program
  .command('list')
  .description('list the backups in a repository, oldest first')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .addOption(jsonOption())
  .action(async (options: Common) => {
    const unreadable: Problem[] = [];
    const backups = await listBackups(await open(options), unreadable);
    warnUnreadable(unreadable);
    if (unreadable.length > 0) process.exitCode = EXIT.damaged;
    const lines = backups.map(
      (b) =>
        `${b.id}  ${b.type.padEnd(11)} ${b.restorePoint}  ${String(b.tables).padStart(4)} tables ${String(b.rows).padStart(10)} rows ${String(b.files).padStart(6)} files  ${b.bytesStored} bytes stored${b.review ? `  REVIEW: ${b.review}` : ''}`,
    );
    print(options, backups, lines.length > 0 ? lines.join('\n') : 'no backups');
  });

program
  .command('verify')
  .description(
    'read every chunk of a backup (or of all) and check it; names the damaged objects, and what they break',
  )
  .argument('<backup>', 'backup id, latest, or all (every backup, each pack read once)')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .addOption(jsonOption())
  .action(async (id: string, options: Common) => {
    const repository = await open(options);
    const progress = progressReporter('verify');
    let reports: VerifyReport[];
    let unreadable: Problem[] = [];
    try {
      if (id === 'all') ({ reports, unreadable } = await verifyAll(repository, progress.update));
      else reports = [await verify(repository, await resolveId(repository, id), progress.update)];
    } finally {
      progress.stop();
    }
    warnUnreadable(unreadable);
    print(
      options,
      id === 'all' ? { backups: reports, unreadable } : reports[0],
      reports.map(describeVerify).join('\n') || 'no backups',
    );
    if (unreadable.length > 0 || reports.some((report) => !report.ok)) process.exitCode = EXIT.damaged;
  });

function describeVerify(report: VerifyReport): string {
  if (report.ok)
    return `backup ${report.backupId} is intact: ${report.chunks} chunks in ${report.packs} packs (${report.bytes} bytes) read and authenticated`;
  return [
    report.restorable
      ? `backup ${report.backupId} RESTORES, from other copies of damaged data it uses:`
      : `backup ${report.backupId} is DAMAGED`,
    ...report.problems.map((p) => `  ${p.object}: ${p.message}`),
    ...(report.brokenItems.length > 0 ? [`  breaks: ${report.brokenItems.join(', ')}`] : []),
  ].join('\n');
}

program
  .command('restore')
  .description('restore a backup: the database into a connection, files into a directory')
  .argument('<backup>', 'backup id, or latest (with --until: the backup that reaches that instant)')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .option('--db <url>', 'restore the database into this (empty) database; password from PGPASSWORD')
  .option('--clean', 'replace the objects the backup defines in a database that is not empty')
  .option(
    '--until <instant>',
    'change-stream backups: apply only the transactions committed at or before this ISO 8601 instant (to the microsecond)',
  )
  .option('--table <name>', 'only this table, schema.table or table (repeatable)', collectValues)
  .option('--schema <name>', 'only the tables of this schema (repeatable)', collectValues)
  .option(
    '--no-check',
    'skip comparing restored tables with the row counts and checksums recorded at backup time',
  )
  .option('--no-owner', 'do not restore ownership and privileges')
  .addOption(jobsOption('tables loaded and indexes built'))
  .option('--files-to <dir>', 'restore the files into this directory')
  .option('--include <glob>', 'only files matching this glob (repeatable)', collectValues)
  .option('--preserve-special-bits', 'keep setuid/setgid bits of restored files (cleared by default)')
  .addOption(jsonOption())
  .action(
    async (
      id: string,
      options: Common & {
        db?: string;
        clean?: boolean;
        until?: string;
        table?: string[];
        schema?: string[];
        check: boolean;
        owner: boolean;
        filesTo?: string;
        include?: string[];
        preserveSpecialBits?: boolean;
        jobs: number;
      },
    ) => {
      if (!options.db && !options.filesTo) throw new InvalidArgumentError('give --db, --files-to, or both');
      if (options.until !== undefined && !options.db) throw new InvalidArgumentError('--until needs --db');
      const repository = await open(options);
      const manifest =
        options.until !== undefined && id === 'latest'
          ? await backupForInstant(repository, options.until)
          : await repository.loadManifest(await resolveId(repository, id));
      const progress = progressReporter('restore');
      const started = Date.now();
      const result: Record<string, unknown> = { backupId: manifest.id, restorePoint: manifest.restorePoint };
      try {
        if (options.db) {
          result.database = await restoreDatabase(repository, manifest, {
            target: connectionFrom(options.db, process.env.PGPASSWORD),
            ...(options.clean ? { clean: true } : {}),
            ...(options.until !== undefined ? { until: options.until } : {}),
            ...(options.table ? { tables: options.table } : {}),
            ...(options.schema ? { schemas: options.schema } : {}),
            check: options.check,
            noOwner: !options.owner,
            jobs: options.jobs,
            onProgress: progress.update,
          });
        }
        if (options.filesTo) {
          result.files = await restoreFiles(repository, manifest, {
            destination: options.filesTo,
            ...(options.include ? { include: options.include } : {}),
            ...(options.preserveSpecialBits ? { preserveSpecialBits: true } : {}),
            onProgress: progress.update,
          });
        }
      } finally {
        progress.stop();
      }
      const database = result.database as Awaited<ReturnType<typeof restoreDatabase>> | undefined;
      const files = result.files as Awaited<ReturnType<typeof restoreFiles>> | undefined;
      result.seconds = (Date.now() - started) / 1000;
      print(
        options,
        result,
        [
          `restored backup ${manifest.id} (restore point ${manifest.restorePoint}${options.until === undefined ? '' : `, changes up to ${options.until}`}) in ${(result.seconds as number).toFixed(1)} s`,
          ...(database?.structureOnly
            ? [
                `  database: structure only — backup ${manifest.id} is a SCHEMA backup: tables, indexes and constraints were created, with no rows`,
              ]
            : database
              ? [
                  `  database: ${database.tables} tables, ${database.rows} rows, ${database.bytes} bytes; ${
                    database.checks.length === 0
                      ? 'not checked'
                      : database.consistent
                        ? 'every table matches its recorded checksum'
                        : `MISMATCH in ${database.checks
                            .filter((c) => !c.ok)
                            .map((c) => c.table)
                            .join(', ')}`
                  }`,
                ]
              : []),
          ...(database?.changes
            ? [
                `  changes: ${database.changes.transactions} transactions (${database.changes.changes} changes) applied; ${
                  database.changes.lastCommit
                    ? `last commit ${database.changes.lastCommit.time} (LSN ${database.changes.lastCommit.lsn}, xid ${database.changes.lastCommit.xid})`
                    : 'none committed after the FULL by then'
                }`,
              ]
            : []),
          ...(files ? [`  files: ${files.files} files, ${files.bytes} bytes into ${options.filesTo}`] : []),
        ].join('\n'),
      );
      if (database && !database.consistent) process.exitCode = EXIT.damaged;
    },
  );

program
  .command('export')
  .description(
    'write a backup as standard artifacts: a custom-format archive for pg_restore, a plain SQL script for psql, a tar of the files',
  )
  .argument('<backup>', 'backup id, or latest')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .option('--archive <file>', 'write the database as a pg_restore archive (- for stdout)')
  .option('--sql <file>', 'write the database as a SQL script (- for stdout)')
  .option('--tar <file>', 'write the files as a tar archive (- for stdout)')
  .action(async (id: string, options: Common & { archive?: string; sql?: string; tar?: string }) => {
    if (!options.archive && !options.sql && !options.tar)
      throw new InvalidArgumentError('give at least one of --archive, --sql, --tar');
    const repository = await open(options);
    const manifest = await repository.loadManifest(await resolveId(repository, id));
    if (options.archive) {
      const out = output(options.archive);
      await exportArchive(repository, manifest, out.stream);
      await out.done();
    }
    if (options.sql) {
      const out = output(options.sql);
      await exportSql(repository, manifest, out.stream);
      await out.done();
    }
    if (options.tar) {
      const out = output(options.tar);
      await exportTar(repository, manifest, out.stream);
      await out.done();
    }
  });

program
  .command('forget')
  .description('remove backups (run gc afterwards to free their data)')
  .argument('<backups...>', 'backup ids')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .action(async (ids: string[], options: Common) => {
    await forget(await open(options), ids);
    process.stdout.write(`forgot ${ids.length} backup(s); run drctl gc to free their data\n`);
  });

program
  .command('confirm')
  .description('confirm a backup flagged for review (the source really shrank): it becomes a restore point')
  .argument('<backup>', 'backup id')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .action(async (id: string, options: Common) => {
    const by = `drctl ${process.env.USER ?? 'user'}@${hostname()}`;
    const confirmed = await confirmReview(await open(options), id, by);
    process.stdout.write(
      `backup ${id} confirmed (flagged: ${confirmed.review!.reason}); it is a restore point from now on\n`,
    );
  });

program
  .command('gc')
  .description('delete data no backup uses: leftovers of interrupted runs, data of forgotten backups')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .option('--dry-run', 'only report what would be deleted')
  .option(
    '--stale-lock-minutes <minutes>',
    'a lock from another machine not refreshed for this long is stale (on this machine: when its process is gone)',
    Number.parseFloat,
    30,
  )
  .option('--wait <minutes>', 'wait this long for backups in progress to finish', Number.parseFloat, 0)
  .addOption(jsonOption())
  .action(async (options: Common & { dryRun?: boolean; staleLockMinutes: number; wait: number }) => {
    const report = await gc(await open(options), {
      staleLockMs: options.staleLockMinutes * 60_000,
      lockWaitMs: options.wait * 60_000,
      ...(options.dryRun ? { dryRun: true } : {}),
    });
    print(
      options,
      report,
      `${options.dryRun ? 'would delete' : 'deleted'} ${report.deletedPacks} packs (${report.bytesFreed} bytes) and ${report.deletedIndexes} index files; kept ${report.keptPacks} packs; ${report.staleLocks} stale locks, ${report.leftovers} partial files removed`,
    );
  });

program
  .command('rekey')
  .description('re-wrap the repository key under a new master key, prove it, then remove the old key files')
  .addOption(repoOption())
  .addOption(targetOption())
  .addOption(keyOption())
  .requiredOption('--new-key-file <file>', 'the new master key')
  .action(async (options: Common & { newKeyFile: string }) => {
    const repository = await open(options);
    const result = await rekey(repository, await loadMasterKey({ keyFile: options.newKeyFile }));
    process.stdout.write(
      `the repository now opens with the new key (key file ${result.keyId}); removed ${result.removed.length} old key file(s)\n`,
    );
  });

try {
  await program.parseAsync();
} catch (error) {
  if (error instanceof CommanderError && !(error instanceof InvalidArgumentError)) {
    // Commander has printed its own message (and the help) already
    process.exitCode = error.exitCode === 0 ? 0 : EXIT.usage;
  } else {
    process.stderr.write(`drctl: ${error instanceof Error ? error.message : String(error)}\n`);
    if (error instanceof InvalidArgumentError) process.exitCode = EXIT.usage;
    else if (error instanceof WrongKeyError) process.exitCode = EXIT.wrongKey;
    else if (error instanceof CorruptDataError) process.exitCode = EXIT.damaged;
    else process.exitCode = EXIT.failed;
  }
} finally {
  await Promise.all(
    opened.map(async (storage) => {
      await storage.close?.().catch(() => undefined);
    }),
  );
}
