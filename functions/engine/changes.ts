import { createHash } from 'node:crypto';
import { StringDecoder } from 'node:string_decoder';
import pg from 'pg';
import { PgoutputPlugin, type Pgoutput } from 'pg-logical-replication';
import { RestoreError, SourceError } from './errors.ts';
import type { ChangeSet, Manifest, SequenceRecord } from './manifest.ts';
import {
  clientConfig,
  connect,
  qualified,
  redact,
  USER_RELATIONS,
  type DatabaseConnection,
} from './postgres.ts';

/**
 * Change-stream mode: row-level changes read from a logical replication slot (the built-in `pgoutput`
 * plugin, decoded by pg-logical-replication's parser), stored as JSON lines, and applied back in commit order.
 *
 * The slot is only ever *peeked* while a backup runs; it is advanced (`confirm`) after the backup is
 * committed. A backup that dies in between leaves the slot where it was, so the next one reads the same
 * changes again; one committed but not confirmed is covered by the reader skipping every transaction that
 * commits before the parent's `endLsn`. Nothing is lost, nothing applied twice.
 */

/** The slot and publication one deployment uses on its source database. */
export interface ChangeStream {
  readonly slot: string;
  readonly publication: string;
}

/**
 * The slot and publication for a database. Slot names are unique in the whole server, so the database's
 * name is in it (lowercased, other characters as _, and a hash of the exact name when that changed it).
 * `owner` keeps two users of one database apart (the deployment: dr_automation; drctl: drctl).
 */
export function changeStreamFor(database: string, owner = 'dr_automation'): ChangeStream {
  const plain = database.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  const exact =
    plain === database
      ? plain
      : `${plain.slice(0, 30)}_${createHash('sha256').update(database).digest('hex').slice(0, 8)}`;
  return { slot: `${owner}_${exact}`.slice(0, 63), publication: owner };
}

// ------------------------------------------------------------------------------------------ LSNs

export function lsnValue(lsn: string): bigint {
  const [high, low] = lsn.split('/');
  if (
    high === undefined ||
    low === undefined ||
    !/^[0-9A-Fa-f]{1,8}$/.test(high) ||
    !/^[0-9A-Fa-f]{1,8}$/.test(low)
  )
    throw new SourceError(`not an LSN: ${JSON.stringify(lsn.slice(0, 40))}`);
  return (BigInt(`0x${high}`) << 32n) | BigInt(`0x${low}`);
}

