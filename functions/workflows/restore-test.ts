/** RESTORE_TEST: restore the newest backup into a scratch database and compare it with what the backup holds. */
import { runProgress } from './run-record.ts';
import { newestRestorePoint } from '../core/services/backup-service.ts';
import { findConfig } from '../core/services/config-service.ts';
import { getDrTest } from '../core/services/drtest-service.ts';
import { withBackup } from '../core/services/open-backup.ts';
import type { exportArchive } from '../engine/export.ts';
import type { Manifest } from '../engine/manifest.ts';
import { readArchiveToc } from '../engine/pg-archive.ts';
import { connect, withDatabase, type DatabaseConnection } from '../engine/postgres.ts';
import { checkTables, readStream, restoreDatabase } from '../engine/restore.ts';
import { copyOf, newestSnapshot, rdsClient } from './rds.ts';
import { snapshotHealth } from './recovery-time-test.ts';
import { WorkflowError, group, required, round, serverOf, testState } from './steps.ts';

/** Schema objects the backup defines (from its archives) that the restored database lacks. */
async function schemaIssues(
  repository: Parameters<typeof exportArchive>[0],
  manifest: Manifest,
  target: DatabaseConnection,
): Promise<string[]> {
  const database = manifest.database!;
  const expected = new Map<string, number>();
  for (const record of [database.preData, database.postData, database.schemaOnly]) {
    if (!record) continue;
    const parts: Buffer[] = [];
    for await (const part of readStream(repository, record, 'schema')) parts.push(part);
    for (const entry of readArchiveToc(Buffer.concat(parts)).entries) {
      const kind = KIND_OF[entry.desc ?? ''];
      if (kind) expected.set(kind, (expected.get(kind) ?? 0) + 1);
    }
  }
  const client = await connect(target);
  try {
    const found = await client.query<{ kind: string; count: string }>(SCHEMA_COUNTS);
    const actual = new Map(found.rows.map((row) => [row.kind, Number(row.count)]));
    const issues: string[] = [];
    for (const [kind, count] of expected) {
      const have = actual.get(kind) ?? 0;
      if (have < count) issues.push(`schema: ${count} ${kind} in the backup, ${have} restored`);
    }
    return issues;
  } finally {
    await client.end();
  }
}

/** TOC entry kinds compared after a restore test, and how to count them in the catalog. */
const KIND_OF: Record<string, string> = {
  TABLE: 'tables',
  INDEX: 'indexes',
  SEQUENCE: 'sequences',
  VIEW: 'views',
  TRIGGER: 'triggers',
  'FK CONSTRAINT': 'foreign keys',
};
const SCHEMA_COUNTS = `
  WITH user_ns AS (SELECT oid FROM pg_namespace WHERE nspname NOT IN ('pg_catalog','information_schema') AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%')
  SELECT 'tables' AS kind, count(*)::text AS count FROM pg_class WHERE relkind IN ('r','p') AND relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'indexes', count(*)::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace IN (SELECT oid FROM user_ns) AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p','u','x'))
  UNION ALL SELECT 'sequences', count(*)::text FROM pg_class WHERE relkind = 'S' AND relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'views', count(*)::text FROM pg_class WHERE relkind = 'v' AND relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'triggers', count(*)::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND c.relnamespace IN (SELECT oid FROM user_ns)
  UNION ALL SELECT 'foreign keys', count(*)::text FROM pg_constraint WHERE contype = 'f' AND connamespace IN (SELECT oid FROM user_ns)`;

