import type { ControlPlane } from '../context.ts';
import { planRetention, type RetentionPlan } from '../retention.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import { findConfig } from './config-service.ts';
import type { BackupRecord, StoredSchedule } from '../records.ts';

/** The config's ceiling when no config exists yet (the seed's default). */
const DEFAULT_RETENTION_DAYS = 30;

/** GET /api/dr/retention: what retention would delete now, and why everything else stays (a dry run). */
export async function retentionPlan(
  cp: ControlPlane,
): Promise<RetentionPlan & { readonly evaluatedAt: string }> {
  const { plan } = await retentionInputs(cp);
  return { ...plan, evaluatedAt: cp.now().toISOString() };
}

export async function retentionInputs(
  cp: ControlPlane,
): Promise<{ plan: RetentionPlan; records: Map<string, BackupRecord> }> {
  const config = await findConfig(cp);
  const schedules = await cp.table.queryAll<StoredItem<StoredSchedule>>(Partition.schedule);
  const records = (await cp.table.queryAll<StoredItem<BackupRecord>>(Partition.backup)).map(
    (item) => item.data,
  );
  const plan = planRetention(
    records,
    {
      retentionDays: Object.fromEntries(schedules.map((item) => [item.data.id, item.data.retentionDays])),
      defaultDays: config?.backupRetentionDays ?? DEFAULT_RETENTION_DAYS,
    },
    cp.now(),
  );
  return { plan, records: new Map(records.map((record) => [record.id, record])) };
}