export function lsnText(value: bigint): string {
  return `${(value >> 32n).toString(16).toUpperCase()}/${(value & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Microseconds since the Unix epoch, as PostgreSQL commit times have them, to ISO 8601 with 6 decimals. */
export function microsToIso(micros: bigint): string {
  const millis = micros / 1000n;
  const iso = new Date(Number(millis)).toISOString();
  return `${iso.slice(0, 23)}${(micros % 1000n).toString().padStart(3, '0')}Z`;
}

/** An ISO 8601 instant (any number of decimals, any offset) to microseconds since the Unix epoch. */
export function isoToMicros(iso: string): bigint {
  const match = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})$/i.exec(iso);
  if (!match) throw new RestoreError(`not an ISO 8601 instant: ${JSON.stringify(iso.slice(0, 40))}`);
  const seconds = Date.parse(`${match[1]}${match[3]}`);
  if (Number.isNaN(seconds))
    throw new RestoreError(`not an ISO 8601 instant: ${JSON.stringify(iso.slice(0, 40))}`);
  const fraction = (match[2] ?? '').padEnd(6, '0').slice(0, 6);
  return BigInt(seconds) * 1000n + BigInt(fraction);
}

// ------------------------------------------------------------------------------------------ readiness

export interface UncapturedTable {
  readonly table: string;
  readonly reason: string;
  readonly fix: string;
}

export interface Readiness {
  /** Whether changes can be captured from this database as it stands. */
  readonly available: boolean;
  /** Why not, in words an operator can act on. */
  readonly reasons: readonly string[];
  readonly walLevel: string;
  /** Tables whose updates and deletes cannot be captured (no primary key, no replica identity). */
  readonly tablesWithoutIdentity: readonly UncapturedTable[];
  /** Unlogged tables: never in the WAL, so restored as the FULL left them. */
  readonly unloggedTables: readonly string[];
  /** `max_slot_wal_keep_size` in bytes, or undefined when unlimited (-1). */
  readonly maxSlotWalKeepBytes?: number;
}

/** Can this database's changes be captured? What stands in the way, and what to do. */
export async function changeStreamReadiness(connection: DatabaseConnection): Promise<Readiness> {
  const client = await connect(connection);
  try {
    return await readinessOf(client);
  } finally {
    await client.end();
  }
}

/** The user tables (`pg_class c`, `pg_namespace n`). */
const TABLES = `FROM pg_class c, pg_namespace n WHERE c.relkind = 'r' AND ${USER_RELATIONS}`;

async function readinessOf(client: pg.Client): Promise<Readiness> {
  // rds_replication exists on RDS/Aurora only; pg_has_role fails on a role that does not exist, hence the CASE.
  const settings = await client.query<{
    wal_level: string;
    keep: string;
    replication: boolean;
    slots: string;
  }>(`
    SELECT current_setting('wal_level') AS wal_level,
      (SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size') AS keep,
      (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
        OR CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')
             THEN pg_has_role(current_user, 'rds_replication', 'member') ELSE false END AS replication,
      current_setting('max_replication_slots') AS slots`);
  const row = settings.rows[0]!;
  const tables = await client.query<{
    schema: string;
    name: string;
    identity: string;
    keyed: boolean;
    unlogged: boolean;
  }>(`
    SELECT n.nspname AS schema, c.relname AS name, c.relreplident AS identity,
      EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)) AS keyed,
      c.relpersistence = 'u' AS unlogged
    ${TABLES} ORDER BY 1, 2`);
  const reasons: string[] = [];
  if (row.wal_level !== 'logical')
    reasons.push(
      `wal_level is ${row.wal_level}, logical decoding needs logical (set wal_level = logical and restart; on RDS/Aurora set rds.logical_replication = 1 in the parameter group and reboot)`,
    );
  if (!row.replication)
    reasons.push(
      'the backup user may not create replication slots (ALTER ROLE … REPLICATION; on RDS/Aurora GRANT rds_replication TO …)',
    );
  if (Number(row.slots) < 1) reasons.push('max_replication_slots is 0 (raise it and restart)');
  const tablesWithoutIdentity: UncapturedTable[] = [];
  const unloggedTables: string[] = [];
  for (const table of tables.rows) {
    const name = `${table.schema}.${table.name}`;
    if (table.unlogged) {
      unloggedTables.push(name);
      continue;
    }
    if (table.identity === 'f' || (table.identity !== 'n' && table.keyed)) continue;
    tablesWithoutIdentity.push({
      table: name,
      reason:
        table.identity === 'n'
          ? 'its replica identity is NOTHING: updates and deletes cannot be captured'
          : 'it has no primary key: updates and deletes cannot be captured',
      fix: `add a primary key, or ALTER TABLE ${client.escapeIdentifier(table.schema)}.${client.escapeIdentifier(table.name)} REPLICA IDENTITY FULL`,
    });
  }
  if (tablesWithoutIdentity.length > 0)
    reasons.push(
      `${tablesWithoutIdentity.length} table(s) have no primary key or replica identity: ${tablesWithoutIdentity
        .slice(0, 5)
        .map((table) => table.table)
        .join(', ')}${tablesWithoutIdentity.length > 5 ? ', …' : ''}`,
    );
  const keep = Number(row.keep);
  return {
    available: reasons.length === 0,
    reasons,
    walLevel: row.wal_level,
    tablesWithoutIdentity,
    unloggedTables,
    ...(keep >= 0 ? { maxSlotWalKeepBytes: keep * 1024 * 1024 } : {}),
  };
}

// ------------------------------------------------------------------------------------------ schema

/**
 * A fingerprint of the user schema: relations, columns and their types, constraints, indexes, views,
 * functions and triggers. Changes do not carry DDL; an INCREMENTAL whose fingerprint differs from its parent's
 * is taken as a FULL instead.
 */
export async function schemaFingerprint(client: pg.Client): Promise<string> {
  const result = await client.query<{ item: string }>(`
    WITH rel AS (
      SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c, pg_namespace n
      WHERE c.relkind IN ('r','p','v','m','S','f') AND ${USER_RELATIONS}
    )
    SELECT item FROM (
      SELECT format('rel %s.%s %s %s', nspname, relname, relkind, (SELECT relreplident FROM pg_class WHERE oid = rel.oid)) AS item FROM rel
      UNION ALL
      SELECT format('col %s.%s %s %s %s %s %s', r.nspname, r.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated)
        FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid WHERE a.attnum > 0 AND NOT a.attisdropped
      UNION ALL
      SELECT format('con %s.%s %s %s', r.nspname, r.relname, c.conname, pg_get_constraintdef(c.oid))
        FROM rel r JOIN pg_constraint c ON c.conrelid = r.oid
      UNION ALL
      SELECT format('idx %s', pg_get_indexdef(i.indexrelid)) FROM rel r JOIN pg_index i ON i.indrelid = r.oid
      UNION ALL
      SELECT format('view %s.%s %s', r.nspname, r.relname, md5(pg_get_viewdef(r.oid))) FROM rel r WHERE r.relkind IN ('v','m')
      UNION ALL
      SELECT format('trg %s.%s %s', r.nspname, r.relname, pg_get_triggerdef(t.oid)) FROM rel r JOIN pg_trigger t ON t.tgrelid = r.oid WHERE NOT t.tgisinternal
      UNION ALL
      SELECT format('fn %s.%s %s %s', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), md5(coalesce(p.prosrc, '')))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
      UNION ALL
      SELECT format('type %s.%s %s', n.nspname, t.typname, t.typtype) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype IN ('e','d','c') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
    ) items ORDER BY item COLLATE "C"`);
  const hash = createHash('sha256');
  for (const row of result.rows) hash.update(`${row.item}\n`);
  return hash.digest('hex');
}

// ------------------------------------------------------------------------------------------ slot

export interface SlotSnapshot {
  /** The exported snapshot the FULL dumps in: exactly the state at `consistentPoint`. */
  readonly snapshotId: string;
  readonly consistentPoint: string;
  /** Ends the replication connection (after every reader of the snapshot has started). */
  close(): Promise<void>;
}

/**
 * (Re)creates the slot for a FULL: the publication is set to the capturable tables, an older slot of the same
 * name is dropped (its stream belongs to a chain this FULL supersedes), and the new slot exports the snapshot
 * the FULL reads, so the dump and the stream meet exactly.
 */
export async function createSlot(
  connection: DatabaseConnection,
  stream: ChangeStream,
): Promise<SlotSnapshot> {
  const client = await connect(connection);
  try {
    const tables = await client.query<{ schema: string; name: string }>(
      `SELECT n.nspname AS schema, c.relname AS name ${TABLES} AND c.relpersistence = 'p' ORDER BY 1, 2`,
    );
    const list = tables.rows.map((table) => qualified(client, table.schema, table.name)).join(', ');
    const publication = client.escapeIdentifier(stream.publication);
    const exists = await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [
      stream.publication,
    ]);
    if (exists.rowCount === 0)
      await client.query(`CREATE PUBLICATION ${publication}${list ? ` FOR TABLE ${list}` : ''}`);
    else if (list) await client.query(`ALTER PUBLICATION ${publication} SET TABLE ${list}`);
    await dropSlotWith(client, stream.slot);
  } catch (error) {
    throw new SourceError(
      `preparing the change stream failed: ${redact((error as Error).message, connection)}`,
    );
  } finally {
    await client.end();
  }
  const replication = new pg.Client(
    // Not in @types/pg, read by pg's connection parameters: the walsender protocol on a database.
    clientConfig(connection, { replication: 'database' } as pg.ClientConfig),
  );
  replication.on('error', () => undefined);
  try {
    await replication.connect();
    const created = await replication.query<{ consistent_point: string; snapshot_name: string }>(
      `CREATE_REPLICATION_SLOT ${replication.escapeIdentifier(stream.slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`,
    );
    const row = created.rows[0]!;
    return {
      snapshotId: row.snapshot_name,
      consistentPoint: row.consistent_point,
      close: async () => {
        await replication.end().catch(() => undefined);
      },
    };
  } catch (error) {
    await replication.end().catch(() => undefined);
    throw new SourceError(
      `creating replication slot ${stream.slot} failed: ${redact((error as Error).message, connection)}`,
    );
  }
}

export interface SlotStatus {
  readonly slot: string;
  readonly active: boolean;
  readonly confirmedLsn: string;
  readonly currentLsn: string;
  /** WAL the server keeps for this slot. */
  readonly retainedBytes: number;
  /** WAL that can still be written before the slot is invalidated (undefined when unlimited). */
  readonly safeBytes?: number;
  /** reserved / extended / unreserved / lost. */
  readonly walStatus: string;
  /** `max_slot_wal_keep_size` in bytes, or undefined when unlimited. */
  readonly maxKeepBytes?: number;
}

export async function slotStatus(
  connection: DatabaseConnection,
  slot: string,
): Promise<SlotStatus | undefined> {
  const client = await connect(connection);
  try {
    return await slotStatusWith(client, slot);
  } finally {
    await client.end();
  }
}

async function slotStatusWith(client: pg.Client, slot: string): Promise<SlotStatus | undefined> {
  const result = await client.query<{
    active: boolean;
    confirmed: string | null;
    current: string;
    retained: string | null;
    safe: string | null;
    wal_status: string | null;
    keep: string;
  }>(
    `SELECT active, confirmed_flush_lsn::text AS confirmed, pg_current_wal_insert_lsn()::text AS current,
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint::text AS retained,
       safe_wal_size::text AS safe, wal_status,
       (SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size') AS keep
     FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`,
    [slot],
  );
  const row = result.rows[0];
  if (!row) return undefined;
  return {
    slot,
    active: row.active,
    confirmedLsn: row.confirmed ?? '0/0',
    currentLsn: row.current,
    retainedBytes: Number(row.retained ?? 0),
    ...(row.safe === null ? {} : { safeBytes: Number(row.safe) }),
    walStatus: row.wal_status ?? 'unknown',
    ...(Number(row.keep) >= 0 ? { maxKeepBytes: Number(row.keep) * 1024 * 1024 } : {}),
  };
}

/** Drops the slot (when it exists); true when one was dropped. */
export async function dropSlot(connection: DatabaseConnection, stream: ChangeStream): Promise<boolean> {
  const client = await connect(connection);
  try {
    const dropped = await dropSlotWith(client, stream.slot);
    await client.query(`DROP PUBLICATION IF EXISTS ${client.escapeIdentifier(stream.publication)}`);
    return dropped;
  } catch (error) {
    throw new SourceError(
      `dropping replication slot ${stream.slot} failed: ${redact((error as Error).message, connection)}`,
    );
  } finally {
    await client.end();
  }
}

async function dropSlotWith(client: pg.Client, slot: string): Promise<boolean> {
  const result = await client.query(
    'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()',
    [slot],
  );
  return (result.rowCount ?? 0) > 0;
}

/**
 * Advances the slot to the end of a committed backup's changes, so the server may recycle the WAL before it.
 * A slot already past that point is left alone.
 */
export async function confirmChanges(
  connection: DatabaseConnection,
  changes: Pick<ChangeSet, 'endLsn'> & { readonly slot: string },
): Promise<void> {
  const client = await connect(connection);
  try {
    const status = await slotStatusWith(client, changes.slot);
    if (!status) throw new SourceError(`replication slot ${changes.slot} no longer exists`);
    if (lsnValue(status.confirmedLsn) >= lsnValue(changes.endLsn)) return;
    await client.query('SELECT pg_replication_slot_advance($1, $2::pg_lsn)', [changes.slot, changes.endLsn]);
  } catch (error) {
    if (error instanceof SourceError) throw error;
    throw new SourceError(
      `advancing replication slot ${changes.slot} failed: ${redact((error as Error).message, connection)}`,
    );
  } finally {
    await client.end();
  }
}

/** The change set a backup read from the stream itself (a change-stream INCREMENTAL's last set). */
export function ownChangeSet(manifest: Manifest): ChangeSet | undefined {
  const set = manifest.changes?.sets.at(-1);
  return set?.backupId === manifest.id ? set : undefined;
}

/**
 * Once a backup is committed: advances its slot past the changes it holds (nothing for a backup that read
 * none). Never before — a run that dies first leaves them to the next one.
 */
export async function confirmBackup(connection: DatabaseConnection, manifest: Manifest): Promise<void> {
  const set = ownChangeSet(manifest);
  if (set) await confirmChanges(connection, { slot: manifest.changes!.slot, endLsn: set.endLsn });
}

// ------------------------------------------------------------------------------------------ reading

/** One line of a stored change set (JSON). Tuples are arrays in the relation's column order. */
export type ChangeLine =
  | {
      readonly r: number;
      readonly s: string;
      readonly n: string;
      readonly c: readonly string[];
      readonly t: readonly number[];
      readonly k: readonly string[];
      readonly i: string;
    }
  | { readonly b: number; readonly l: string; readonly ts: string }
  | { readonly o: 'I'; readonly r: number; readonly n: readonly Value[] }
  | {
      readonly o: 'U';
      readonly r: number;
      readonly k?: readonly Value[];
      readonly old?: readonly Value[];
      readonly n: readonly Value[];
    }
  | { readonly o: 'D'; readonly r: number; readonly k?: readonly Value[]; readonly old?: readonly Value[] }
  | { readonly o: 'T'; readonly rs: readonly number[]; readonly cascade: boolean; readonly restart: boolean }
  | { readonly c: string; readonly l: string; readonly ts: string };

/** A column value as text, null, or 0 for "unchanged TOAST value" (never sent by pgoutput for it). */
export type Value = string | null | 0;

export interface ReadSummary {
  transactions: number;
  changes: number;
  /** The stream is covered up to here: every transaction committing before it is in this set or earlier. */
  endLsn: string;
  /** The server's clock when the read started: every change in the set committed before it. */
  at: string;
  firstCommit?: { lsn: string; time: string };
  lastCommit?: { lsn: string; time: string; xid: number };
  /** Relations seen, by schema.name, with their columns (to compare with the FULL's tables). */
  relations: Map<string, readonly string[]>;
}

/** A relation whose columns differ from the FULL's: a schema change the fingerprint did not see yet. */
export class SchemaChangedError extends SourceError {}

/**
 * The changes committed after `afterLsn` and before the WAL position at the call, as JSON lines. Read with
 * `pg_logical_slot_peek_binary_changes` through a cursor (bounded memory here; the server spills to disk),
 * so the slot does not move. `expected` gives each captured table's columns: a relation that does not match
 * raises SchemaChangedError.
 */
export async function* readChanges(
  connection: DatabaseConnection,
  stream: ChangeStream,
  afterLsn: string,
  summary: ReadSummary,
  expected: ReadonlyMap<string, readonly string[]>,
): AsyncGenerator<Buffer> {
  const client = await connect(connection);
  const plugin = new PgoutputPlugin({ protoVersion: 1, publicationNames: [stream.publication] });
  const after = lsnValue(afterLsn);
  try {
    // The time first; then a transaction committed synchronously, which flushes the WAL written before it
    // (commits made with synchronous_commit = off included): decoding reads only flushed WAL, and the flush
    // position is what this set covers.
    const clock = await client.query<{ at: Date }>('SELECT clock_timestamp() AS at');
    summary.at = clock.rows[0]!.at.toISOString();
    await client.query('BEGIN');
    await client.query('SET LOCAL synchronous_commit = on');
    await client.query("SELECT pg_logical_emit_message(true, 'dr-automation', 'read')");
    await client.query('COMMIT');
    await client.query('BEGIN');
    const head = await client.query<{ lsn: string }>('SELECT pg_current_wal_flush_lsn()::text AS lsn');
    const upto = head.rows[0]!.lsn;
    let covered = lsnValue(upto) > after ? lsnValue(upto) : after;
    await client.query(
      `DECLARE dr_changes NO SCROLL CURSOR FOR SELECT data FROM pg_logical_slot_peek_binary_changes(${client.escapeLiteral(stream.slot)}, ${client.escapeLiteral(upto)}::pg_lsn, NULL, 'proto_version', '1', 'publication_names', ${client.escapeLiteral(stream.publication)})`,
    );
    let skipping = false;
    let xid = 0;
    // A transaction's begin line is written with its first change: transactions without any (on tables
    // outside the publication, or older servers sending empty ones) are left out.
    let begin: string | undefined;
    let changes = 0;
    for (;;) {
      const batch = await client.query<{ data: Buffer }>('FETCH 1000 FROM dr_changes');
      if (batch.rows.length === 0) break;
      const lines: string[] = [];
      for (const { data } of batch.rows) {
        const message = plugin.parse(data);
        const line = toLine(message, expected);
        if (line === undefined) continue;
        switch (message.tag) {
          case 'begin':
            skipping = message.commitLsn !== null && lsnValue(message.commitLsn) < after;
            xid = message.xid;
            begin = JSON.stringify(line);
            changes = 0;
            break;
          case 'relation':
            // Kept even in a skipped transaction: the server sends each relation once per read.
            summary.relations.set(
              `${message.schema}.${message.name}`,
              message.columns.map((column) => column.name),
            );
            lines.push(JSON.stringify(line));
            break;
          case 'commit': {
            const lsn = message.commitLsn ?? '0/0';
            const end = lsnValue(message.commitEndLsn ?? lsn);
            if (end > covered) covered = end;
            if (skipping || changes === 0) break;
            const time = microsToIso(message.commitTime as bigint);
            summary.transactions++;
            summary.firstCommit ??= { lsn, time };
            summary.lastCommit = { lsn, time, xid };
            lines.push(JSON.stringify(line));
            break;
          }
          default:
            if (skipping) break;
            if (begin !== undefined) lines.push(begin);
            begin = undefined;
            changes++;
            summary.changes++;
            lines.push(JSON.stringify(line));
        }
      }
      if (lines.length > 0) yield Buffer.from(`${lines.join('\n')}\n`);
    }
    await client.query('CLOSE dr_changes');
    await client.query('COMMIT');
    summary.endLsn = lsnText(covered);
  } catch (error) {
    if (error instanceof SourceError) throw error;
    throw new SourceError(
      `reading changes from slot ${stream.slot} failed: ${redact((error as Error).message, connection)}`,
    );
  } finally {
    await client.end();
  }
}

function toLine(
  message: Pgoutput.Message,
  expected: ReadonlyMap<string, readonly string[]>,
): ChangeLine | undefined {
  const tuple = (relation: Pgoutput.MessageRelation, values: Record<string, unknown> | null) =>
    values === null ? undefined : relation.columns.map((column) => value(values[column.name]));
  switch (message.tag) {
    case 'relation': {
      // Values as the server's text: pg's type parsers would turn timestamps into Dates and lose precision.
      for (const column of message.columns) column.parser = (raw: unknown) => raw;
      const name = `${message.schema}.${message.name}`;
      const columns = message.columns.map((column) => column.name);
      const known = expected.get(name);
      if (known && known.join('\u0000') !== columns.join('\u0000'))
        throw new SchemaChangedError(
          `table ${name} changed its columns since the FULL (${known.join(', ')} → ${columns.join(', ')})`,
        );
      if (!known) throw new SchemaChangedError(`table ${name} is not in the FULL`);
      return {
        r: message.relationOid,
        s: message.schema,
        n: message.name,
        c: columns,
        t: message.columns.map((column) => column.typeOid),
        k: message.keyColumns,
        i: message.replicaIdentity,
      };
    }
    case 'begin':
      return { b: message.xid, l: message.commitLsn ?? '0/0', ts: microsToIso(message.commitTime as bigint) };
    case 'commit':
      return {
        c: message.commitEndLsn ?? '0/0',
        l: message.commitLsn ?? '0/0',
        ts: microsToIso(message.commitTime as bigint),
      };
    case 'insert':
      return { o: 'I', r: message.relation.relationOid, n: tuple(message.relation, message.new)! };
    case 'update': {
      const key = message.key && message.relation.keyColumns.map((column) => value(message.key![column]));
      const old = tuple(message.relation, message.old);
      return {
        o: 'U',
        r: message.relation.relationOid,
        ...(key ? { k: key } : {}),
        ...(old ? { old } : {}),
        n: tuple(message.relation, message.new)!,
      };
    }
    case 'delete': {
      const key = message.key && message.relation.keyColumns.map((column) => value(message.key![column]));
      const old = tuple(message.relation, message.old);
      return { o: 'D', r: message.relation.relationOid, ...(key ? { k: key } : {}), ...(old ? { old } : {}) };
    }
    case 'truncate':
      return {
        o: 'T',
        rs: message.relations.map((relation) => relation.relationOid),
        cascade: message.cascade,
        restart: message.restartIdentity,
      };
    default:
      return undefined; // origin, type and logical messages carry no row data
  }
}

function value(raw: unknown): Value {
  if (raw === undefined) return 0;
  if (raw === null) return null;
  return typeof raw === 'string'
    ? raw
    : Buffer.isBuffer(raw)
      ? `\\x${raw.toString('hex')}`
      : JSON.stringify(raw);
}

// ------------------------------------------------------------------------------------------ applying

/** Bind parameters of one statement (the protocol's limit is 65535) and rows of one batch. */
const MAX_BATCH_PARAMETERS = 30_000;
const MAX_BATCH_ROWS = 1000;

interface TableShape {
  readonly types: ReadonlyMap<string, string>;
  readonly constrained: ReadonlySet<string>;
}

interface Batch {
  readonly signature: string;
  readonly kind: 'I' | 'U' | 'D';
  readonly relation: Relation;
  readonly shape: TableShape;
  /** UPDATE: the indexes of the columns it sets. */
  readonly set: readonly number[];
  readonly rows: (readonly Value[])[];
  readonly keys: Set<string>;
  readonly lsn: string;
}

interface Relation {
  readonly schema: string;
  readonly name: string;
  readonly columns: readonly string[];
  readonly key: readonly string[];
  readonly full: boolean;
}

export interface ApplyResult {
  transactions: number;
  changes: number;
  lastCommit?: { lsn: string; time: string; xid: number };
  /** True when a transaction later than `until` was found (the restore stopped there). */
  stopped: boolean;
}

/**
 * Applies stored change sets in commit order, one transaction per source transaction, up to (and
 * including) the last transaction committed at or before `until`: a prefix of the commit order, so the result
 * is a state the source really had. Triggers and foreign keys are not fired again (session_replication_role
 * = replica): their effects are in the stream already. Every update and delete must hit exactly one row.
 */
export class ChangeApplier {
  private readonly client: pg.Client;
  private readonly until: bigint | undefined;
  private readonly relations = new Map<number, Relation>();
  private readonly statements = new Map<string, string>();
  /** The source transaction being applied: its xid, commit LSN and changes so far. */
  private open: { xid: number; lsn: string; changes: number } | undefined;
  /** Consecutive like changes to one table, applied as one statement (see `batchable`). */
  private pending: Batch | undefined;
  /** Per table of the target: column types, and the columns of unique or exclusion constraints. */
  private readonly shapes = new Map<string, Promise<TableShape>>();
  readonly result: ApplyResult = { transactions: 0, changes: 0, stopped: false };

  private readonly wanted: (schema: string, name: string) => boolean;

  private constructor(
    client: pg.Client,
    until: bigint | undefined,
    wanted: (schema: string, name: string) => boolean,
  ) {
    this.client = client;
    this.until = until;
    this.wanted = wanted;
  }

  /** `wanted`: the tables restored (a partial restore leaves the others' changes out). */
  static async open(
    target: DatabaseConnection,
    until?: string,
    wanted: (schema: string, name: string) => boolean = () => true,
  ): Promise<ChangeApplier> {
    const client = await connect(target);
    try {
      await client.query('SET session_replication_role = replica');
      await client.query('SET synchronous_commit = off');
    } catch (error) {
      await client.end().catch(() => undefined);
      throw new RestoreError(
        `applying changes needs a user that may set session_replication_role (a superuser, or rds_superuser on RDS): ${(error as Error).message}`,
      );
    }
    return new ChangeApplier(client, until === undefined ? undefined : isoToMicros(until), wanted);
  }

  /** Starts a change set: relation numbers are per set. */
  beginSet(): void {
    this.relations.clear();
  }

  /** Feeds lines of a change set; returns false once `until` has been passed (nothing more is applied). */
  async apply(line: ChangeLine): Promise<boolean> {
    if (this.result.stopped) return false;
    if ('r' in line && 's' in line) {
      await this.flush(); // a relation sent again may have changed: what is pending used the old one
      this.relations.set(line.r, {
        schema: line.s,
        name: line.n,
        columns: line.c,
        key: line.k,
        full: line.i === 'full',
      });
      return true;
    }
    if ('b' in line) {
      if (this.until !== undefined && isoToMicros(line.ts) > this.until) {
        this.result.stopped = true;
        return false;
      }
      await this.client.query('BEGIN');
      this.open = { xid: line.b, lsn: line.l, changes: 0 };
      return true;
    }
    const open = this.open;
    if (!open) throw new RestoreError('a change outside a transaction: the change set is damaged');
    try {
      // Applied as read (a source transaction of any size streams through), committed with its commit line.
      if ('c' in line && 'ts' in line && !('o' in line)) {
        await this.flush();
        await this.client.query('COMMIT');
        this.result.transactions++;
        this.result.changes += open.changes;
        this.result.lastCommit = { lsn: line.l, time: line.ts, xid: open.xid };
        this.open = undefined;
      } else {
        await this.applyChange(line, open.lsn);
        open.changes++;
      }
    } catch (error) {
      await this.client.query('ROLLBACK').catch(() => undefined);
      this.open = undefined;
      this.pending = undefined;
      throw error;
    }
    return true;
  }

  private relation(id: number): Relation {
    const relation = this.relations.get(id);
    if (!relation)
      throw new RestoreError(`a change names relation ${id}, which the change set does not define`);
    return relation;
  }

  private async applyChange(line: ChangeLine, lsn: string): Promise<void> {
    if (!('o' in line)) return;
    if (await this.batched(line, lsn)) return;
    await this.flush();
    const client = this.client;
    if (line.o === 'T') {
      const names = line.rs
        .map((id) => this.relation(id))
        .filter((relation) => this.wanted(relation.schema, relation.name))
        .map((relation) => qualified(client, relation.schema, relation.name));
      if (names.length === 0) return;
      await client.query(
        `TRUNCATE ${names.join(', ')}${line.restart ? ' RESTART IDENTITY' : ''}${line.cascade ? ' CASCADE' : ''}`,
      );
      return;
    }
    const relation = this.relation(line.r);
    if (!this.wanted(relation.schema, relation.name)) return;
    const table = qualified(client, relation.schema, relation.name);
    const what = `${line.o === 'I' ? 'insert into' : line.o === 'U' ? 'update of' : 'delete from'} ${relation.schema}.${relation.name} (commit ${lsn})`;
    if (line.o === 'I') {
      const columns = relation.columns.map((column) => client.escapeIdentifier(column)).join(', ');
      const params = relation.columns.map((_, index) => `$${index + 1}`).join(', ');
      await this.run(`INSERT INTO ${table} (${columns}) VALUES (${params})`, line.n, what, false);
      return;
    }
    const where = this.where(relation, line);
    if (line.o === 'U') {
      const set: string[] = [];
      const values: Value[] = [];
      line.n.forEach((item, index) => {
        if (item === 0) return;
        values.push(item);
        set.push(`${client.escapeIdentifier(relation.columns[index]!)} = $${values.length}`);
      });
      const condition = where.sql(values.length);
      await this.run(
        `UPDATE ${table} SET ${set.join(', ')} WHERE ${condition}`,
        [...values, ...where.values],
        what,
        true,
      );
      return;
    }
    await this.run(`DELETE FROM ${table} WHERE ${where.sql(0)}`, where.values, what, true);
  }

  /**
   * Adds an insert, a key-preserving update or a delete by key to the pending batch when it is like the
   * batch's changes (same table, same kind, same columns set) and touches a key the batch has not; otherwise
   * flushes first and starts a new batch. A batch is one statement whose row count must equal its size, so
   * each change still hits exactly one row. Applied in one statement, the changes of a batch see no order:
   * only changes whose order cannot matter are batched — distinct keys, no trigger or foreign key fires
   * (session_replication_role = replica), and no update of a column under a unique or exclusion constraint
   * (the source's order may have been what kept it satisfied). Returns false for what is applied alone.
   */
  private async batched(line: Extract<ChangeLine, { o: string }>, lsn: string): Promise<boolean> {
    if (line.o === 'T') return false;
    const relation = this.relation(line.r);
    if (!this.wanted(relation.schema, relation.name)) return true;
    if (line.o !== 'I' && (relation.full || relation.key.length === 0)) return false;
    if (line.o === 'U' && line.k !== undefined) return false; // the key changed
    if (line.o === 'D' && line.k === undefined) return false;
    const shape = await this.shape(relation);
    let set: number[] = [];
    if (line.o === 'U') {
      // The key is unchanged (no old key sent): set the other columns that came with the new tuple.
      set = line.n.flatMap((value, index) =>
        value === 0 || relation.key.includes(relation.columns[index]!) ? [] : [index],
      );
      if (set.length === 0 || set.some((index) => shape.constrained.has(relation.columns[index]!)))
        return false;
    }
    if (line.o === 'U' && relation.key.some((column) => line.n[relation.columns.indexOf(column)] === 0))
      return false; // an unchanged TOASTed key: found the single-row way
    const keyOf = (values: readonly Value[]) =>
      JSON.stringify(relation.key.map((column) => values[relation.columns.indexOf(column)] ?? null));
    const key = line.o === 'I' ? undefined : line.o === 'D' ? JSON.stringify(line.k ?? null) : keyOf(line.n);
    const signature = `${line.o} ${line.r} ${set.join(',')}`;
    const values =
      line.o === 'I'
        ? line.n
        : line.o === 'D'
          ? (line.k ?? [])
          : [
              ...relation.key.map((column) => line.n[relation.columns.indexOf(column)] ?? null),
              ...set.map((index) => line.n[index]!),
            ];
    const perRow = Math.max(values.length, 1);
    const pending = this.pending;
    if (
      !pending ||
      pending.signature !== signature ||
      (key !== undefined && pending.keys.has(key)) ||
      (pending.rows.length + 1) * perRow > MAX_BATCH_PARAMETERS ||
      pending.rows.length >= MAX_BATCH_ROWS
    ) {
      await this.flush();
      this.pending = { signature, kind: line.o, relation, shape, set, rows: [], keys: new Set(), lsn };
    }
    const batch = this.pending!;
    batch.rows.push(values);
    if (key !== undefined) batch.keys.add(key);
    return true;
  }

  /** Applies the pending batch as one statement. */
  private async flush(): Promise<void> {
    const batch = this.pending;
    if (!batch) return;
    this.pending = undefined;
    const client = this.client;
    const { relation, shape, rows } = batch;
    const table = qualified(client, relation.schema, relation.name);
    const kind = batch.kind === 'I' ? 'insert into' : batch.kind === 'U' ? 'update of' : 'delete from';
    const what = `${kind} ${relation.schema}.${relation.name} (${rows.length} rows, commit ${batch.lsn})`;
    const typed = (column: string, parameter: number) =>
      `$${parameter}::${shape.types.get(column) ?? 'text'}`;
    let parameter = 0;
    const tuples = (columns: readonly string[], cast: boolean) =>
      rows
        .map(
          () =>
            `(${columns.map((column) => (cast ? typed(column, ++parameter) : `$${++parameter}`)).join(', ')})`,
        )
        .join(', ');
    const alias = (prefix: string, count: number) =>
      Array.from({ length: count }, (_, index) => `${prefix}${index}`);
    let text: string;
    if (batch.kind === 'I') {
      const columns = relation.columns.map((column) => client.escapeIdentifier(column)).join(', ');
      text = `INSERT INTO ${table} (${columns}) VALUES ${tuples(relation.columns, false)}`;
    } else {
      const keys = alias('k', relation.key.length);
      const match = relation.key
        .map((column, index) => `t.${client.escapeIdentifier(column)} = v.${keys[index]}`)
        .join(' AND ');
      if (batch.kind === 'D') {
        text = `DELETE FROM ${table} AS t USING (VALUES ${tuples(relation.key, true)}) AS v(${keys.join(', ')}) WHERE ${match}`;
      } else {
        const setColumns = batch.set.map((index) => relation.columns[index]!);
        const sets = alias('c', setColumns.length);
        text = `UPDATE ${table} AS t SET ${setColumns
          .map((column, index) => `${client.escapeIdentifier(column)} = v.${sets[index]}`)
          .join(
            ', ',
          )} FROM (VALUES ${tuples([...relation.key, ...setColumns], true)}) AS v(${[...keys, ...sets].join(', ')}) WHERE ${match}`;
      }
    }
    let result: pg.QueryResult;
    try {
      // A lone row's text repeats (the same table and columns): prepared once. Batch texts vary with their size.
      result = await client.query({
        ...(rows.length === 1 ? { name: this.statementName(text) } : {}),
        text,
        values: rows.flat(),
      });
    } catch (error) {
      throw new RestoreError(`${what}: ${(error as Error).message}`);
    }
    if (result.rowCount !== rows.length)
      throw new RestoreError(
        `${what}: matched ${result.rowCount ?? 0} rows instead of ${rows.length}; the restored database does not match the source`,
      );
  }

  /** The target table's column types and the columns under a unique or exclusion constraint. */
  private shape(relation: Relation): Promise<TableShape> {
    const name = qualified(this.client, relation.schema, relation.name);
    let shape = this.shapes.get(name);
    if (!shape) {
      shape = this.client
        .query<{ column: string; type: string; constrained: boolean }>(
          `SELECT a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type,
                  EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique AND a.attnum = ANY (i.indkey))
                  OR EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = a.attrelid AND c.contype = 'x' AND a.attnum = ANY (c.conkey))
                  OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indexprs IS NOT NULL) AS constrained
             FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped`,
          [name],
        )
        .then((result) => ({
          types: new Map(result.rows.map((row) => [row.column, row.type])),
          constrained: new Set(result.rows.filter((row) => row.constrained).map((row) => row.column)),
        }));
      this.shapes.set(name, shape);
    }
    return shape;
  }

  /** The row an update or delete aims at: its key (old key, or the new tuple's), or the whole old row. */
  private where(
    relation: Relation,
    line: { k?: readonly Value[]; old?: readonly Value[]; n?: readonly Value[] },
  ): { sql: (offset: number) => string; values: Value[] } {
    const client = this.client;
    if (relation.full || relation.key.length === 0) {
      const old = line.old;
      if (!old)
        throw new RestoreError(`a change to ${relation.schema}.${relation.name} carries no old row to find`);
      const used = relation.columns
        .map((column, index) => ({ column, value: old[index] ?? null }))
        .filter((item) => item.value !== 0);
      const table = qualified(client, relation.schema, relation.name);
      return {
        sql: (offset) =>
          `ctid = (SELECT ctid FROM ${table} WHERE ${used
            .map(
              (item, index) =>
                `${client.escapeIdentifier(item.column)}::text IS NOT DISTINCT FROM $${offset + index + 1}::text`,
            )
            .join(' AND ')} LIMIT 1)`,
        values: used.map((item) => item.value),
      };
    }
    const keyValues =
      line.k ?? relation.key.map((column) => (line.old ?? line.n)![relation.columns.indexOf(column)] ?? null);
    return {
      sql: (offset) =>
        relation.key
          .map((column, index) => `${client.escapeIdentifier(column)} = $${offset + index + 1}`)
          .join(' AND '),
      values: [...keyValues],
    };
  }

  private async run(
    text: string,
    values: readonly Value[],
    what: string,
    exactlyOne: boolean,
  ): Promise<void> {
    const name = this.statementName(text);
    let result: pg.QueryResult;
    try {
      result = await this.client.query({ name, text, values: values as unknown[] });
    } catch (error) {
      throw new RestoreError(`${what}: ${(error as Error).message}`);
    }
    if (exactlyOne && result.rowCount !== 1)
      throw new RestoreError(
        `${what}: matched ${result.rowCount ?? 0} rows instead of 1; the restored database does not match the source`,
      );
  }

  /** The name of a prepared statement for this text (prepared on its first use by the pg client). */
  private statementName(text: string): string {
    let name = this.statements.get(text);
    if (name === undefined) {
      name = `dr_apply_${this.statements.size + 1}`;
      this.statements.set(text, name);
    }
    return name;
  }

  async setSequences(sequences: readonly SequenceRecord[]): Promise<void> {
    for (const sequence of sequences)
      await this.client.query('SELECT pg_catalog.setval($1, $2::bigint, $3)', [
        qualified(this.client, sequence.schema, sequence.name),
        sequence.lastValue,
        sequence.isCalled,
      ]);
  }

  async close(): Promise<void> {
    await this.client.end().catch(() => undefined);
  }
}

/** Splits a stream of bytes into JSON lines. */
export async function* changeLines(source: AsyncIterable<Buffer>): AsyncGenerator<ChangeLine> {
  const decoder = new StringDecoder('utf8');
  let carry = '';
  for await (const data of source) {
    const text = carry + decoder.write(data);
    const lines = text.split('\n');
    carry = lines.pop()!;
    for (const line of lines) if (line !== '') yield JSON.parse(line) as ChangeLine;
  }
  carry += decoder.end();
  if (carry !== '') yield JSON.parse(carry) as ChangeLine;
}
