import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import type { DatabaseConnection } from '../../functions/engine/postgres.ts';
import { freePort } from './ports.ts';

const run = promisify(execFile);

/**
 * A throwaway PostgreSQL cluster from the machine's server binaries, on 127.0.0.1 and a random port. TCP
 * connections (replication included) need the password with SCRAM-SHA-256, as on every real server, so every
 * path under test authenticates; only the cluster's own Unix socket trusts (for the helper's set-up). initdb
 * refuses to run as root, so as root the cluster is created and run as the `postgres` user. A missing server
 * fails loudly: tests never skip for it.
 */
export interface TestPostgres {
  readonly port: number;
  readonly admin: DatabaseConnection;
  /** The superuser's password (SCRAM). */
  readonly password: string;
  /** postgres://postgres:<password>@127.0.0.1:<port>/<database>: the password inline, as operators paste it. */
  url(database: string): string;
  /** The URL without the password, and the password apart (as the engine takes them). */
  connection(database: string): DatabaseConnection;
  createDatabase(name: string): Promise<DatabaseConnection>;
  sql(database: string, text: string): Promise<pg.QueryResult>;
  /** Stops the server at once, as a crash would (`pg_ctl stop -m immediate`), keeping its data. */
  halt(): Promise<void>;
  /** Starts it again after `halt`, on the same port. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

async function binDir(): Promise<string> {
  const roots = (await readdir('/usr/lib/postgresql').catch(() => [] as string[])).sort(
    (a, b) => Number(b) - Number(a),
  );
  if (roots.length === 0)
    throw new Error(
      'no PostgreSQL server binaries under /usr/lib/postgresql: .ci/run installs them (apt-get install postgresql)',
    );
  return join('/usr/lib/postgresql', roots[0]!, 'bin');
}

/**
 * `settings`: more server settings (`name=value`, e.g. track_commit_timestamp=on). `replicaOf`: a streaming
 * replica of that cluster, made with `pg_basebackup -R` over TCP with its password (hot standby, its own
 * port), which `pg_promote()` turns into a primary.
 */
export async function startPostgres(
  settings: { readonly settings?: readonly string[]; readonly replicaOf?: TestPostgres } = {},
): Promise<TestPostgres> {
  const bin = await binDir();
  const root = await mkdtemp(join(tmpdir(), 'dr-pg-'));
  const asRoot = process.getuid?.() === 0;
  const postgresUser = asRoot ? Number(execFileSync('id', ['-u', 'postgres']).toString().trim()) : undefined;
  const postgresGroup = asRoot ? Number(execFileSync('id', ['-g', 'postgres']).toString().trim()) : undefined;
  if (asRoot) {
    await chmod(root, 0o755);
    await chown(root, postgresUser!, postgresGroup!);
  }
  const as = (command: string, args: string[]) =>
    asRoot ? run('runuser', ['-u', 'postgres', '--', command, ...args]) : run(command, args);
  const data = join(root, 'data');
  // Characters that must be percent-encoded in a URL: a password that survives them survives any.
  const primary = settings.replicaOf;
  // A replica has its primary's roles, so its password.
  const password = primary?.password ?? `pw:${randomBytes(6).toString('hex')}@/?#%`;
  if (primary) {
    await (asRoot
      ? run('runuser', [
          '-u',
          'postgres',
          '--',
          'env',
          `PGPASSWORD=${password}`,
          join(bin, 'pg_basebackup'),
          ...basebackup(),
        ])
      : run(join(bin, 'pg_basebackup'), basebackup(), { env: { ...process.env, PGPASSWORD: password } }));
  } else {
    const pwfile = join(root, 'pwfile');
    await writeFile(pwfile, `${password}\n`, { mode: 0o600 });
    if (asRoot) await chown(pwfile, postgresUser!, postgresGroup!);
    await as(join(bin, 'initdb'), [
      '-D',
      data,
      '-U',
      'postgres',
      `--pwfile=${pwfile}`,
      '--auth-local=trust',
      '--auth-host=scram-sha-256',
      '-E',
      'UTF8',
      '--locale=C',
      '--no-sync',
    ]);
  }
  function basebackup(): string[] {
    return [
      '-D',
      data,
      '-R',
      '-X',
      'stream',
      '-h',
      '127.0.0.1',
      '-p',
      String(primary!.port),
      '-U',
      'postgres',
      '--no-sync',
      '--checkpoint=fast',
    ];
  }
  const port = await freePort();
  const options = [
    `-p ${port} -k ${root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10`,
    ...(settings.settings ?? []).map((setting) => `-c ${setting}`),
  ].join(' ');
  await as(join(bin, 'pg_ctl'), ['-D', data, '-o', options, '-l', join(root, 'server.log'), '-w', 'start']);
  const url = (database: string) =>
    `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`;
  const connection = (database: string): DatabaseConnection => ({
    url: `postgres://postgres@127.0.0.1:${port}/${database}`,
    password,
  });
  const sql = async (database: string, text: string) => {
    const client = new pg.Client({ connectionString: url(database) });
    await client.connect();
    try {
      return await client.query(text);
    } finally {
      await client.end();
    }
  };
  return {
    port,
    password,
    admin: connection('postgres'),
    url,
    connection,
    createDatabase: async (name) => {
      await sql('postgres', `CREATE DATABASE "${name}"`);
      return connection(name);
    },
    sql,
    halt: async () => {
      await as(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']);
    },
    resume: async () => {
      await as(join(bin, 'pg_ctl'), [
        '-D',
        data,
        '-o',
        options,
        '-l',
        join(root, 'server.log'),
        '-w',
        'start',
      ]);
    },
    stop: async () => {
      await as(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', 'stop']).catch(() => undefined);
      await rm(root, { recursive: true, force: true });
    },
  };
}
