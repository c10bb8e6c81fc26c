import { createHash } from 'node:crypto';
import pg from 'pg';
import { PgoutputPlugin, type Pgoutput } from 'pg-logical-replication';
import { RestoreError, SourceError } from './errors.ts';
import type { ChangeSet, Manifest } from './manifest.ts';
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
