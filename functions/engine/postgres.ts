import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { parseIntoClientConfig } from 'pg-connection-string';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { EngineError, RestoreError, SourceError } from './errors.ts';
import { countLines } from './cut-pool.ts';

/**
 * PostgreSQL through its own tools and protocol. A connection is a URL without the password plus the
 * password apart: the password reaches child processes through PGPASSWORD (never argv, which any local user
 * can read) and is scrubbed from every error message.
 */
export interface DatabaseConnection {
  /** postgres://user@host:port/database?sslmode=… (a password in it is moved to `password`). */
  readonly url: string;
  readonly password?: string | undefined;
}

export function connectionFrom(url: string, password?: string): DatabaseConnection {
  const parsed = new URL(url);
  const inline = parsed.password === '' ? undefined : decodeURIComponent(parsed.password);
  parsed.password = '';
  const pass = password ?? inline;
  return pass === undefined ? { url: parsed.toString() } : { url: parsed.toString(), password: pass };
}

/** The same server, another database. */
export function withDatabase(connection: DatabaseConnection, database: string): DatabaseConnection {
  const parsed = new URL(connection.url);
  parsed.pathname = `/${encodeURIComponent(database)}`;
  return { ...connection, url: parsed.toString() };
}

export function databaseName(connection: DatabaseConnection): string {
  return decodeURIComponent(new URL(connection.url).pathname.slice(1));
}

export function redact(text: string, connection: DatabaseConnection): string {
  let result = text.replace(/(postgres(?:ql)?:\/\/[^:/@\s]+):[^@\s]*@/g, '$1:***@');
  if (connection.password) result = result.split(connection.password).join('***');
  return result;
}

/**
 * The one place a pg client's settings are made from a connection: the URL's parts as discrete fields, then
 * the password. (pg reads `connectionString` last, so its empty password would win over a `password` given
 * beside it: SCRAM then fails with "client password must be a string".)
 */
export function clientConfig(connection: DatabaseConnection, extra: pg.ClientConfig = {}): pg.ClientConfig {
  const { password: _inline, ...parts } = parseIntoClientConfig(connection.url);
  return {
    ...parts,
    ...extra,
    ...(connection.password === undefined ? {} : { password: connection.password }),
  };
}

export async function connect(
  connection: DatabaseConnection,
  extra: pg.ClientConfig = {},
): Promise<pg.Client> {
  const client = new pg.Client(clientConfig(connection, extra));
  client.on('error', () => undefined); // reported through the failing query instead
  try {
    await client.connect();
  } catch (error) {
    throw new SourceError(
      `cannot connect to ${redact(connection.url, connection)}: ${redact((error as Error).message, connection)}`,
    );
  }
  return client;
}

// ------------------------------------------------------------------------------------------ tools

/** A PostgreSQL client tool as a child process, with its stderr kept (bounded) for the error message. */
export interface Tool {
  readonly stdout: Readable;
  readonly stdin: Writable;
  /** Resolves when the tool exits 0; rejects with its stderr (redacted) otherwise. */
  readonly done: Promise<void>;
  /** Kills the tool if it still runs (a reader or writer on our side failed: it would wait on its pipes forever). */
  stop(): void;
}

/**
 * Runs `work` with a tool; when the work fails, the tool is stopped (and its exit awaited) before the error
 * goes on, so that no child process outlives the operation that started it.
 */
export async function withTool<T>(tool: Tool, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (error) {
    tool.stop();
    await tool.done.catch(() => undefined);
    throw error;
  }
}

