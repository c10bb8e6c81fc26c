/** RECOVERY_TIME_TEST: fetch, restore database and files, check health, each phase timed against the RTO. */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getDrTest } from '../core/services/drtest-service.ts';
import { withBackup } from '../core/services/open-backup.ts';
import { connect, userRelationCount, withDatabase, type DatabaseConnection } from '../engine/postgres.ts';
import { restoreFiles } from '../engine/restore.ts';
import { databaseNameOf, group, required, serverOf, testState } from './steps.ts';

/** The source database as the snapshot brought it back on the temporary instance: it answers, with tables. */
export async function snapshotHealth(
  server: DatabaseConnection,
  snapshotId: string | undefined,
): Promise<{ relations: number; issue?: string }> {
  const name = databaseNameOf(server);
  try {
    const relations = await userRelationCount(server);
    return relations > 0
      ? { relations }
      : { relations, issue: `snapshot ${snapshotId}: database ${name} has no tables` };
  } catch (error) {
    return {
      relations: 0,
      issue: `snapshot ${snapshotId}: database ${name} does not answer: ${(error as Error).message}`,
    };
  }
}

export const recoveryTimeTest = group(testState, {
  'test.recovery.fetch': async (cp, deps, state) => {
    // Opening the repository and reading the backup's manifest and index: what a recovery does first.
    const started = Date.now();
    const found = await withBackup(
      cp,
      required(state.plan?.backupId, 'plan.backupId'),
      deps.masterKey,
      async (repository, manifest) => {
        await repository.loadIndex(true);
        return { files: manifest.files?.entries.length ?? 0, tables: manifest.database?.tables.length ?? 0 };
      },
    );
    return { ...found, seconds: (Date.now() - started) / 1000 };
  },
  'test.recovery.files': async (cp, deps, state) => {
    // Restored, checked and removed in one step: steps may run in different worker instances.
    return withBackup(
      cp,
      required(state.plan?.backupId, 'plan.backupId'),
      deps.masterKey,
      async (repository, manifest) => {
        if (!manifest.files) return { skipped: true, seconds: 0, verifySeconds: 0 };
        const scratch = await mkdtemp(join(deps.scratchDir ?? tmpdir(), `dr-test-${state.testId}-`));
        try {
          const started = Date.now();
          const result = await restoreFiles(repository, manifest, { destination: scratch });
          const restoredAt = Date.now();
          const expected = manifest.files.entries.filter((entry) => entry.type === 'file').length;
          const found = (await readdir(scratch, { recursive: true, withFileTypes: true })).filter((entry) =>
            entry.isFile(),
          ).length;
          const issues = found === expected ? [] : [`files: ${found} restored, the backup holds ${expected}`];
          return {
            files: result.files,
            bytes: result.bytes,
            seconds: (restoredAt - started) / 1000,
            verifySeconds: (Date.now() - restoredAt) / 1000,
            issues,
          };
        } finally {
          await rm(scratch, { recursive: true, force: true });
        }
      },
    );
  },
  'test.recovery.health': async (cp, _deps, state) => {
    // The application's view: connect, run a query, read the largest table's row count.
    const test = await getDrTest(cp, state.testId);
    const target = withDatabase(await serverOf(cp, test, state), required(state.scratch, 'scratch').database);
    const started = Date.now();
    const client = await connect(target);
    try {
      await client.query('SELECT 1');
      const tables = await client.query<{ name: string }>(
        `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY c.relpages DESC, 1 LIMIT 1`,
      );
      if (tables.rows[0]) await client.query(`SELECT count(*) FROM ${tables.rows[0].name}`);
      return { ok: true, seconds: (Date.now() - started) / 1000, usableAt: cp.now().toISOString() };
    } finally {
      await client.end();
    }
  },
});
