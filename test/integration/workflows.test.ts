import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeTree, makeFilesTree } from '../support/engine.ts';
import { createEventManager, tableChecksums } from '../support/event-manager.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { nightlySchedule } from '../support/catalog.ts';
import { startPostgres, type TestPostgres } from '../support/postgres.ts';

/**
 * The restore and DR-test workflows end to end, through the local runtime's HTTP API: the definitions in
 * statemachines/ run by the local ASL interpreter, every step the worker's own code, against a real
 * PostgreSQL (the source database, and a STAGING server where restores and scratch databases go).
 */
let api: TestApi;
let pg: TestPostgres;
let work: string;
let files: string;
let first: { id: string; restorePoint: string };
let second: { id: string; restorePoint: string };
let firstSums: Record<string, string>;
/** When set, the restore test's restore step is followed by this change to the scratch database. */
let tamper: string | undefined;
/** The runtime's clock runs this far ahead; a step can move it (a slow restore). */
let skew = 0;
let slowRestoreHours = 0;

beforeAll(async () => {
  pg = await startPostgres();
  api = await startTestApi({
    now: () => new Date(Date.now() + skew),
    taskWrappers: {
      'test.restore.run': async (input, real) => {
        skew += slowRestoreHours * 3_600_000;
        const result = await real();
        if (tamper) {
          const scratch = (input.scratch as { database: string }).database;
          await pg.sql(scratch, tamper);
        }
        return result;
      },
    },
  });
  await pg.createDatabase('app');
  await pg.createDatabase('staging');
  await createEventManager(pg, 'app');
  work = await mkdtemp(join(tmpdir(), 'dr-workflows-'));
  files = await makeFilesTree();
  const setup: [string, string, unknown][] = [
    [
      'POST',
      '/api/dr/config',
      {
        rto: 4,
        rpo: 1,
        notificationEmails: ['ops@example.com'],
        source: { database: { url: pg.url('app') }, files: { type: 'directory', path: files } },
        environments: { STAGING: { database: { url: pg.url('staging') } } },
      },
    ],
    [
      'POST',
      '/api/dr/targets',
      { id: 'primary', targetType: 'LOCAL', config: { path: join(work, 'primary') } },
    ],
    ['POST', '/api/dr/schedules', nightlySchedule(['primary'])],
  ];
  for (const [method, path, body] of setup) expect((await api.call(method, path, body)).status).toBe(201);
  first = await backup();
  firstSums = await tableChecksums(pg, 'app');
  await pg.sql('app', "UPDATE users SET name = name || ' (renamed)' WHERE id <= 10");
  second = await backup();
});
afterAll(async () => {
  await Promise.all([api?.close(), pg?.stop()]);
});

async function backup(): Promise<{ id: string; restorePoint: string }> {
  const started = await api.call('POST', '/api/dr/schedules/nightly/execute');
  expect(started.status).toBe(202);
  await api.runtime.idle();
  const done = await api.call('GET', `/api/dr/backups/${started.body.id}`);
  expect(done.body.status).toBe('SUCCESS');
  return { id: done.body.id, restorePoint: done.body.restorePoint };
}