export function runTool(
  command: string,
  args: readonly string[],
  connection: DatabaseConnection,
  options: { stdin?: boolean; timeoutMs?: number } = {},
): Tool {
  const child = spawn(command, args, {
    stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      ...(connection.password === undefined ? {} : { PGPASSWORD: connection.password }),
    },
  });
  let stderr = '';
  let timedOut = false;
  // A tool that hangs (waiting on input nobody sends, a server that stopped answering) is stopped, not waited on.
  const timer =
    options.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, options.timeoutMs);
  timer?.unref();
  child.stderr?.on('data', (data: Buffer) => {
    stderr = (stderr + data.toString('utf8')).slice(-8192);
  });
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (error: NodeJS.ErrnoException) => {
      reject(
        new SourceError(
          error.code === 'ENOENT'
            ? `${command} is not installed or not on PATH (install the PostgreSQL client tools, at least the server's version)`
            : `${command} could not start: ${error.message}`,
        ),
      );
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut)
        reject(
          new SourceError(
            `${command} did not finish within ${Math.round(options.timeoutMs! / 1000)} s and was stopped${stderr.trim() ? `: ${redact(stderr.trim(), connection)}` : ''}`,
          ),
        );
      else if (code === 0) resolve();
      else
        reject(
          new SourceError(
            `${command} ${signal ? `was killed by ${signal}` : `exited with code ${String(code)}`}: ${redact(stderr.trim(), connection) || 'no message'}`,
          ),
        );
    });
  });
  done.catch(() => undefined); // awaited by the caller; a stopped tool's rejection is not unhandled
  return {
    stdout: child.stdout ?? Readable.from([]),
    stdin: child.stdin ?? new PassThrough(),
    done,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

// ------------------------------------------------------------------------------------------ dump

export interface TableInfo {
  readonly schema: string;
  readonly name: string;
  /** Stored columns in attribute order (generated columns are computed again on restore). */
  readonly columns: readonly string[];
  /** The primary key's columns, which the COPY is ordered by (so equal data digests equal); none without one. */
  readonly orderBy: readonly string[];
  /** Names of the table's indexes, sorted. */
  readonly indexes: readonly string[];
  /** Its size on disk (pg_table_size): what parallel dumps balance by. */
  readonly bytes?: number;
  /** A large table read in key ranges, each by its own COPY (`splitRanges`): in key order, covering all. */
  readonly ranges?: readonly KeyRange[];
}

/**
 * Rows whose key (a one-column primary key) is above `after` (absent: from the first) and at most `upTo`
 * (absent: to the last), the bounds as the key's text, compared in the key's type and collation.
 */
export interface KeyRange {
  readonly after?: string;
  readonly upTo?: string;
}

export type TableShape = Pick<TableInfo, 'schema' | 'name' | 'columns' | 'orderBy'>;

/** Key types whose text form reads back as the same value and sorts as the column does. */
const SPLITTABLE_KEYS = new Set([
  'int2',
  'int4',
  'int8',
  'numeric',
  'uuid',
  'text',
  'varchar',
  'date',
  'timestamp',
  'timestamptz',
]);

/**
 * Key ranges for the tables larger than `splitBytes` with a one-column key of a splittable type: about one
 * range per `splitBytes` (at most `maxRanges`), cut at the planner's histogram bounds of the key (pg_stats:
 * nothing is scanned; a table never analyzed is not split). Run in the backup's snapshot transaction.
 */
export async function splitRanges(
  client: pg.Client,
  tables: readonly TableInfo[],
  splitBytes: number,
  maxRanges = 32,
): Promise<TableInfo[]> {
  const split: TableInfo[] = [];
  for (const table of tables) {
    const wanted = Math.min(maxRanges, Math.ceil((table.bytes ?? 0) / splitBytes));
    if (table.orderBy.length !== 1 || wanted < 2) {
      split.push(table);
      continue;
    }
    const { rows } = await client.query<{ type: string; bounds: string[] | null }>(
      `SELECT t.typname AS type, s.histogram_bounds::text::text[] AS bounds
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_stats s ON s.schemaname = $1 AND s.tablename = $2 AND s.attname = a.attname
        WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND a.attname = $3`,
      [table.schema, table.name, table.orderBy[0]],
    );
    const bounds = rows[0]?.bounds ?? [];
    if (!SPLITTABLE_KEYS.has(rows[0]?.type ?? '') || bounds.length < 3) {
      split.push(table);
      continue;
    }
    // The inner bounds, evenly spaced: `wanted - 1` cuts at most, each distinct
    const count = Math.min(wanted, bounds.length - 1);
    const cuts = [
      ...new Set(
        Array.from(
          { length: count - 1 },
          (_, n) => bounds[Math.round(((n + 1) * (bounds.length - 1)) / count)]!,
        ),
      ),
    ];
    const ranges: KeyRange[] = [];
    let after: string | undefined;
    for (const cut of cuts) {
      ranges.push({ ...(after === undefined ? {} : { after }), upTo: cut });
      after = cut;
    }
    ranges.push(after === undefined ? {} : { after });
    split.push(ranges.length > 1 ? { ...table, ranges } : table);
  }
  return split;
}

export interface SequenceInfo {
  readonly schema: string;
  readonly name: string;
  /** `last_value`, as text (it can exceed a JS number), and `is_called`: what `setval` takes back. */
  readonly lastValue: string;
  readonly isCalled: boolean;
}

export interface Snapshot {
  /** What `pg_export_snapshot()` returned: other sessions join with `SET TRANSACTION SNAPSHOT`. */
  readonly id: string;
  /** The database server's `now()` in the snapshot (ISO 8601): the backup's point in time. */
  readonly time: string;
  /** The source's `server_version`, recorded in the manifest. */
  readonly serverVersion: string;
  readonly database: string;
  readonly tables: readonly TableInfo[];
  readonly sequences: readonly SequenceInfo[];
  /** Runs a query in the snapshot's own transaction. */
  inSnapshot<T>(use: (client: pg.Client) => Promise<T>): Promise<T>;
  /** Ends the snapshot's transaction (after every reader has started). */
  close(): Promise<void>;
}

/** The user relations among `pg_class c, pg_namespace n`: not catalogs, TOAST, temporary or extension members. */
export const USER_RELATIONS = `
  c.relnamespace = n.oid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND c.relpersistence <> 't'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')`;

/**
 * Opens a repeatable-read transaction, exports its snapshot, and reads the catalog in it: every table's
 * columns and key, every sequence's value. Every reader of this backup (pg_dump, the COPY sessions) joins
 * the same snapshot, so the backup is one consistent instant.
 */
export async function openSnapshot(connection: DatabaseConnection, imported?: string): Promise<Snapshot> {
  const client = await connect(connection);
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    // A snapshot exported elsewhere (a replication slot's) is joined; otherwise this transaction exports one.
    if (imported !== undefined)
      await client.query(`SET TRANSACTION SNAPSHOT ${client.escapeLiteral(imported)}`);
    const head = await client.query<{ id: string; time: Date; version: string; database: string }>(
      `SELECT ${imported === undefined ? 'pg_export_snapshot()' : client.escapeLiteral(imported)} AS id, now() AS time, current_setting('server_version') AS version, current_database() AS database`,
    );
    const tables = await client.query<{
      schema: string;
      name: string;
      columns: string[];
      order_by: string[] | null;
      indexes: string[] | null;
      bytes: string;
    }>(`
      SELECT n.nspname AS schema, c.relname AS name,
        ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum) AS columns,
        (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
           FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = c.oid AND i.indisprimary) AS order_by,
        (SELECT array_agg(ic.relname::text ORDER BY ic.relname) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid) AS indexes,
        pg_table_size(c.oid)::text AS bytes
      FROM pg_class c, pg_namespace n
      WHERE c.relkind = 'r' AND ${USER_RELATIONS}
      ORDER BY 1, 2`);
    const sequences = await readSequences(client);
    const row = head.rows[0]!;
    return {
      id: row.id,
      time: row.time.toISOString(),
      serverVersion: row.version,
      database: row.database,
      tables: tables.rows.map((table) => ({
        schema: table.schema,
        name: table.name,
        columns: table.columns,
        orderBy: table.order_by ?? [],
        indexes: table.indexes ?? [],
        bytes: Number(table.bytes),
      })),
      sequences,
      inSnapshot: (use) => use(client),
      close: async () => {
        await client.query('COMMIT').catch(() => undefined);
        await client.end();
      },
    };
  } catch (error) {
    await client.end().catch(() => undefined);
    if (error instanceof SourceError) throw error;
    throw new SourceError(`reading the catalog failed: ${redact((error as Error).message, connection)}`);
  }
}

