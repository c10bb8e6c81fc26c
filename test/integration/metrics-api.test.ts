import { afterAll, beforeAll, expect, it } from 'vitest';
import { Partition } from '../../functions/core/store/table.ts';
import { catalogEntry, slowRestoreTest } from '../support/catalog.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';

/**
 * The metrics routes over a synthetic history written into the store, with the runtime's clock fixed:
 * every figure is exact.
 */
const H = 3_600_000;
const T0 = Date.parse('2026-11-01T00:00:00Z');
const at = (hours: number) => new Date(T0 + hours * H).toISOString();
const now = T0 + 30 * H;
let api: TestApi;

function backup(id: string, start: number, took: number, status: string) {
  return catalogEntry({
    id: `2026110${id}T000000000Z-abcdef`,
    startedAt: at(start),
    finishedAt: at(start + took),
    status,
  });
}

beforeAll(async () => {
  api = await startTestApi({ now: () => new Date(now) });
  expect((await api.call('POST', '/api/dr/config', { rto: 4, rpo: 2 })).status).toBe(201);
  const cp = api.runtime.controlPlane;
  const history = [
    backup('1', 0, 0.5, 'SUCCESS'),
    backup('2', 1, 0.5, 'SUCCESS'),
    backup('3', 5, 0.25, 'FAILED'),
    backup('4', 10, 1, 'SUCCESS'),
    backup('5', 11, 0.5, 'PARTIAL'),
  ];
  for (const item of history) await cp.table.create(Partition.backup, item.id, item, new Date(now), 'exists');
  for (const firing of [6, 7])
    await cp.table.create(
      Partition.firing,
      `hourly#${at(firing)}`,
      { scheduleId: 'hourly', firingTime: at(firing), status: 'MISSED', recordedAt: at(firing) },
      new Date(now),
      'exists',
    );
  const test = slowRestoreTest({ id: '20261101T200000000Z-abcdef', startedAt: at(20), finishedAt: at(25) });
  await cp.table.create(Partition.drTest, test.id, test, new Date(now), 'exists');
});
afterAll(async () => {
  await api?.close();
});

it('lists RPO and RTO violations with their spans, one still going on', async () => {
  const response = await api.call('GET', `/api/dr/metrics/violations?startDate=${at(0)}&endDate=${at(30)}`);
  expect(response.status).toBe(200);
  expect(response.body.items).toEqual([
    // Newest point 1 h (finished 1.5 h): too old from 3 h until the backup of 10 h finished at 11 h.
    {
      kind: 'RPO',
      start: at(3),
      end: at(11),
      ongoing: false,
      objective: 2,
      achieved: 10,
      startsBeforeRange: false,
      endsAfterRange: false,
      missedFirings: 2,
    },
    // Newest point 11 h (the PARTIAL, finished 11.5 h): too old from 13 h, still so at 30 h.
    {
      kind: 'RPO',
      start: at(13),
      ongoing: true,
      objective: 2,
      achieved: 19,
      startsBeforeRange: false,
      endsAfterRange: true,
      missedFirings: 0,
    },
    {
      kind: 'RTO',
      start: at(20),
      end: at(25),
      ongoing: false,
      objective: 4,
      achieved: 5,
      startsBeforeRange: false,
      endsAfterRange: false,
      testId: '20261101T200000000Z-abcdef',
    },
  ]);
  const later = await api.call('GET', `/api/dr/metrics/violations?startDate=${at(12)}&endDate=${at(30)}`);
  expect(later.body.items.map((item: { kind: string }) => item.kind)).toEqual(['RPO', 'RTO']);
});

it('gives the success rate overall, per schedule, per target and per day', async () => {
  const response = await api.call('GET', `/api/dr/metrics/success-rate?startDate=${at(0)}&endDate=${at(30)}`);
  expect(response.body.overall).toEqual({ total: 5, succeeded: 3, partial: 1, failed: 1, rate: 0.6 });
  expect(response.body.byTarget.primary).toEqual({
    total: 5,
    succeeded: 4,
    partial: 0,
    failed: 1,
    rate: 0.8,
  });
  expect(Object.keys(response.body.byDay)).toEqual(['2026-11-01']);
});

