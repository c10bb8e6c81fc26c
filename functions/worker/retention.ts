import type { ControlPlane } from '../core/context.ts';
import { retentionInputs } from '../core/services/retention-service.ts';
import { findStoredTarget, openStoredTarget } from '../core/services/target-service.ts';
import { Partition } from '../core/store/table.ts';
import type { MasterKey } from '../engine/crypto.ts';
import { forget, gc } from '../engine/maintenance.ts';
import { keys, Repository } from '../engine/repository.ts';
import type { BackupRecord } from '../core/records.ts';

export interface RetentionReport {
  /** Backups deleted from every target that held them, and from the catalog. */
  readonly deleted: string[];
  /** Backups retention wanted to delete but could not (kept in the catalog, retried next time). */
  readonly failed: { readonly id: string; readonly reason: string }[];
  /** Bytes gc freed per target. */
  readonly freed: Record<string, number>;
  /** Targets whose space could not be collected yet (a backup was running there). */
  readonly gcDeferred: { readonly targetId: string; readonly reason: string }[];
}

/**
 * Applies retention: for every backup the plan deletes, forgets it on each target that holds it, then
 * collects the unreferenced data on those targets, then removes its catalog entry. A backup whose data could
 * not be removed everywhere stays in the catalog (so nothing on a target is ever left without an entry).
 */
export async function applyRetention(
  cp: ControlPlane,
  masterKey: () => Promise<MasterKey>,
): Promise<RetentionReport> {
  const { plan, records } = await retentionInputs(cp);
  const report: RetentionReport = { deleted: [], failed: [], freed: {}, gcDeferred: [] };
  if (plan.delete.length === 0) return report;
  const doomed = plan.delete.map((entry) => records.get(entry.id)!);
  const byTarget = new Map<string, BackupRecord[]>();
  for (const record of doomed)
    for (const target of record.targets)
      if (target.status === 'SUCCESS')
        byTarget.set(target.targetId, [...(byTarget.get(target.targetId) ?? []), record]);

  const problems = new Map<string, string>();
  const key = await masterKey();
  for (const [targetId, held] of byTarget) {
    const target = await findStoredTarget(cp, targetId);
    if (!target) continue; // the target is gone, and its data with it as far as we can reach
    const storage = await openStoredTarget(cp, target);
    try {
      const repository = await Repository.open(storage, key);
      const present: string[] = [];
      for (const record of held) if (await storage.stat(keys.manifest(record.id))) present.push(record.id);
      await forget(repository, present);
      // The backups are gone once their manifests are; the space comes back when gc can run (it waits for
      // backups in progress on this target, and the next retention pass retries).
      try {
        report.freed[targetId] = (await gc(repository, { now: cp.now })).bytesFreed;
      } catch (error) {
        report.gcDeferred.push({ targetId, reason: (error as Error).message });
      }
    } catch (error) {
      for (const record of held) problems.set(record.id, `${targetId}: ${(error as Error).message}`);
    } finally {
      await storage.close?.().catch(() => undefined);
    }
  }
  for (const record of doomed) {
    const problem = problems.get(record.id);
    if (problem) {
      report.failed.push({ id: record.id, reason: problem });
      continue;
    }
    const item = await cp.table.get<BackupRecord>(Partition.backup, record.id);
    if (item) await cp.table.delete(item);
    report.deleted.push(record.id);
  }
  if (report.deleted.length > 0)
    await cp.audit.append(
      { principal: 'retention' },
      {
        action: 'backup.delete',
        resource: 'backups',
        details: { deleted: report.deleted.join(','), failed: report.failed.length },
      },
    );
  return report;
}