/** Every user sequence's value as this session sees it. */
export async function readSequences(client: pg.Client): Promise<SequenceInfo[]> {
  const sequenceNames = await client.query<{ schema: string; name: string }>(`
    SELECT n.nspname AS schema, c.relname AS name FROM pg_class c, pg_namespace n WHERE c.relkind = 'S' AND ${USER_RELATIONS} ORDER BY 1, 2`);
  const sequences: SequenceInfo[] = [];
  for (const sequence of sequenceNames.rows) {
    const value = await client.query<{ last_value: string; is_called: boolean }>(
      `SELECT last_value::text, is_called FROM ${qualified(client, sequence.schema, sequence.name)}`,
    );
    sequences.push({ ...sequence, lastValue: value.rows[0]!.last_value, isCalled: value.rows[0]!.is_called });
  }
  return sequences;
}

export function qualified(client: pg.Client, schema: string, name: string): string {
  return `${client.escapeIdentifier(schema)}.${client.escapeIdentifier(name)}`;
}

/** `pg_dump -Fc` of one section (or the whole schema) in the given snapshot. */
export function dumpArchive(
  connection: DatabaseConnection,
  what: 'pre-data' | 'post-data' | 'schema-only',
  snapshotId?: string,
): Tool {
  const args = ['--format=custom', '--no-sync', `--dbname=${connection.url}`];
  if (what === 'schema-only') args.push('--schema-only');
  else args.push(`--section=${what}`);
  if (snapshotId !== undefined) args.push(`--snapshot=${snapshotId}`);
  return runTool('pg_dump', args, connection);
}