it('summarizes the key figures over the range', async () => {
  const response = await api.call('GET', `/api/dr/metrics?startDate=${at(0)}&endDate=${at(30)}`);
  expect(response.status).toBe(200);
  expect(response.body).toMatchObject({
    startDate: at(0),
    endDate: at(30),
    objectives: { rpo: 2, rto: 4 },
    backupSuccessRate: { rate: 0.6 },
    backupDuration: { count: 4, average: 2250, p95: 3600 },
    storage: {
      primary: {
        bytesStored: 400,
        bytesProtected: 1000,
        dedupCompressionRatio: 10,
        dedupRatio: 5,
        compressionRatio: 2,
        growthBytes: 400,
      },
    },
    rpoViolations: 2,
    rtoViolations: 1,
    ongoingRpoViolation: true,
    lastRestorePoint: {
      hourly: { backupId: '20261105T000000000Z-abcdef', restorePoint: at(11), ageHours: 19 },
    },
    achievedRpo: { hourly: 19 },
  });
  expect(response.body.testCompliance.types.RESTORE_TEST.overdue).toBe(false);
});

it('gives the figures over time for charts: per day, the restore point age as a saw tooth, each test’s RTO', async () => {
  const response = await api.call('GET', `/api/dr/metrics/series?startDate=${at(0)}&endDate=${at(30)}`);
  expect(response.status).toBe(200);
  expect(response.body.objectives).toEqual({ rpo: 2, rto: 4 });
  expect(response.body.targets).toEqual(['primary']);
  expect(response.body.targetNames).toEqual({ primary: 'primary' });
  expect(response.body.days).toEqual([
    {
      date: '2026-11-01',
      backups: 5,
      succeeded: 3,
      failed: 2,
      successRate: 0.6,
      durationAverageSeconds: 2250,
      durationP95Seconds: 3600,
      storedBytes: { primary: 400 },
    },
    // Nothing finished that day: no rate, no duration; what the target stores carries over
    {
      date: '2026-11-02',
      backups: 0,
      succeeded: 0,
      failed: 0,
      successRate: null,
      durationAverageSeconds: null,
      durationP95Seconds: null,
      storedBytes: { primary: 400 },
    },
  ]);
  // Before and after each restore point's backup finished, then now (30 h): the newest point is 11 h
  expect(response.body.rpoAge).toEqual([
    { at: at(0.5), ageHours: 0.5 },
    { at: at(1.5), ageHours: 1.5 },
    { at: at(1.5), ageHours: 0.5 },
    { at: at(11), ageHours: 10 },
    { at: at(11), ageHours: 1 },
    { at: at(11.5), ageHours: 1.5 },
    { at: at(11.5), ageHours: 0.5 },
    { at: at(30), ageHours: 19 },
  ]);
  expect(response.body.violations.map((item: { kind: string }) => item.kind)).toEqual(['RPO', 'RPO', 'RTO']);
  expect(response.body.rto).toEqual([
    {
      testId: '20261101T200000000Z-abcdef',
      testType: 'RESTORE_TEST',
      finishedAt: at(25),
      actualRTO: 5,
      objectiveRTO: 4,
      passed: expect.any(Boolean),
    },
  ]);
  // From 12 h on, the age starts at what it was then: the newest point (11 h) is 1 h old
  const later = await api.call('GET', `/api/dr/metrics/series?startDate=${at(12)}&endDate=${at(30)}`);
  expect(later.body.rpoAge).toEqual([
    { at: at(12), ageHours: 1 },
    { at: at(30), ageHours: 19 },
  ]);
  expect((await api.call('GET', '/api/dr/metrics/series?startDate=2026-02-30')).status).toBe(400);
});

it('takes a date alone as the whole day, and gives the figures as of the end of the range', async () => {
  const day = await api.call('GET', '/api/dr/metrics/success-rate?startDate=2026-11-01&endDate=2026-11-01');
  expect(day.status).toBe(200);
  expect(day.body).toMatchObject({ startDate: at(0), endDate: '2026-11-01T23:59:59.999Z' });
  expect(day.body.overall.total).toBe(5);
  // At 10.5 h the newest restore point was the backup of 1 h (the one of 10 h finished at 11 h)
  const earlier = await api.call('GET', `/api/dr/metrics?startDate=${at(0)}&endDate=${at(10.5)}`);
  expect(earlier.body.lastRestorePoint).toEqual({
    hourly: { backupId: '20261102T000000000Z-abcdef', restorePoint: at(1), ageHours: 9.5 },
  });
  expect(earlier.body.storage.primary).toMatchObject({ bytesStored: 200, bytesProtected: 1000 });
});

