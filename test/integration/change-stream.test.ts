import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { ChangeApplier } from '../../functions/engine/change-applier.ts';
import {
  changeStreamReadiness,
  type ChangeLine,
  confirmChanges,
  isoToMicros,
  microsToIso,
  slotStatus,
} from '../../functions/engine/changes.ts';
import { verify } from '../../functions/engine/maintenance.ts';
import type { Manifest } from '../../functions/engine/manifest.ts';
import type { Repository } from '../../functions/engine/repository.ts';
import { restoreDatabase } from '../../functions/engine/restore.ts';
import { newRepository } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

const STREAM = { slot: 'dr_test', publication: 'dr_test' };
/** Slot names are unique in the whole cluster: one per test database. */
const streamOf = (database: string) => ({ slot: `dr_test_${database}`, publication: 'dr_test' });

let pg: TestPostgres;
beforeAll(async () => {
  pg = await startPostgres();
  await capturable('app');
});

/** An Event Manager database whose every table can be captured (page_views, without a key, by its whole row). */
async function capturable(database: string): Promise<void> {
  await pg.createDatabase(database);
  await createEventManager(pg, database);
  await pg.sql(database, 'ALTER TABLE page_views REPLICA IDENTITY FULL');
}
afterAll(async () => {
  await pg?.stop();
});

/** Runs one transaction, then reads the clock: an instant after this commit and before the next. */
async function commit(sql: string): Promise<string> {
  await pg.sql('app', `BEGIN; ${sql}; COMMIT;`);
  const after = await pg.sql('app', 'SELECT clock_timestamp() AS at');
  return (after.rows[0] as { at: Date }).at.toISOString();
}

async function restoreTo(
  repository: Repository,
  manifest: Manifest,
  database: string,
  until?: string,
): Promise<Awaited<ReturnType<typeof restoreDatabase>>> {
  const target = await pg.createDatabase(database);
  return restoreDatabase(repository, manifest, { target, ...(until ? { until } : {}) });
}