/**
 * One table's rows as COPY text, in key order, read in the exported snapshot. Key order is what keeps
 * deduplication working under churn: new row versions land wherever free space is, but their keys do not
 * move, so unchanged key ranges produce unchanged chunks.
 */
export async function copyTable(
  connection: DatabaseConnection,
  snapshotId: string,
  table: TableShape,
  range?: KeyRange,
): Promise<{ stream: Readable; done: () => Promise<void> }> {
  const client = await connect(connection);
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    await client.query(`SET TRANSACTION SNAPSHOT ${client.escapeLiteral(snapshotId)}`);
  } catch (error) {
    await client.end().catch(() => undefined);
    throw new SourceError(
      `joining snapshot ${snapshotId} failed: ${redact((error as Error).message, connection)}`,
    );
  }
  const stream = client.query(copyTo(copyQuery(client, table, range)));
  return {
    stream,
    done: async () => {
      // A COPY broken off (by us, or its server process gone) leaves the client mid-query: a COMMIT would
      // wait behind it forever. Ending the connection rolls the read-only transaction back.
      if (stream.readableEnded) await client.query('COMMIT').catch(() => undefined);
      await client.end();
    },
  };
}

export function copyQuery(client: pg.Client, table: TableShape, range?: KeyRange): string {
  const columns = table.columns.map((column) => client.escapeIdentifier(column)).join(', ');
  const key = table.orderBy.length === 1 ? client.escapeIdentifier(table.orderBy[0]!) : undefined;
  if (range && (range.after !== undefined || range.upTo !== undefined) && !key)
    throw new EngineError(`${table.schema}.${table.name} has no one-column key to read in ranges`);
  const bounds = [
    ...(range?.after === undefined ? [] : [`${key} > ${client.escapeLiteral(range.after)}`]),
    ...(range?.upTo === undefined ? [] : [`${key} <= ${client.escapeLiteral(range.upTo)}`]),
  ];
  const where = bounds.length > 0 ? ` WHERE ${bounds.join(' AND ')}` : '';
  const order =
    table.orderBy.length > 0
      ? ` ORDER BY ${table.orderBy.map((column) => client.escapeIdentifier(column)).join(', ')}`
      : '';
  return `COPY (SELECT ${columns === '' ? '' : columns} FROM ${qualified(client, table.schema, table.name)}${where}${order}) TO STDOUT`;
}

/** SHA-256 and row count of a COPY text stream, computed as it passes. */
class CopyDigest {
  private readonly hash = createHash('sha256');
  rows = 0;

