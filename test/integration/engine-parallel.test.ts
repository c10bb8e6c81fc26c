import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { backupPart, partIndexName, type FanOut } from '../../functions/engine/fanout.ts';
import type { Manifest } from '../../functions/engine/manifest.ts';
import { gc, listBackups, verify } from '../../functions/engine/maintenance.ts';
import { Repository } from '../../functions/engine/repository.ts';
import { loadTable } from '../../functions/engine/postgres.ts';
import { availableParallelism } from 'node:os';
import { buildWorkers, checkTables, restoreDatabase } from '../../functions/engine/restore.ts';
import { loadSqlExport, newRepository, schemaOf, testKey } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * Issue 20: a FULL read by several connections (and by several workers: the fan-out) is still one point in
 * time; a parallel restore gives the same data and schema; a job that dies fails the whole backup.
 */
let server: TestPostgres;

/**
 * A bank: every transfer inserts a ledger row, moves the balance of its account, and counts itself in
 * `totals`, in one transaction. Whatever the moment, sum(balance) = sum(amount) and totals.n = count(ledger):
 * a backup whose tables were read at different moments breaks it.
 */
async function createBank(database: string): Promise<void> {
  await server.sql(
    database,
    `
    CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
    CREATE TABLE ledger (id bigserial PRIMARY KEY, account int NOT NULL REFERENCES accounts(id), amount bigint NOT NULL, memo text NOT NULL);
    CREATE TABLE totals (id int PRIMARY KEY, n bigint NOT NULL);
    CREATE SCHEMA "Billing";
    CREATE TABLE "Billing"."Invoice" (id bigint PRIMARY KEY, ledger bigint NOT NULL REFERENCES ledger(id), note text);
    CREATE TABLE "Billing".lines (id bigserial PRIMARY KEY, invoice bigint NOT NULL REFERENCES "Billing"."Invoice"(id), amount bigint NOT NULL);
    CREATE INDEX lines_invoice_idx ON "Billing".lines (invoice);
    INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 1000) g;
    INSERT INTO ledger (account, amount, memo) SELECT 1 + g % 1000, g % 97, repeat(md5(g::text), 4) FROM generate_series(1, 120000) g;
    UPDATE accounts a SET balance = s.total FROM (SELECT account, sum(amount) AS total FROM ledger GROUP BY account) s WHERE s.account = a.id;
    INSERT INTO totals VALUES (1, 120000);
    INSERT INTO "Billing"."Invoice" SELECT id, id, 'invoice ' || id FROM ledger WHERE id % 10 = 0;
    INSERT INTO "Billing".lines (invoice, amount) SELECT id, id % 13 FROM "Billing"."Invoice", generate_series(1, 3);
    ANALYZE;
  `,
  );
}

async function invariant(database: string): Promise<{ holds: boolean; transfers: number }> {
  const { rows } = await server.sql(
    database,
    `SELECT (SELECT sum(balance) FROM accounts) = (SELECT sum(amount) FROM ledger)
        AND (SELECT n FROM totals) = (SELECT count(*) FROM ledger) AS holds,
       (SELECT n FROM totals)::int AS transfers`,
  );
  return rows[0] as { holds: boolean; transfers: number };
}

/** Transfers in a loop until stopped; answers how many committed. */
function writer(database: string): { stop: () => Promise<number> } {
  let going = true;
  let committed = 0;
  const running = (async () => {
    const client = new pg.Client({ connectionString: server.url(database) });
    await client.connect();
    try {
      for (let n = 0; going; n++) {
        await client.query('BEGIN');
        const amount = 1 + (n % 50);
        const account = 1 + (n % 1000);
        await client.query(`INSERT INTO ledger (account, amount, memo) VALUES ($1, $2, 'during')`, [
          account,
          amount,
        ]);
        await client.query('UPDATE accounts SET balance = balance + $2 WHERE id = $1', [account, amount]);
        await client.query('UPDATE totals SET n = n + 1 WHERE id = 1');
        await client.query('COMMIT');
        committed++;
      }
    } finally {
      await client.end();
    }
  })();
  return {
    stop: async () => {
      going = false;
      await running;
      return committed;
    },
  };
}