/** Starts a restore, waits for its execution, returns its entry. */
async function restore(body: unknown): Promise<any> {
  const started = await api.call('POST', '/api/dr/restore', body);
  expect(started.status, started.text).toBe(202);
  expect(started.body.executionArn).toMatch(/^arn:aws:states:local:\d{12}:execution:dr-restore:/);
  expect(started.headers.get('location')).toBe(`/api/dr/restore/${started.body.restoreId}`);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/restore/${started.body.restoreId}`)).body;
}

async function drTest(body: unknown): Promise<any> {
  const started = await api.call('POST', '/api/dr/test', body);
  expect(started.status, started.text).toBe(202);
  await api.runtime.idle();
  return (await api.call('GET', `/api/dr/test/${started.body.testId}`)).body;
}

async function databases(): Promise<string[]> {
  const found = await pg.sql('postgres', 'SELECT datname FROM pg_database ORDER BY 1');
  return found.rows.map((row: { datname: string }) => row.datname);
}

describe('restore workflow', () => {
  it('restores a backup by id into a new database and a directory, checked against the backup', async () => {
    const into = join(work, 'restored-files');
    const record = await restore({
      backupId: first.id,
      destination: { environment: 'STAGING', database: 'restored_by_id', filesTo: into },
    });
    expect(record.status, record.error).toBe('SUCCEEDED');
    expect(record.plan).toMatchObject({ backupId: first.id, chain: [], database: true, files: true });
    expect(record.result.database).toMatchObject({ consistent: true });
    expect(await tableChecksums(pg, 'restored_by_id')).toEqual(firstSums);
    expect(await describeTree(into)).toEqual(await describeTree(files));
    const audit = await api.call('GET', '/api/dr/audit?limit=100');
    const actions = audit.body.items
      .filter((e: any) => e.resource === `restore/${record.id}`)
      .map((e: any) => e.action);
    expect(actions.sort()).toEqual(['restore.finish', 'restore.start']);
    // Its workflow step by step, and how far the data restore got (all of it, with its rate)
    const tasks = record.steps.map((step: { task: string }) => step.task);
    expect(tasks).toEqual(expect.arrayContaining(['restore.plan', 'restore.database', 'restore.files']));
    expect(tasks.at(-1)).toBe('restore.finish');
    for (const step of record.steps) {
      expect(step.status).toBe('SUCCEEDED');
      expect(step.seconds).toBeGreaterThanOrEqual(0);
    }
    expect(record.progress).toMatchObject({ phase: 'restore', percent: 100, etaSeconds: 0 });
    expect(record.progress.bytes).toBe(record.progress.totalBytes);
    expect(record.progress.bytesPerSecond).toBeGreaterThan(0);
    // And in the list of restores, newest first
    const listed = await api.call('GET', '/api/dr/restore?limit=100');
    expect(listed.status).toBe(200);
    expect(listed.body.items.map((item: { id: string }) => item.id)).toContain(record.id);
    const ids = listed.body.items.map((item: { id: string }) => item.id);
    expect([...ids].sort().reverse()).toEqual(ids);
    const filtered = await api.call('GET', '/api/dr/restore?status=SUCCEEDED&limit=1');
    expect(filtered.body.items).toHaveLength(1);
    expect(filtered.body.items[0].status).toBe('SUCCEEDED');
    expect((await api.call('GET', '/api/dr/restore?status=DONE')).status).toBe(400);
    expect((await api.call('GET', '/api/dr/restore?nextToken=forged')).status).toBe(400);
  });

  it('restores to a point in time: the newest backup at or before it, with the gap reported', async () => {
    const asked = new Date(Date.parse(first.restorePoint) + 1).toISOString();
    expect(Date.parse(asked)).toBeLessThan(Date.parse(second.restorePoint));
    const record = await restore({
      pointInTime: asked,
      scope: { files: false },
      destination: { database: 'restored_pit' },
    });
    expect(record.status, record.error).toBe('SUCCEEDED');
    expect(record.plan.backupId).toBe(first.id);
    expect(record.plan.gapSeconds).toBe(0);
    expect(await tableChecksums(pg, 'restored_pit')).toEqual(firstSums);

    const later = await restore({
      pointInTime: new Date().toISOString(),
      scope: { files: false },
      dryRun: true,
    });
    expect(later.status).toBe('PLANNED');
    expect(later.plan.backupId).toBe(second.id);
    // The gap between the asked instant and the restore point it takes: at most the time since the second backup
    const sinceSecond = (Date.now() - Date.parse(second.restorePoint)) / 1000;
    expect(later.plan.gapSeconds).toBeGreaterThanOrEqual(0);
    expect(later.plan.gapSeconds).toBeLessThanOrEqual(sinceSecond + 1);

    const before = await restore({
      pointInTime: '2020-01-01T00:00:00Z',
      scope: { files: false },
      dryRun: true,
    });
    expect(before.status).toBe('FAILED');
    expect(before.error).toMatch(/^NoRestorePoint: no backup restores to 2020-01-01T00:00:00Z or earlier/);
  });

  it('plans without touching anything on a dry run', async () => {
    const record = await restore({
      backupId: second.id,
      destination: { database: 'never_made' },
      dryRun: true,
      scope: { files: false },
    });
    expect(record.status).toBe('PLANNED');
    expect(record.plan).toMatchObject({ backupId: second.id, type: 'FULL', database: true });
    expect(record.plan.bytes).toBeGreaterThan(0);
    expect(await databases()).not.toContain('never_made');
  });

  it('never writes into a database that is not empty unless asked to overwrite', async () => {
    const refused = await restore({
      backupId: first.id,
      scope: { files: false },
      destination: { database: 'app' },
    });
    expect(refused.status).toBe('FAILED');
    expect(refused.error).toMatch(/^DestinationNotEmpty: database app on STAGING is not empty/);
    await pg.createDatabase('overwritten');
    await pg.sql('overwritten', 'CREATE TABLE users (id int); INSERT INTO users VALUES (1)');
    const again = await restore({
      backupId: first.id,
      scope: { files: false },
      destination: { database: 'overwritten' },
      overwrite: true,
      confirm: 'overwritten',
    });
    expect(again.status, again.error).toBe('SUCCEEDED');
    expect(await tableChecksums(pg, 'overwritten')).toEqual(firstSums);
  });

  it('restores chosen tables, and files chosen by glob', async () => {
    const into = join(work, 'some-files');
    const record = await restore({
      backupId: first.id,
      scope: { tables: ['users', 'public.events'], include: ['uploads/2025/**'] },
      destination: { database: 'partial', filesTo: into },
    });
    expect(record.status, record.error).toBe('SUCCEEDED');
    const restored = await tableChecksums(pg, 'partial');
    expect(Object.keys(restored).filter((key) => key.startsWith('public.'))).toEqual([
      'public.events',
      'public.users',
    ]);
    expect(restored['public.users']).toBe(firstSums['public.users']);
    const tree = Object.keys(await describeTree(into));
    expect(tree.every((path) => path.startsWith('uploads'))).toBe(true);
    expect(tree).toContain('uploads/2025/06/notes.txt');
    expect(tree).not.toContain('config.json');
  });

  it('refuses bad requests with the field and why', async () => {
    const both = await api.call('POST', '/api/dr/restore', {
      backupId: first.id,
      pointInTime: first.restorePoint,
    });
    expect(both.status).toBe(400);
    expect(fieldsOf(both)).toEqual(['backupId']);
    const future = await api.call('POST', '/api/dr/restore', { pointInTime: '2999-01-01T00:00:00Z' });
    expect(fieldsOf(future)).toEqual(['pointInTime']);
    const unknown = await api.call('POST', '/api/dr/restore', { backupId: '20200101T000000000Z-abcdef' });
    expect(unknown.status).toBe(404);
    expect((await api.call('GET', '/api/dr/restore/20200101T000000000Z-abcdef')).status).toBe(404);
    // The restores so far, paged: the token leads on to the next, older one, never repeating one
    const ids = (await api.call('GET', '/api/dr/restore?limit=100')).body.items.map(
      (item: { id: string }) => item.id,
    );
    expect(ids.length).toBeGreaterThan(2);
    const onePage = await api.call('GET', '/api/dr/restore?limit=1');
    const nextPage = await api.call(
      'GET',
      `/api/dr/restore?limit=1&nextToken=${encodeURIComponent(onePage.body.nextToken)}`,
    );
    expect([onePage.body.items[0].id, nextPage.body.items[0].id]).toEqual(ids.slice(0, 2));
  });
});

describe('DR tests', () => {
  it('BACKUP_VERIFICATION verifies the newest backup of every schedule on every target, and emails the result', async () => {
    const test = await drTest({ testType: 'BACKUP_VERIFICATION', notifyOnCompletion: true });
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    expect(test.executionArn).toMatch(/:execution:dr-backup-verification:/);
    expect(test.results).toMatchObject({
      success: true,
      issues: [],
      backups: [{ backupId: second.id, targetId: 'primary', ok: true }],
    });
    expect(test.results.bytesVerified).toBeGreaterThan(0);
    const verifiedAt = (await api.call('GET', `/api/dr/backups/${second.id}`)).body.verifiedAt as string;
    expect(Date.parse(verifiedAt)).toBeGreaterThanOrEqual(Date.parse(test.startedAt));
    const outbox = join(api.dataDir, 'outbox');
    const mails = await readdir(outbox);
    expect(mails).toHaveLength(1);
    const mail = await readFile(join(outbox, mails[0]!), 'utf8');
    expect(mail).toMatch(/^To: ops@example.com$/m);
    expect(mail).toMatch(/^Subject: DR test BACKUP_VERIFICATION passed/m);
  });

  it('RESTORE_TEST restores into a scratch database, checks it, drops it, and measures RTO and RPO', async () => {
    const before = await databases();
    const test = await drTest({ testType: 'RESTORE_TEST', targetEnvironment: 'STAGING' });
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    expect(test.scratchDatabase).toMatch(/^dr_test_/);
    expect(await databases()).toEqual(before);
    expect(test.results.actualRTO).toBeGreaterThan(0);
    expect(test.results.actualRTO).toBeLessThan(1);
    expect(test.results.rtoViolated).toBe(false);
    expect(test.results.actualRPO).toBeGreaterThan(0);
    expect(test.results.phases.databaseRestore).toBeGreaterThan(0);
    expect(test.results.backups).toEqual([{ backupId: second.id, ok: true }]);
    expect(test.steps.map((step: { task: string }) => step.task)).toContain('test.restore.run');
    expect(test.progress).toMatchObject({ phase: 'restore', percent: 100 });
  });

  it('RESTORE_TEST fails a restore that does not match the backup, naming the table, and still cleans up', async () => {
    const before = await databases();
    tamper = "UPDATE users SET name = 'tampered' WHERE id = 1";
    try {
      const test = await drTest({ testType: 'RESTORE_TEST' });
      expect(test.status).toBe('FAILED');
      expect(test.results.success).toBe(false);
      expect(test.results.issues).toEqual([
        'table public.users: the rows differ from the backup (checksum mismatch)',
      ]);
      expect(await databases()).toEqual(before);
    } finally {
      tamper = undefined;
    }
  });

  it('BACKUP_VERIFICATION fails on corrupted data, naming the backup and target', async () => {
    // A flipped byte in every pack's header: whichever packs the newest backup uses are unreadable.
    const data = join(work, 'primary', 'data');
    const packs = (await readdir(data, { recursive: true, withFileTypes: true }))
      .filter((entry) => entry.isFile())
      .map((entry) => join(entry.parentPath, entry.name));
    const flip = async () => {
      for (const pack of packs) {
        const body = await readFile(pack);
        body[body.length - 10] = body[body.length - 10]! ^ 0x01;
        await writeFile(pack, body);
      }
    };
    await flip();
    try {
      const test = await drTest({ testType: 'BACKUP_VERIFICATION' });
      expect(test.status).toBe('FAILED');
      expect(test.results.issues.length).toBeGreaterThan(0);
      expect(test.results.issues[0]).toMatch(new RegExp(`^backup ${second.id} on primary: `));
      expect(test.results.backups).toEqual([{ backupId: second.id, targetId: 'primary', ok: false }]);
    } finally {
      await flip();
    }
  });

  it('RECOVERY_TIME_TEST recovers database and files, times every phase, and compares with the RTO', async () => {
    const before = await databases();
    const scratchDirs = async () => (await readdir(tmpdir())).filter((name) => name.startsWith('dr-test-'));
    const dirsBefore = await scratchDirs();
    const test = await drTest({ testType: 'RECOVERY_TIME_TEST' });
    expect(test.status, JSON.stringify(test.results)).toBe('PASSED');
    expect(Object.keys(test.results.phases).sort()).toEqual([
      'databaseRestore',
      'fetch',
      'filesRestore',
      'healthCheck',
      'total',
      'verification',
    ]);
    expect(test.results.actualRTO).toBeLessThan(test.objectives.rto);
    expect(test.results.rtoViolated).toBe(false);
    expect(await databases()).toEqual(before);
    expect(await scratchDirs()).toEqual(dirsBefore);

    // A recovery slower than the objective (the clock moves 5 h during the restore) fails the test.
    slowRestoreHours = 5;
    try {
      const slow = await drTest({ testType: 'RECOVERY_TIME_TEST' });
      expect(slow.status).toBe('FAILED');
      expect(slow.results.rtoViolated).toBe(true);
      expect(slow.results.actualRTO).toBeGreaterThan(5);
      expect(slow.results.issues).toEqual([
        `recovery took ${slow.results.actualRTO} h, more than the RTO of 4 h`,
      ]);
      expect(await databases()).toEqual(before);
    } finally {
      slowRestoreHours = 0;
    }
  });

  it("records tests run by hand with the guide's fields, and shows which types are overdue", async () => {
    const started = await api.call('POST', '/api/dr/test', {
      testType: 'FAILOVER',
      targetEnvironment: 'PRODUCTION',
      manual: true,
    });
    expect(started.status).toBe(202);
    expect(started.body.executionArn).toBeUndefined();
    expect(started.body.test).toMatchObject({ testType: 'FAILOVER_TEST', mode: 'manual', status: 'RUNNING' });
    const results = {
      success: true,
      actualRTO: 3.5,
      actualRPO: 0.8,
      issues: [],
      notes: 'Test completed successfully',
      participants: ['admin@example.com'],
    };
    const recorded = await api.call('POST', `/api/dr/test/${started.body.testId}/results`, results);
    expect(recorded.status).toBe(200);
    expect(recorded.body).toMatchObject({
      status: 'PASSED',
      results: { ...results, rtoViolated: false, rpoViolated: false },
    });
    expect((await api.call('POST', `/api/dr/test/${started.body.testId}/results`, results)).status).toBe(409);
    const workflowTest = (await api.call('GET', '/api/dr/test?testType=RESTORE_TEST')).body.items[0];
    expect((await api.call('POST', `/api/dr/test/${workflowTest.id}/results`, results)).status).toBe(409);
    const bad = await api.call('POST', `/api/dr/test/${started.body.testId}/results`, {
      success: 'yes',
      actualRTO: -1,
    });
    expect(bad.status).toBe(400);
    expect(fieldsOf(bad).sort()).toEqual(['actualRTO', 'success']);

    const list = await api.call('GET', '/api/dr/test');
    expect(list.body.items[0].id).toBe(started.body.testId);
    expect(list.body.compliance.types).toMatchObject({
      BACKUP_VERIFICATION: { overdue: false },
      RESTORE_TEST: { overdue: false },
      FAILOVER_TEST: { overdue: false },
      RECOVERY_TIME_TEST: { overdue: false },
    });
    expect(list.body.compliance.overdue).toBe(false);
    const unknown = await api.call('POST', '/api/dr/test', { testType: 'CHAOS' });
    expect(fieldsOf(unknown)).toEqual(['testType']);
  });

  it('records a test run by hand that missed the RTO as FAILED, saying why, whatever success says', async () => {
    const started = await api.call('POST', '/api/dr/test', { testType: 'FAILOVER', manual: true });
    expect(started.status).toBe(202);
    const recorded = await api.call('POST', `/api/dr/test/${started.body.testId}/results`, {
      success: true,
      actualRTO: 6,
      actualRPO: 0.5,
      issues: [],
      participants: ['admin@example.com'],
    });
    expect(recorded.status).toBe(200);
    expect(recorded.body).toMatchObject({
      status: 'FAILED',
      results: {
        success: true,
        rtoViolated: true,
        rpoViolated: false,
        issues: ['actual RTO 6 h exceeds the objective of 4 h'],
      },
    });
    const violations = await api.call('GET', '/api/dr/metrics/violations');
    expect(violations.body.items.some((v: any) => v.kind === 'RTO' && v.testId === started.body.testId)).toBe(
      true,
    );
  });
});
