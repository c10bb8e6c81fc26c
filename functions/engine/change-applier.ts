import { isoToMicros, type ChangeLine, type Value } from './changes.ts';
import { StringDecoder } from 'node:string_decoder';
import type pg from 'pg';
import { RestoreError } from './errors.ts';
import type { SequenceRecord } from './manifest.ts';
import { connect, qualified, type DatabaseConnection } from './postgres.ts';

/**
 * Change-stream restores: the JSON lines a change-stream backup holds (engine/changes.ts reads them from the
 * slot), applied back in commit order, one target transaction per source transaction, in batches.
 */

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
