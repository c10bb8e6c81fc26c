import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { seedCronTable, seedSchedules, seedTargets } from '../support/seed-examples.ts';

const NOW = new Date('2026-01-01T00:30:00.000Z');
let api: TestApi;
beforeAll(async () => {
  api = await startTestApi({ now: () => NOW });
  expect((await api.call('POST', '/api/dr/targets', { ...seedTargets.S3, id: 's3-target-id' })).status).toBe(
    201,
  );
});
afterAll(async () => {
  await api.close();
});

const base = {
  name: 'Nightly',
  scheduleType: 'FULL',
  cronExpression: '0 2 * * *',
  targets: ['s3-target-id'],
};

describe('/api/dr/schedules', () => {
  it.each(Object.entries(seedSchedules))('accepts the seed example %s as written', async (_name, example) => {
    const response = await api.call('POST', '/api/dr/schedules', example);
    expect(response.status).toBe(201);
    expect(response.body).toMatchObject({ ...example, timezone: 'UTC', active: true, version: 1 });
    expect(response.body.nextRuns).toHaveLength(5);
  });

  it('warns that a schedule without targets cannot run', async () => {
    const response = await api.call('POST', '/api/dr/schedules', seedSchedules.apiReference);
    expect(response.body.targets).toEqual([]);
    expect(response.body.warnings[0]).toContain('no targets');
  });

  it.each(seedCronTable)('fires %s at the expected times (UTC)', async (cronExpression, first, second) => {
    const response = await api.call('POST', '/api/dr/schedules', { ...base, cronExpression });
    expect(response.status).toBe(201);
    expect(response.body.nextRuns.slice(0, 2)).toEqual([first, second]);
  });

  it('evaluates the cron expression in the given time zone', async () => {
    const response = await api.call('POST', '/api/dr/schedules', { ...base, timezone: 'America/New_York' });
    expect(response.status).toBe(201);
    // 02:00 in New York in January is 07:00 UTC.
    expect(response.body.nextRuns[0]).toBe('2026-01-01T07:00:00.000Z');
  });

  it('shows no next runs while paused', async () => {
    const response = await api.call('POST', '/api/dr/schedules', { ...base, active: false });
    expect(response.body.nextRuns).toEqual([]);
  });

  it.each([
    ['0 2 * *', 'cronExpression'],
    ['0 0 2 * * *', 'cronExpression'],
    ['61 * * * *', 'cronExpression'],
    ['0 25 * * *', 'cronExpression'],
    ['0 0 31 2 *', 'cronExpression'],
    ['0 0 L * *', 'cronExpression'],
    ['H * * * *', 'cronExpression'],
    ['@daily', 'cronExpression'],
  ])('refuses cron %j naming %s', async (cronExpression, field) => {
    const response = await api.call('POST', '/api/dr/schedules', { ...base, cronExpression });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toEqual([field]);
  });

  it('refuses an unknown time zone naming timezone', async () => {
    const response = await api.call('POST', '/api/dr/schedules', { ...base, timezone: 'Mars/Olympus_Mons' });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toEqual(['timezone']);
  });

  it('refuses targets that do not exist or repeat, naming each', async () => {
    const response = await api.call('POST', '/api/dr/schedules', {
      ...base,
      targets: ['s3-target-id', 'missing-one', 's3-target-id'],
    });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toEqual(['targets[1]', 'targets[2]']);
  });

  it.each([
    [1, 201],
    [365, 201],
    [0, 400],
    [366, 400],
    [2.5, 400],
  ])('retentionDays %s → %s', async (retentionDays, status) => {
    const response = await api.call('POST', '/api/dr/schedules', { ...base, retentionDays });
    expect(response.status).toBe(status);
    if (status === 400) expect(fieldsOf(response)).toEqual(['retentionDays']);
  });

  it("refuses retentionDays beyond the DR config's backupRetentionDays, and defaults to it", async () => {
    expect((await api.call('POST', '/api/dr/config', { backupRetentionDays: 14 })).status).toBe(201);
    const beyond = await api.call('POST', '/api/dr/schedules', { ...base, retentionDays: 15 });
    expect(beyond.status).toBe(400);
    expect(fieldsOf(beyond)).toEqual(['retentionDays']);
    const defaulted = await api.call('POST', '/api/dr/schedules', base);
    expect(defaulted.body.retentionDays).toBe(14);
  });

  it.each([
    ['scheduleType', 'DIFFERENTIAL'],
    ['frequency', 'SOMETIMES'],
    ['active', 'true'],
    ['name', ''],
  ])('refuses %s = %j naming it', async (field, value) => {
    const response = await api.call('POST', '/api/dr/schedules', { ...base, [field]: value });
    expect(response.status).toBe(400);
    expect(fieldsOf(response)).toEqual([field]);
  });

  it('updates with optimistic concurrency, and deletes', async () => {
    const created = await api.call('POST', '/api/dr/schedules', base);
    const id = created.body.id as string;
    const updated = await api.call(
      'PUT',
      `/api/dr/schedules/${id}`,
      { ...base, cronExpression: '0 3 * * *' },
      { headers: { 'if-match': '"1"' } },
    );
    expect(updated.status).toBe(200);
    expect(updated.body.nextRuns[0]).toBe('2026-01-01T03:00:00.000Z');
    const stale = await api.call('PUT', `/api/dr/schedules/${id}`, base, { headers: { 'if-match': '"1"' } });
    expect(stale.status).toBe(409);
    const mismatch = await api.call('PUT', `/api/dr/schedules/${id}`, { ...base, id: 'another-id' });
    expect(fieldsOf(mismatch)).toEqual(['id']);
    expect(
      (await api.call('DELETE', `/api/dr/schedules/${id}`, undefined, { headers: { 'if-match': '"1"' } }))
        .status,
    ).toBe(409);
    expect((await api.call('DELETE', `/api/dr/schedules/${id}`)).status).toBe(204);
    expect((await api.call('GET', `/api/dr/schedules/${id}`)).status).toBe(404);
  });

  it('lists schedules with next runs', async () => {
    const list = await api.call('GET', '/api/dr/schedules?limit=100');
    expect(list.status).toBe(200);
    expect(list.body.items.length).toBeGreaterThan(5);
    expect(list.body.items.every((item: { nextRuns: unknown }) => Array.isArray(item.nextRuns))).toBe(true);
  });
});