it('refuses a date that does not exist instead of moving it', async () => {
  for (const [query, field] of [
    ['startDate=2025-02-30', 'startDate'],
    ['endDate=2026-13-01', 'endDate'],
    ['endDate=2026-11-01T25:00:00Z', 'endDate'],
    ['endDate=2026-11-01T10:00:00', 'endDate'],
  ] as const) {
    const response = await api.call('GET', `/api/dr/metrics?${query}`);
    expect(response.status, query).toBe(400);
    expect(fieldsOf(response)).toEqual([field]);
  }
  const moved = await api.call('GET', '/api/dr/metrics?startDate=2025-02-30');
  expect(moved.body.error.details[0].message).toBe('2025-02-30 is not a date that exists');
});

it('validates the date range, naming the field', async () => {
  const reversed = await api.call('GET', `/api/dr/metrics?startDate=${at(10)}&endDate=${at(0)}`);
  expect(reversed.status).toBe(400);
  expect(fieldsOf(reversed)).toEqual(['startDate']);
  const garbage = await api.call('GET', '/api/dr/metrics/violations?endDate=yesterday');
  expect(fieldsOf(garbage)).toEqual(['endDate']);
  const long = await api.call('GET', '/api/dr/metrics?startDate=2020-01-01&endDate=2026-01-01');
  expect(long.body.error.details[0].message).toBe('the range must be at most 366 days');
  const unknown = await api.call('GET', '/api/dr/metrics?from=2026-01-01');
  expect(fieldsOf(unknown)).toEqual(['from']);
});

it('shows the 3-2-1 view per schedule, with what is missing to comply', async () => {
  const targets = [
    {
      id: 'offsite-s3',
      targetType: 'S3',
      config: { bucket: 'dr-offsite', region: 'eu-west-1', objectLock: { mode: 'GOVERNANCE', days: 30 } },
    },
    {
      id: 'nas',
      targetType: 'SFTP',
      config: { host: 'nas.internal', username: 'backup', password: 'x', path: '/dr' },
    },
  ];
  for (const target of targets) expect((await api.call('POST', '/api/dr/targets', target)).status).toBe(201);
  const nightly = {
    ...backup('6', 12, 0.5, 'SUCCESS'),
    scheduleId: 'nightly',
    scheduleName: 'nightly',
    targets: ['primary', 'offsite-s3', 'nas'].map((targetId) => ({
      targetId,
      name: targetId,
      targetType: targetId === 'primary' ? 'LOCAL' : 'recorded by the run',
      status: 'SUCCESS',
      bytesWritten: 100,
    })),
  };
  await api.runtime.controlPlane.table.create(Partition.backup, nightly.id, nightly, new Date(now), 'exists');

  const response = await api.call('GET', '/api/dr/metrics/compliance');
  expect(response.status).toBe(200);
  const [hourly, full] = response.body.items;
  expect(full).toMatchObject({
    scheduleId: 'nightly',
    copies: 4,
    media: 3,
    offsite: 2,
    immutable: 1,
    newestRestoreTestPassed: true,
    compliant: true,
    missing: [],
  });
  expect(full.targets).toEqual([
    { targetId: 'primary', targetType: 'LOCAL', medium: 'local disk', offsite: false, immutable: false },
    { targetId: 'offsite-s3', targetType: 'S3', medium: 'Amazon S3', offsite: true, immutable: true },
    { targetId: 'nas', targetType: 'SFTP', medium: 'server nas.internal', offsite: true, immutable: false },
  ]);
  expect(hourly).toMatchObject({
    scheduleId: 'hourly',
    copies: 2,
    compliant: false,
    missing: [
      '1 more copy (a target holding the backup)',
      'a second medium or provider among the targets',
      'an off-site copy (another provider, region or host)',
    ],
  });
});