export const restoreTest = group(testState, {
  'test.restore.plan': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const backup = await newestRestorePoint(cp, (backup) => backup.database !== undefined);
    if (!backup) throw new WorkflowError('NothingToTest', 'no backup with a database can be restored yet');
    const rpoHours =
      (Date.parse(test.startedAt) - Date.parse(backup.restorePoint ?? backup.startedAt)) / 3_600_000;
    const planned = {
      backupId: backup.id,
      restorePoint: backup.restorePoint,
      actualRPO: round(rpoHours),
      // About what the restore writes (the state machine picks the runner of its heavy steps by it)
      bytes: backup.sizes?.sourceBytes ?? 0,
    };
    if (test.method !== 'rds') return { ...planned, method: 'backup' };
    // The environment is a temporary copy of the RDS source, from its newest snapshot.
    const source = (await findConfig(cp))?.source?.rds;
    if (!source) throw new WorkflowError('NoRdsSource', 'the DR config no longer names an RDS/Aurora source');
    const snapshot = await newestSnapshot(rdsClient(deps, source.region), source).catch((error: unknown) => {
      throw new WorkflowError('RdsSourceNotFound', `RDS source: ${(error as Error).message}`);
    });
    if (!snapshot)
      throw new WorkflowError(
        'NoSnapshot',
        `${source.clusterIdentifier ?? source.instanceIdentifier} has no available snapshot to restore a temporary instance from`,
      );
    return {
      ...planned,
      method: 'rds',
      rds: {
        ...copyOf(source, test.id),
        snapshot: snapshot.identifier,
        snapshotTime: snapshot.createdAt.toISOString(),
      },
    };
  },
  'test.restore.run': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const target = withDatabase(await serverOf(cp, test, state), required(state.scratch, 'scratch').database);
    const started = Date.now();
    const progress = runProgress(cp, { testId: test.id });
    // A change-stream backup is checked while it restores: the FULL's tables against their checksums before
    // the changes go on (the check step cannot: no checksum exists for the state after them).
    const result = await withBackup(
      cp,
      required(state.plan?.backupId, 'plan.backupId'),
      deps.masterKey,
      (repository, manifest) =>
        restoreDatabase(repository, manifest, {
          target,
          noOwner: true,
          check: (manifest.changes?.sets.length ?? 0) > 0,
          onProgress: progress.onProgress,
        }),
    ).finally(() => progress.flush());
    // Usable: the restore finished (the test's start to here is the measured RTO).
    const usableAt = cp.now().toISOString();
    return {
      tables: result.tables,
      rows: result.rows,
      bytes: result.bytes,
      ...(result.changes ? { changes: result.changes.transactions } : {}),
      ...(result.checks.some((check) => !check.ok)
        ? { baseMismatch: result.checks.filter((check) => !check.ok).map((check) => check.table) }
        : {}),
      seconds: (Date.now() - started) / 1000,
      usableAt,
    };
  },
  'test.restore.check': async (cp, deps, state) => {
    const test = await getDrTest(cp, state.testId);
    const server = await serverOf(cp, test, state);
    const target = withDatabase(server, required(state.scratch, 'scratch').database);
    const started = Date.now();
    return withBackup(
      cp,
      required(state.plan?.backupId, 'plan.backupId'),
      deps.masterKey,
      async (repository, manifest) => {
        const issues: string[] = [];
        const database = manifest.database!;
        const applied = (manifest.changes?.sets.length ?? 0) > 0;
        for (const table of state.restore?.baseMismatch ?? [])
          issues.push(`table ${table}: the FULL's rows differ from the backup (checksum mismatch)`);
        const checks = applied ? [] : await checkTables(target, database.tables);
        for (const check of checks.filter((one) => !one.ok))
          issues.push(
            check.rows === check.expectedRows
              ? `table ${check.table}: the rows differ from the backup (checksum mismatch)`
              : `table ${check.table}: ${check.rows} rows, the backup holds ${check.expectedRows}`,
          );
        issues.push(...(await schemaIssues(repository, manifest, target)));
        const snapshot =
          state.plan?.method === 'rds' ? await snapshotHealth(server, state.plan.rds?.snapshot) : undefined;
        if (snapshot?.issue) issues.push(snapshot.issue);
        return {
          ok: issues.length === 0,
          ...(snapshot ? { snapshotRelations: snapshot.relations } : {}),
          tablesChecked: checks.length,
          issues,
          seconds: (Date.now() - started) / 1000,
        };
      },
    );
  },
});
