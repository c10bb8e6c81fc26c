/**
 * The fan-out FULL (statemachines/backup-fanout.asl.json): a backup run whose tables are read by several
 * Fargate tasks at once (docs/architecture.md, "Scale-out"). In a Parallel state, one branch runs the
 * coordinator — the backup run itself, which opens the snapshot, stages one part per worker and holds the
 * snapshot and the repository's lock until the parts are done, then writes the manifest — and the other waits
 * for the coordinator's plan (`fanout.plan`) and runs every part as a Fargate task in a Map. A failed part
 * fails the Map, the Parallel (Step Functions stops the coordinator's task) and the run (`fanout.failed`
 * records it when the coordinator could not): no manifest, so no backup.
 *
 * The coordinator and the parts are the backup worker's (`WorkflowDeps.backups`): workflows do not run
 * backups themselves.
 */
import type { BackupRecord } from '../core/records.ts';
import { finishRecord, releaseRun } from '../core/services/backup-service.ts';
import { Partition } from '../core/store/table.ts';
import { fanOutState, partState, type BackupSteps } from './backup-steps.ts';
import { group, WorkflowError, type Step } from './steps.ts';

/** Where the coordinator keeps the keys of its parts' staged steps, once it has planned them. */
export const planKey = (backupId: string) => `fanout-${backupId}`;

export interface StagedPlan {
  readonly parts: readonly string[];
}

const backups = (deps: { backups?: BackupSteps | undefined }): BackupSteps => {
  if (!deps.backups)
    throw new WorkflowError('NoBackupWorker', 'this runtime runs no backup worker for a fan-out');
  return deps.backups;
};

export const backupFanOut: Record<string, Step> = {
  ...group(fanOutState, {
    'fanout.coordinate': (cp, deps, state) => backups(deps).coordinate(cp, state),
    /** Ready with the parts' keys; stopped when the run ended without them (an INCREMENTAL, a failure). */
    'fanout.plan': async (cp, _deps, state) => {
      const plan = await cp.table.get<StagedPlan>(Partition.step, planKey(state.backupId));
      if (plan) return { ready: true, stopped: false, parts: plan.data.parts };
      const record = await cp.table.get<BackupRecord>(Partition.backup, state.backupId);
      return { ready: false, stopped: record?.data.status !== 'RUNNING', parts: [] };
    },
    /** The run failed where its coordinator could not say so (its task was stopped): the catalog says it. */
    'fanout.failed': async (cp, _deps, state) => {
      const record = await cp.table.get<BackupRecord>(Partition.backup, state.backupId);
      if (record?.data.status !== 'RUNNING') return { recorded: false };
      const reason = state.error?.Cause ?? state.error?.Error ?? 'the fan-out failed';
      await finishRecord(cp, state.backupId, {
        status: 'FAILED',
        error: `a part of the fan-out failed: ${reason.slice(0, 500)}`,
      });
      await releaseRun(cp, record.data.scheduleId, state.backupId);
      await cp.audit.append(
        { principal: 'backup-worker' },
        { action: 'backup.finish', resource: `backup/${state.backupId}`, details: { status: 'FAILED' } },
      );
      const plan = await cp.table.get(Partition.step, planKey(state.backupId));
      if (plan) await cp.table.delete(plan).catch(() => undefined);
      return { recorded: true };
    },
  }),
  ...group(partState, {
    'fanout.part': (cp, deps, state) => backups(deps).part(cp, state),
  }),
};