describe('change-stream mode', () => {
  it('restores every recorded instant exactly, from a FULL and the changes after it', async () => {
    // Prepare: a FULL that starts the stream
    const { repository } = await newRepository();
    const database = pg.connection('app');
    const full = await backup(repository, { type: 'FULL', source: { database }, changeStream: STREAM });
    expect(full.notice).toBeUndefined();
    expect(full.manifest.changes).toMatchObject({ slot: 'dr_test', base: full.manifest.id, sets: [] });
    const states: { at: string; sums: Record<string, string> }[] = [];
    const record = async (sql: string) =>
      states.push({ at: await commit(sql), sums: await tableChecksums(pg, 'app') });

    // Act: transactions of every kind, with INCREMENTALs between them
    await record(
      "INSERT INTO users (email, name, created_at) VALUES ('new1@example.com', E'Tab\\there', '2025-08-01 10:00:00.123456+00')",
    );
    await record(
      "UPDATE registrations SET status = 'confirmed' WHERE id % 50 = 0; INSERT INTO audit_log (at, actor, payload) VALUES (now(), NULL, '{\"k\": [1, 2]}')",
    );
    const first = await backup(repository, {
      type: 'INCREMENTAL',
      source: { database },
      changeStream: STREAM,
    });
    await confirmChanges(database, { slot: STREAM.slot, endLsn: first.manifest.changes!.endLsn });
    await record(
      "DELETE FROM tickets WHERE registration_id % 7 = 0; DELETE FROM page_views WHERE path = '/events/3'",
    );
    await record(
      "UPDATE page_views SET path = NULL WHERE path = '/events/4'; UPDATE users SET email = 'moved@example.com' WHERE id = 5",
    );
    await record("TRUNCATE page_views; INSERT INTO page_views VALUES ('/after-truncate', NULL)");
    await record(
      "SELECT nextval('invoice_number'); UPDATE events SET price_cents = price_cents + 1 WHERE id <= 3",
    );
    const second = await backup(repository, {
      type: 'INCREMENTAL',
      source: { database },
      changeStream: STREAM,
    });

    // Assess: the INCREMENTALs hold only the changes, and everything verifies
    expect(first.manifest.type).toBe('INCREMENTAL');
    expect(first.manifest.changes!.sets).toHaveLength(1);
    expect(first.manifest.changes!.sets[0]).toMatchObject({ transactions: 2 });
    expect(second.manifest.changes!.sets.map((set) => set.transactions)).toEqual([2, 4]);
    expect(second.manifest.stats.bytesStored).toBeLessThan(full.manifest.stats.bytesStored / 20);
    expect((await verify(repository, second.manifest.id)).ok).toBe(true);

    // Each recorded instant restores to exactly the state then (restores from the newest backup, stopping at T).
    // Sequences are not transactional and not in the stream: restored to the value read with the change set,
    // never below the value at T.
    for (const [index, state] of states.entries()) {
      const result = await restoreTo(repository, second.manifest, `at_${index}`, state.at);
      expect(result.consistent).toBe(true);
      const { 'sequence invoice_number': sequence, ...tables } = await tableChecksums(pg, `at_${index}`);
      const { 'sequence invoice_number': expectedSequence, ...expectedTables } = state.sums;
      expect(tables, `instant ${index}`).toEqual(expectedTables);
      expect(Number(sequence)).toBeGreaterThanOrEqual(Number(expectedSequence));
      expect(result.changes?.transactions).toBe(index + 1);
    }
    // Before the first change: the FULL as it was
    const before = await restoreTo(repository, second.manifest, 'at_full', full.manifest.restorePoint);
    expect(before.changes?.transactions).toBe(0);
    // Restore by id: each backup to its own end
    const byId = await restoreTo(repository, second.manifest, 'by_id');
    expect(await tableChecksums(pg, 'by_id')).toEqual(states.at(-1)!.sums);
    expect(byId.changes?.lastCommit?.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    const firstOnly = await restoreTo(repository, first.manifest, 'first_id');
    expect(await tableChecksums(pg, 'first_id')).toEqual(states[1]!.sums);
    // The exact commit time restores that commit; one microsecond earlier does not
    const exact = firstOnly.changes!.lastCommit!.time;
    const atCommit = await restoreTo(repository, second.manifest, 'exact', exact);
    expect(atCommit.changes?.transactions).toBe(2);
    const justBefore = microsToIso(isoToMicros(exact) - 1n);
    const earlier = await restoreTo(repository, second.manifest, 'just_before', justBefore);
    expect(earlier.changes?.transactions).toBe(1);
    expect(await tableChecksums(pg, 'just_before')).toEqual(states[0]!.sums);
  });

  it("applies large transactions in batches with the source's outcome: repeated keys, unique swaps, TOAST", async () => {
    await pg.createDatabase('batches');
    await pg.sql(
      'batches',
      `CREATE TABLE items (tenant uuid, id bigint, code text UNIQUE, amount numeric(12,2), at timestamptz,
         doc jsonb, tags text[], PRIMARY KEY (tenant, id));
       INSERT INTO items SELECT ('00000000-0000-0000-0000-00000000000' || (i % 2))::uuid, i, 'code-' || i, i * 1.25,
         '2025-01-01 00:00:00.000001+00'::timestamptz + i * interval '1 second',
         jsonb_build_object('i', i, 'pad', repeat(md5(i::text), 100)), ARRAY['a', i::text]
       FROM generate_series(1, 3000) i;
       CREATE TABLE counters (id int PRIMARY KEY, n int, note text);
       INSERT INTO counters SELECT i, 0, 'start' FROM generate_series(1, 2000) i`,
    );
    const { repository } = await newRepository();
    const source = { database: pg.connection('batches') };
    const stream = streamOf('batches');
    await backup(repository, { type: 'FULL', source, changeStream: stream });
    await pg.sql(
      'batches',
      `BEGIN;
       INSERT INTO items SELECT '00000000-0000-0000-0000-000000000001', i, 'code-' || i, i, now(), '{}', NULL
         FROM generate_series(3001, 5500) i;
       UPDATE items SET amount = amount + 1 WHERE id % 3 = 0;
       UPDATE items SET amount = amount * 2, tags = NULL WHERE id % 6 = 0;
       DELETE FROM items WHERE id % 5 = 0;
       UPDATE counters SET n = n + 1;
       UPDATE counters SET n = n + 1, note = NULL WHERE id % 2 = 0;
       UPDATE counters SET n = n * 10 WHERE id <= 1500;
       COMMIT;
       BEGIN;
       UPDATE items SET code = 'swap' WHERE id = 1;
       UPDATE items SET code = 'code-1' WHERE id = 2;
       UPDATE items SET code = 'code-2' WHERE id = 1;
       UPDATE items SET at = NULL WHERE id BETWEEN 7 AND 9;
       COMMIT;`,
    );
    const next = await backup(repository, { type: 'INCREMENTAL', source, changeStream: stream });
    expect(next.manifest.changes!.sets[0]!.transactions).toBe(2);

    const restored = await restoreTo(repository, next.manifest, 'batches_restored');

    expect(restored.changes?.changes).toBe(next.manifest.changes!.sets[0]!.changes);
    expect(await tableChecksums(pg, 'batches_restored')).toEqual(await tableChecksums(pg, 'batches'));
  });

  it('refuses a batch that does not find every row it changes', async () => {
    const target = await pg.createDatabase('batch_mismatch');
    await pg.sql(
      'batch_mismatch',
      'CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (3, 0)',
    );
    const applier = await ChangeApplier.open(target);
    const lines: ChangeLine[] = [
      { r: 1, s: 'public', n: 't', c: ['id', 'v'], t: [23, 23], k: ['id'], i: 'd' },
      { b: 1, l: '0/10', ts: '2026-11-25T00:00:00.000001Z' },
      ...['1', '2', '3'].map((id): ChangeLine => ({ o: 'U', r: 1, n: [id, '9'] })),
      { c: '0/20', l: '0/20', ts: '2026-11-25T00:00:00.000002Z' },
    ];
    try {
      let failure: unknown;
      for (const line of lines)
        await applier.apply(line).catch((error: unknown) => {
          failure ??= error;
        });
      expect(String(failure)).toContain(
        'update of public.t (3 rows, commit 0/10): matched 2 rows instead of 3',
      );
    } finally {
      await applier.close();
    }
    // Nothing of the failed transaction is left
    expect((await pg.sql('batch_mismatch', 'SELECT v FROM t ORDER BY id')).rows).toEqual([
      { v: 0 },
      { v: 0 },
    ]);
  });

  it('takes a FULL, and says why, when the schema changed since the last backup', async () => {
    await capturable('ddl');
    const { repository } = await newRepository();
    const source = { database: pg.connection('ddl') };
    const full = await backup(repository, { type: 'FULL', source, changeStream: streamOf('ddl') });
    await pg.sql(
      'ddl',
      "UPDATE users SET name = 'x' WHERE id = 1; ALTER TABLE users ADD COLUMN nickname text",
    );
    await pg.sql('ddl', "UPDATE users SET nickname = 'nick' WHERE id = 2");

    const next = await backup(repository, { type: 'INCREMENTAL', source, changeStream: streamOf('ddl') });

    expect(next.manifest.type).toBe('FULL');
    expect(next.schemaChanged).toContain(`the schema changed since backup ${full.manifest.id}`);
    expect(next.notice).toContain('this INCREMENTAL was taken as a FULL');
    expect(next.manifest.changes?.base).toBe(next.manifest.id);
    const target = await pg.createDatabase('ddl_restored');
    await restoreDatabase(repository, next.manifest, { target });
    expect(await tableChecksums(pg, 'ddl_restored')).toEqual(await tableChecksums(pg, 'ddl'));
  });

  it('loses and repeats nothing when a run dies between reading the changes and committing', async () => {
    await capturable('crash');
    const { repository } = await newRepository();
    const database = pg.connection('crash');
    const incremental = () =>
      backup(repository, { type: 'INCREMENTAL', source: { database }, changeStream: streamOf('crash') });
    await backup(repository, { type: 'FULL', source: { database }, changeStream: streamOf('crash') });
    await pg.sql('crash', "UPDATE users SET name = 'first' WHERE id <= 10");

    // A run that read the changes and died before its manifest: nothing committed, the slot did not move
    const slotBefore = await slotStatus(database, streamOf('crash').slot);
    await expect(
      backup(repository, {
        type: 'INCREMENTAL',
        source: { database },
        changeStream: streamOf('crash'),
        onProgress: (event) => {
          if (event.phase === 'finishing') throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    expect((await slotStatus(database, streamOf('crash').slot))?.confirmedLsn).toBe(slotBefore?.confirmedLsn);
    // The next run stores those changes; it commits but dies before confirming (the slot stays behind)
    const committed = await incremental();
    expect(committed.manifest.changes!.sets.at(-1)).toMatchObject({ transactions: 1, changes: 10 });
    await pg.sql('crash', "UPDATE users SET name = 'second' WHERE id <= 5");
    const after = await incremental();

    // The run after it reads from the older slot position and still stores only the new transaction
    expect(after.manifest.changes!.sets.map((set) => [set.transactions, set.changes])).toEqual([
      [1, 10],
      [1, 5],
    ]);
    const target = await pg.createDatabase('crash_restored');
    await restoreDatabase(repository, after.manifest, { target });
    expect(await tableChecksums(pg, 'crash_restored')).toEqual(await tableChecksums(pg, 'crash'));
  });

  it('reports tables it cannot capture, and falls back to dump mode on them', async () => {
    await pg.createDatabase('nokey');
    await createEventManager(pg, 'nokey');
    const readiness = await changeStreamReadiness(pg.connection('nokey'));
    expect(readiness.available).toBe(false);
    expect(readiness.tablesWithoutIdentity).toEqual([
      expect.objectContaining({
        table: 'public.page_views',
        fix: expect.stringContaining('REPLICA IDENTITY FULL'),
      }),
    ]);
    const { repository } = await newRepository();
    const source = { database: pg.connection('nokey') };
    await backup(repository, { type: 'FULL', source, changeStream: streamOf('nokey') });
    const incremental = await backup(repository, {
      type: 'INCREMENTAL',
      source,
      changeStream: streamOf('nokey'),
    });
    expect(incremental.manifest.changes).toBeUndefined();
    expect(incremental.notice).toContain('public.page_views');
    expect(incremental.notice).toContain('deduplicates a dump instead');
    expect(await slotStatus(pg.connection('nokey'), streamOf('nokey').slot)).toBeUndefined();
  });
});