/** What makes two backups the same content: each table's rows, checksum and chunks. */
const contentOf = (manifest: Manifest) =>
  manifest.database!.tables.map(({ schema, name, rows, sha256, size, chunks, ranges }) => ({
    table: `${schema}.${name}`,
    rows,
    sha256,
    size,
    chunks,
    ranges,
  }));

/** Restores a backup of `app` into a new database with `jobs`: every check passes, data and schema as `app`'s. */
async function restoresAsApp(
  repository: Repository,
  manifest: Manifest,
  database: string,
  jobs: number,
): Promise<void> {
  await server.createDatabase(database);
  const restored = await restoreDatabase(repository, manifest, { target: server.connection(database), jobs });
  expect(restored.checks.every((check) => check.ok)).toBe(true);
  expect(await tableChecksums(server, database)).toEqual(await tableChecksums(server, 'app'));
  expect(await schemaOf(server, database)).toBe(await schemaOf(server, 'app'));
}

beforeAll(async () => {
  server = await startPostgres();
  await server.createDatabase('bank');
  await createBank('bank');
  await server.createDatabase('app');
  await createEventManager(server, 'app', 3);
});
afterAll(async () => {
  await server?.stop();
});

describe('parallel FULL and restore', () => {
  it('reads the tables of a database being written to over several connections, at one point in time', async () => {
    const { repository } = await newRepository();
    const load = writer('bank');
    // Some transfers before, during and after the snapshot
    await new Promise((resolve) => setTimeout(resolve, 200));
    const { manifest } = await backup(repository, {
      type: 'FULL',
      source: { database: server.connection('bank') },
      tableConcurrency: 4,
      threads: 2,
      // The ledger in key ranges too, each its own COPY
      splitBytes: 2 * 1024 * 1024,
    });
    const committed = await load.stop();
    expect(
      manifest.database!.tables.find((table) => table.name === 'ledger')!.ranges!.length,
    ).toBeGreaterThan(2);
    const after = await invariant('bank');
    expect(after.holds).toBe(true);
    expect(committed).toBeGreaterThan(0);

    await server.createDatabase('bank_restored');
    const restored = await restoreDatabase(repository, manifest, {
      target: server.connection('bank_restored'),
      jobs: 3,
    });
    expect(restored.checks.every((check) => check.ok)).toBe(true);
    const point = await invariant('bank_restored');
    expect(point.holds).toBe(true);
    // A point during the run: transfers before it are in, later ones are not
    expect(point.transfers).toBeGreaterThanOrEqual(120000);
    expect(point.transfers).toBeLessThan(after.transfers);
  });

  it('restores with several jobs to the same data and schema as one job, foreign keys across schemas included', async () => {
    const { repository } = await newRepository();
    const { manifest } = await backup(repository, {
      type: 'FULL',
      source: { database: server.connection('app') },
      tableConcurrency: 3,
    });
    await restoresAsApp(repository, manifest, 'app_jobs1', 1);
    await restoresAsApp(repository, manifest, 'app_jobs4', 4);

    // Tables loaded in one stream are written frozen (COPY FREEZE): every page all-frozen, nothing for the
    // index builds or the first vacuum to rewrite
    await server.sql('app_jobs4', 'CREATE EXTENSION IF NOT EXISTS pg_visibility');
    const frozen = await server.sql(
      'app_jobs4',
      `SELECT c.relname AS name, count(*) FILTER (WHERE NOT v.all_frozen)::int AS unfrozen, count(*)::int AS pages
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, pg_visibility_map(c.oid) v
       WHERE c.relkind = 'r' AND n.nspname = 'public' GROUP BY c.relname`,
    );
    expect(frozen.rows.length).toBeGreaterThan(2);
    for (const row of frozen.rows) expect(row, row.name).toMatchObject({ unfrozen: 0 });

    // The bank's schema: a quoted schema and table referenced by a foreign key
    const bank = await backup(repository, { type: 'FULL', source: { database: server.connection('bank') } });
    await server.createDatabase('bank_jobs4');
    await restoreDatabase(repository, bank.manifest, { target: server.connection('bank_jobs4'), jobs: 4 });
    const keys = await server.sql(
      'bank_jobs4',
      `SELECT conname FROM pg_constraint WHERE contype = 'f' ORDER BY 1`,
    );
    expect(keys.rows.map((row: { conname: string }) => row.conname)).toEqual([
      'Invoice_ledger_fkey',
      'ledger_account_fkey',
      'lines_invoice_fkey',
    ]);
  });

  it('gives an index build no parallel helpers while other slots run on a server sharing our cores, and never more than the server allows', async () => {
    // Four tables of three indexes each: at jobs 4 their builds overlap
    await server.createDatabase('indexed');
    await server.sql(
      'indexed',
      [1, 2, 3, 4]
        .map(
          (n) => `CREATE TABLE t${n} (id int PRIMARY KEY, a int, b text, c int);
          INSERT INTO t${n} SELECT g, g % 1000, md5(g::text), g % 7 FROM generate_series(1, 40000) g;
          CREATE INDEX t${n}_a ON t${n} (a); CREATE INDEX t${n}_b ON t${n} (b); CREATE INDEX t${n}_ac ON t${n} (a, c);`,
        )
        .join('\n'),
    );
    const { repository } = await newRepository();
    const { manifest } = await backup(repository, {
      type: 'FULL',
      source: { database: server.connection('indexed') },
    });
    /** Each CREATE INDEX the restore runs says, by NOTIFY, how many helpers its session allowed it. */
    const helpersPerBuild = async (database: string, jobs: number, setup = ''): Promise<number[]> => {
      await server.createDatabase(database);
      await server.sql(
        database,
        `CREATE FUNCTION note_build() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_notify('builds', current_setting('max_parallel_maintenance_workers')); END $$;
         CREATE EVENT TRIGGER note_build ON ddl_command_end WHEN TAG IN ('CREATE INDEX') EXECUTE FUNCTION note_build();
         ${setup}`,
      );
      const listener = new pg.Client({ connectionString: server.url(database) });
      await listener.connect();
      const seen: number[] = [];
      listener.on('notification', (message) => seen.push(Number(message.payload)));
      try {
        await listener.query('LISTEN builds');
        await restoreDatabase(repository, manifest, { target: server.connection(database), jobs });
        await listener.query('SELECT 1'); // delivered before it answers
      } finally {
        await listener.end();
      }
      return seen;
    };
    const cores = availableParallelism();
    const shown = (await server.sql('postgres', `SHOW max_parallel_maintenance_workers`)).rows[0] as {
      max_parallel_maintenance_workers: string;
    };
    const serverDefault = Number(shown.max_parallel_maintenance_workers);
    const allowed = new Set(
      [1, 2, 3, 4].map((busy) => Math.min(serverDefault, buildWorkers(true, busy, cores)!)),
    );
    const four = await helpersPerBuild('indexed_helpers4', 4);
    expect(four).toHaveLength(12);
    for (const helpers of four) expect(allowed).toContain(helpers);
    // Four slots on fewer than 8 cores: builds that run beside others get none (CI has 2 cores)
    if (cores < 8) expect(four).toContain(0);
    // A database that allows 1 helper is never given more
    const capped = await helpersPerBuild(
      'indexed_helpers_capped',
      1,
      `ALTER DATABASE indexed_helpers_capped SET max_parallel_maintenance_workers = 1`,
    );
    expect(capped.length).toBe(four.length);
    expect(Math.max(...capped)).toBeLessThanOrEqual(1);
  });

  it('fails the whole backup when one of its COPYs is killed, and lists nothing', async () => {
    const { repository } = await newRepository();
    const admin = new pg.Client({ connectionString: server.url('postgres') });
    const locker = new pg.Client({ connectionString: server.url('bank') });
    await Promise.all([admin.connect(), locker.connect()]);
    // The two smallest tables are read last: locked once the ledger's rows flow (the schema is dumped by
    // then), their COPYs wait, running; then the server process of one of them is killed while the other
    // still waits — the backup must fail, and break the waiting one off rather than wait behind it.
    let killed: Promise<void> | undefined;
    const kill = async () => {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE accounts, totals IN ACCESS EXCLUSIVE MODE');
      for (;;) {
        const { rows } = await admin.query<{ pid: number; query: string }>(
          `SELECT pid, query FROM pg_stat_activity WHERE datname = 'bank' AND wait_event_type = 'Lock' AND query LIKE 'COPY (SELECT%'`,
        );
        const accounts = rows.find((row) => row.query.includes('"accounts"'));
        if (rows.length === 2 && accounts) {
          await admin.query('SELECT pg_terminate_backend($1)', [accounts.pid]);
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    try {
      await expect(
        backup(repository, {
          type: 'FULL',
          source: { database: server.connection('bank') },
          tableConcurrency: 3,
          onProgress: (event) => {
            if (event.item === 'public.ledger' && !killed) killed = kill();
          },
        }),
      ).rejects.toThrow(/reading public.accounts failed/);
      await killed;
    } finally {
      await locker.query('ROLLBACK').catch(() => undefined);
      await Promise.all([admin.end(), locker.end()]);
    }
    expect(await listBackups(repository)).toEqual([]);
    // The other COPYs were broken off, not left to run
    const { rows } = await server.sql(
      'postgres',
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = 'bank' AND query LIKE 'COPY (SELECT%' AND state = 'active'`,
    );
    expect((rows[0] as { n: number }).n).toBe(0);
    // What it wrote before it failed is referenced by nothing: gc keeps no pack
    expect((await gc(repository)).keptPacks).toBe(0);
  });
});

describe('loading a table frozen', () => {
  it('never empties a table that already holds rows: it is loaded the plain way', async () => {
    await server.createDatabase('freeze_guard');
    await server.sql('freeze_guard', `CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)`);
    const client = new pg.Client({ connectionString: server.url('freeze_guard') });
    await client.connect();
    try {
      await loadTable(
        client,
        { schema: 'public', name: 't', columns: ['id'] },
        (async function* () {
          yield Buffer.from('3\n4\n');
        })(),
        { freeze: true },
      );
      // And an empty one is: frozen, and the transaction closed
      await client.query('CREATE TABLE empty (id int)');
      await loadTable(
        client,
        { schema: 'public', name: 'empty', columns: ['id'] },
        (async function* () {
          yield Buffer.from('5\n');
        })(),
        { freeze: true },
      );
      expect((await client.query('SELECT pg_current_xact_id_if_assigned() AS xact')).rows[0].xact).toBeNull();
    } finally {
      await client.end();
    }
    const rows = await server.sql('freeze_guard', 'SELECT id FROM t ORDER BY id');
    expect(rows.rows.map((row: { id: number }) => row.id)).toEqual([1, 2, 3, 4]);
    await server.sql('freeze_guard', 'CREATE EXTENSION IF NOT EXISTS pg_visibility');
    const pages = await server.sql(
      'freeze_guard',
      `SELECT (SELECT bool_and(all_frozen) FROM pg_visibility_map('t')) AS t, (SELECT bool_and(all_frozen) FROM pg_visibility_map('empty')) AS empty`,
    );
    expect(pages.rows[0]).toEqual({ t: false, empty: true });
  });
});

describe('large tables in key ranges', () => {
  it('reads a large table in key ranges at once, restores them at once, and checks each range', async () => {
    const { repository } = await newRepository();
    const { manifest } = await backup(repository, {
      type: 'FULL',
      source: { database: server.connection('app') },
      tableConcurrency: 3,
      splitBytes: 256 * 1024,
    });
    const audit = manifest.database!.tables.find((table) => table.name === 'audit_log')!;
    const ranges = audit.ranges!;
    expect(ranges.length).toBeGreaterThan(2);
    // Contiguous and open at both ends: every row is in exactly one range
    expect(ranges[0]!.after).toBeUndefined();
    expect(ranges.at(-1)!.upTo).toBeUndefined();
    for (const [n, range] of ranges.entries()) if (n > 0) expect(range.after).toBe(ranges[n - 1]!.upTo);
    expect(ranges.reduce((sum, range) => sum + range.rows, 0)).toBe(audit.rows);
    expect(ranges.reduce((sum, range) => sum + range.chunkCount, 0)).toBe(audit.chunks.length);
    // A table without a one-column key is read whole
    expect(manifest.database!.tables.find((table) => table.name === 'tickets')!.ranges).toBeUndefined();

    await restoresAsApp(repository, manifest, 'app_ranges', 3);

    // The plain SQL export streams the ranges in key order: psql loads the same table
    await loadSqlExport(server, repository, manifest, 'app_from_sql');
    expect(await tableChecksums(server, 'app_from_sql')).toEqual(await tableChecksums(server, 'app'));

    // A row changed after the backup is found by the check of its range
    await server.sql('app_ranges', `UPDATE audit_log SET actor = 'someone else' WHERE id = 7`);
    const [check] = await checkTables(server.connection('app_ranges'), [audit]);
    expect(check).toMatchObject({ table: 'public.audit_log', ok: false });
  });
});

describe('fan-out', () => {
  /** Parts run as separate workers would: each opens the repository itself. */
  const inProcess = (repository: Repository, parts: number, fail?: number): FanOut => ({
    parts,
    run: async (plan) => {
      const outcomes = await Promise.allSettled(
        plan.parts.map(async (_, part) => {
          if (part === fail) throw new Error(`part ${part} was killed`);
          const own = await Repository.open(repository.storage, testKey());
          await backupPart(own, plan, part, { connection: server.connection('app'), jobs: 2 });
        }),
      );
      for (const outcome of outcomes) if (outcome.status === 'rejected') throw outcome.reason;
    },
  });

  it('backs up the same content as one worker, in parts written by separate workers', async () => {
    const { repository } = await newRepository();
    // Large tables in key ranges, which the parts share out
    const single = await backup(repository, {
      type: 'FULL',
      source: { database: server.connection('app') },
      splitBytes: 512 * 1024,
    });
    const fanned = await backup(repository, {
      type: 'FULL',
      source: { database: server.connection('app') },
      fanOut: inProcess(repository, 3),
      splitBytes: 512 * 1024,
    });
    expect(fanned.manifest.database!.tables.some((table) => (table.ranges?.length ?? 0) > 1)).toBe(true);
    expect(contentOf(fanned.manifest)).toEqual(contentOf(single.manifest));
    expect(fanned.manifest.stats.bytesRead).toBe(single.manifest.stats.bytesRead);
    // Three parts, each with its own index file
    const indexes = [];
    for await (const object of repository.storage.list('index/')) indexes.push(object.key);
    expect(indexes.filter((key) => key.includes(fanned.manifest.id)).sort()).toEqual(
      [0, 1, 2]
        .map((part) => `index/${partIndexName(fanned.manifest.id, part)}`)
        .concat(`index/${fanned.manifest.id}`)
        .sort(),
    );
    const report = await verify(await Repository.open(repository.storage, testKey()), fanned.manifest.id);
    expect(report.ok).toBe(true);

    await restoresAsApp(repository, fanned.manifest, 'app_fanned', 2);
  });

  it('fails when one part fails: nothing is listed, and gc takes what the other parts wrote', async () => {
    const { repository } = await newRepository();
    await expect(
      backup(repository, {
        type: 'FULL',
        source: { database: server.connection('app') },
        fanOut: inProcess(repository, 3, 1),
      }),
    ).rejects.toThrow('part 1 was killed');
    expect(await listBackups(repository)).toEqual([]);
    const collected = await gc(repository);
    expect(collected.deletedPacks).toBeGreaterThan(0);
    expect(collected.deletedIndexes).toBe(2);
  });
});
