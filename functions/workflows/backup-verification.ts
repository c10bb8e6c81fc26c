/** BACKUP_VERIFICATION: the newest backup of every schedule, verified on every target that holds it. */
import type { StoredSchedule } from '../core/records.ts';
import { listBackups } from '../core/services/backup-service.ts';
import { withBackup } from '../core/services/open-backup.ts';
import { Partition, type StoredItem } from '../core/store/table.ts';
import { verify } from '../engine/maintenance.ts';
import { archiveListing, group, required, testState } from './steps.ts';

export const backupVerification = group(testState, {
  'test.verification.plan': async (cp) => {
    const schedules = await cp.table.queryAll<StoredItem<StoredSchedule>>(Partition.schedule);
    const items: { scheduleId: string; backupId: string; targetId: string; bytes: number }[] = [];
    for (const { data: schedule } of schedules) {
      const newest = (await listBackups(cp, { scheduleId: schedule.id, latest: true })).items[0];
      if (!newest) continue;
      for (const target of newest.targets)
        if (target.status === 'SUCCESS')
          items.push({
            scheduleId: schedule.id,
            backupId: newest.id,
            targetId: target.targetId,
            // What the target holds of it: how much verification reads (the state machine picks the runner by it)
            bytes: target.bytesWritten ?? 0,
          });
    }
    return { items };
  },
  'test.verify': async (cp, deps, state) => {
    const item = required(state.item, 'item');
    return withBackup(
      cp,
      item.backupId,
      deps.masterKey,
      async (repository, manifest) => {
        const report = await verify(repository, item.backupId);
        const problems = report.problems.map((problem) => `${problem.object}: ${problem.message}`);
        if (report.ok && manifest.database && !manifest.database.schemaOnly) {
          const listing = await archiveListing(repository, manifest).catch((error: unknown) => {
            problems.push(`pg_restore --list refused the database archive: ${(error as Error).message}`);
            return undefined;
          });
          const tables = listing?.split('\n').filter((line) => / TABLE DATA /.test(line)).length;
          if (listing !== undefined && tables !== manifest.database.tables.length)
            problems.push(
              `pg_restore --list shows ${tables} tables, the backup holds ${manifest.database.tables.length}`,
            );
        }
        return {
          ...item,
          ok: problems.length === 0,
          bytes: report.bytes,
          chunks: report.chunks,
          problems,
          brokenItems: report.brokenItems,
        };
      },
      item.targetId,
    );
  },
});
