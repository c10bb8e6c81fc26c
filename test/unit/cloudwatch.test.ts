import { afterEach, expect, it, vi } from 'vitest';

// As on the Fargate task: EMF lines to stdout (the library reads this when it loads).
process.env.AWS_EMF_ENVIRONMENT = 'Local';
const { emitBackupMetrics, emitHealthMetrics } = await import('../../functions/aws/metrics.ts');

/** The Embedded Metric Format lines the worker and the dispatcher write on AWS. */
afterEach(() => {
  vi.restoreAllMocks();
  delete process.env.DR_METRICS;
});

function captured(spy: { mock: { calls: unknown[][] } }): any[] {
  return spy.mock.calls.map((call) => JSON.parse(String(call[0])));
}

const record = {
  id: '20261124T020000000Z-abcdef',
  scheduleId: 'nightly',
  scheduleName: 'nightly',
  requestedType: 'FULL',
  type: 'FULL',
  status: 'PARTIAL',
  trigger: { kind: 'schedule' },
  startedAt: '2026-11-24T02:00:00.000Z',
  heartbeatAt: '2026-11-24T02:01:30.000Z',
  finishedAt: '2026-11-24T02:01:30.000Z',
  sizes: { sourceBytes: 5000, storedBytes: 400, chunks: 2, newChunks: 1 },
  targets: [],
} as const;

it('writes one EMF line per run with duration, bytes and outcome in the DrAutomation namespace', async () => {
  process.env.DR_METRICS = 'emf';
  const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
  await emitBackupMetrics(record);
  const [line] = captured(log);
  expect(line._aws.CloudWatchMetrics).toEqual([
    {
      Namespace: 'DrAutomation',
      Dimensions: [[]],
      Metrics: expect.arrayContaining([
        { Name: 'BackupDuration', Unit: 'Seconds' },
        { Name: 'BackupFailed', Unit: 'Count' },
      ]),
    },
  ]);
  expect(line).toMatchObject({
    BackupDuration: 90,
    BackupBytesRead: 5000,
    BackupBytesStored: 400,
    BackupSucceeded: 0,
    BackupPartial: 1,
    BackupFailed: 0,
    scheduleId: 'nightly',
    backupId: record.id,
  });
});

it('writes the RPO age and compliance every minute, and nothing where metrics are off (locally)', async () => {
  process.env.DR_METRICS = 'emf';
  const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
  await emitHealthMetrics({ rpoAgeHours: 1.5, rpoViolated: true, testsOverdue: 2, primaryUp: false });
  expect(captured(log)[0]).toMatchObject({
    RpoAgeHours: 1.5,
    RpoViolated: 1,
    DrTestsOverdue: 2,
    PrimaryUp: 0,
  });
  delete process.env.DR_METRICS;
  log.mockClear();
  await emitHealthMetrics({ rpoAgeHours: 1.5, rpoViolated: true, testsOverdue: 2 });
  await emitBackupMetrics(record);
  expect(log).not.toHaveBeenCalled();
});