  update(data: Buffer): void {
    this.hash.update(data);
    this.rows += countLines(data);
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Reads a table back the way a backup reads it, and digests it (to compare with the recorded checksum). */
export async function digestTable(
  client: pg.Client,
  table: TableShape,
  range?: KeyRange,
): Promise<{ rows: number; digest: () => string }> {
  const digest = new CopyDigest();
  for await (const data of client.query(copyTo(copyQuery(client, table, range))))
    digest.update(data as Buffer);
  return { rows: digest.rows, digest: () => digest.digest() };
}

// ------------------------------------------------------------------------------------------ restore

/** Tables, views, sequences… in user schemas: a restore refuses a database that has any unless told to clean. */
export async function userRelationCount(connection: DatabaseConnection): Promise<number> {
  const client = await connect(connection);
  try {
    const result = await client.query<{ count: string }>(
      `SELECT count(*)::text AS count FROM pg_class c, pg_namespace n WHERE c.relkind IN ('r','p','v','m','S','f') AND ${USER_RELATIONS}`,
    );
    return Number(result.rows[0]!.count);
  } finally {
    await client.end();
  }
}

export async function createDatabase(connection: DatabaseConnection, name: string): Promise<void> {
  const client = await connect(connection);
  try {
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`);
  } finally {
    await client.end();
  }
}

export interface ArchiveRestoreOptions {
  readonly clean?: boolean;
  readonly jobs?: number;
  /** Restore only these table-of-contents lines (as `pg_restore --list` prints them). */
  readonly lines?: readonly string[];
  readonly exitOnError?: boolean;
  readonly noOwner?: boolean;
}

/**
 * An archive streamed out of the repository into a private temporary file (archives hold only DDL, so they
 * are small; a file lets pg_restore seek, run parallel jobs, and restore parts of it more than once).
 */
export class StagedArchive {
  private readonly dir: string;
  readonly file: string;

  private constructor(dir: string, file: string) {
    this.dir = dir;
    this.file = file;
  }

  static async stage(archive: AsyncIterable<Buffer>): Promise<StagedArchive> {
    const dir = await mkdtemp(join(tmpdir(), 'dr-restore-'));
    const file = join(dir, 'archive.dump');
    try {
      await pipeline(Readable.from(archive), createWriteStream(file, { mode: 0o600 }));
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    return new StagedArchive(dir, file);
  }

  /** The entries of the table of contents (comment lines left out). */
  async entries(): Promise<string[]> {
    return (await tocOf(this.file)).split('\n').filter((line) => line !== '' && !line.startsWith(';'));
  }

  /** The SQL of the chosen entries (pg_restore to a script: nothing is connected to). */
  async sql(
    connection: DatabaseConnection,
    lines: readonly string[],
    options: Pick<ArchiveRestoreOptions, 'noOwner'> = {},
  ): Promise<string> {
    if (lines.length === 0) return '';
    const tool = runTool(
      'pg_restore',
      [
        '--file=-',
        ...(options.noOwner ? ['--no-owner', '--no-privileges'] : []),
        `--use-list=${await this.listFile(lines)}`,
        this.file,
      ],
      connection,
    );
    const parts: Buffer[] = [];
    await withTool(
      tool,
      Promise.all([
        (async () => {
          for await (const data of tool.stdout) parts.push(data as Buffer);
        })(),
        tool.done,
      ]),
    );
    return Buffer.concat(parts).toString('utf8');
  }

  /**
   * Each entry's SQL, and the settings every session needs first (`header`), from one pg_restore run: the
   * script comes entry by entry in the list's order, each under a `-- Name:` comment. Undefined when it
   * cannot be split that way, or holds a psql command other than pg_dump's `\restrict` guard (a script for
   * psql only): then entries are restored by pg_restore one at a time.
   */
  async statements(
    connection: DatabaseConnection,
    lines: readonly string[],
    options: Pick<ArchiveRestoreOptions, 'noOwner'> = {},
  ): Promise<{ header: string; sql: Map<string, string> } | undefined> {
    if (lines.length === 0) return { header: '', sql: new Map() };
    const script = await this.sql(connection, lines, options);
    const kept: string[] = [];
    for (const line of script.split('\n')) {
      if (/^\\(un)?restrict\s/.test(line)) continue;
      if (line.startsWith('\\')) return undefined;
      kept.push(line);
    }
    const [header = '', ...blocks] = kept.join('\n').split(/^(?=--\n-- Name: )/m);
    if (blocks.length !== lines.length) return undefined;
    // A setting pg_restore changes between entries (a tablespace) would land in the entry before
    if (blocks.some((block) => /^SET /m.test(block)) || /^SET default_tablespace = (?!'';)/m.test(header))
      return undefined;
    return { header, sql: new Map(lines.map((line, index) => [line, blocks[index]!])) };
  }

  private async listFile(lines: readonly string[]): Promise<string> {
    const listFile = join(this.dir, `toc-${randomUUID()}.list`);
    await pipeline(Readable.from([`${lines.join('\n')}\n`]), createWriteStream(listFile, { mode: 0o600 }));
    return listFile;
  }

  async restore(connection: DatabaseConnection, options: ArchiveRestoreOptions): Promise<void> {
    if (options.lines?.length === 0) return;
    const args = [`--dbname=${connection.url}`];
    if (options.exitOnError !== false) args.push('--exit-on-error');
    if (options.clean) args.push('--clean', '--if-exists');
    if (options.noOwner) args.push('--no-owner', '--no-privileges');
    if (options.jobs && options.jobs > 1) args.push(`--jobs=${options.jobs}`);
    if (options.lines) args.push(`--use-list=${await this.listFile(options.lines)}`);
    args.push(this.file);
    const tool = runTool('pg_restore', args, connection);
    tool.stdout.resume();
    await tool.done.catch((error: unknown) => {
      throw new RestoreError((error as Error).message);
    });
  }

  async dispose(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Stages an archive, restores it (or the chosen entries of it), and removes the staged file. */
export async function restoreArchive(
  connection: DatabaseConnection,
  archive: AsyncIterable<Buffer>,
  options: ArchiveRestoreOptions & { pick?: (entry: string) => boolean },
): Promise<void> {
  const staged = await StagedArchive.stage(archive);
  try {
    const { pick, ...rest } = options;
    await staged.restore(connection, pick ? { ...rest, lines: (await staged.entries()).filter(pick) } : rest);
  } finally {
    await staged.dispose();
  }
}

/** `pg_restore --list` reads a table of contents: it never needs long (it is stopped after this). */
export const LIST_TIMEOUT_MS = 5 * 60_000;

/** `pg_restore --list`: the archive's table of contents; fails when the archive is not a valid one. */
export async function tocOf(
  file: string | AsyncIterable<Buffer>,
  connection: DatabaseConnection = { url: 'postgres://localhost/x' },
): Promise<string> {
  const fromStdin = typeof file !== 'string';
  const tool = runTool('pg_restore', fromStdin ? ['--list'] : ['--list', file], connection, {
    stdin: fromStdin,
    timeoutMs: LIST_TIMEOUT_MS,
  });
  const chunks: Buffer[] = [];
  tool.stdout.on('data', (data: Buffer) => chunks.push(data));
  let feeding: unknown;
  if (fromStdin)
    await pipeline(Readable.from(file), tool.stdin).catch((error: unknown) => {
      // pg_restore stops reading once it has the table of contents (EPIPE): only a failure of our side counts
      if ((error as NodeJS.ErrnoException).code !== 'EPIPE') feeding = error;
      tool.stdin.destroy();
    });
  try {
    await tool.done;
  } catch (error) {
    throw feeding ?? error;
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Streams rows into a table with COPY FROM STDIN. With `freeze` (a table the restore just created, loaded
 * in one stream), when the table is a plain one and empty: in one transaction with a TRUNCATE of it, as
 * `COPY … FREEZE`, so its rows are written frozen and the index builds and the first reads after the restore
 * do not rewrite every page to set hint bits (what makes it faster than pg_restore's plain COPY). Anything
 * that keeps FREEZE from applying (rows already there, a partitioned table, no right to TRUNCATE, a foreign
 * key pointing at it) loads it the plain way.
 */
export async function loadTable(
  client: pg.Client,
  table: { schema: string; name: string; columns: readonly string[] },
  rows: AsyncIterable<Buffer>,
  options: { readonly freeze?: boolean } = {},
): Promise<void> {
  const columns = table.columns.map((column) => client.escapeIdentifier(column)).join(', ');
  const name = qualified(client, table.schema, table.name);
  const frozen = options.freeze === true && (await truncatedForFreeze(client, name));
  const sink = client.query(copyFrom(`COPY ${name} (${columns}) FROM STDIN${frozen ? ' (FREEZE)' : ''}`));
  try {
    await pipeline(Readable.from(rows), sink);
  } catch (error) {
    if (frozen) await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
  if (frozen) await client.query('COMMIT');
}

/** Opens a transaction in which `name` was truncated (it was an empty plain table), or leaves none open. */
async function truncatedForFreeze(client: pg.Client, name: string): Promise<boolean> {
  await client.query('BEGIN');
  try {
    const { rows } = await client.query<{ kind: string }>(
      `SELECT c.relkind AS kind FROM pg_class c WHERE c.oid = $1::regclass`,
      [name],
    );
    if (rows[0]?.kind !== 'r') throw new Error('not a plain table');
    const { rowCount } = await client.query(`SELECT 1 FROM ${name} LIMIT 1`);
    if (rowCount !== 0) throw new Error('not empty');
    await client.query(`TRUNCATE ${name}`);
    return true;
  } catch {
    await client.query('ROLLBACK').catch(() => undefined);
    return false;
  }
}
