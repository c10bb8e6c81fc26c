import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ControlPlane } from '../core/context.ts';
import { getBackup } from '../core/services/backup-service.ts';
import { findSchedule } from '../core/services/schedule-service.ts';
import { Partition } from '../core/store/table.ts';
import { backupPart, type FanOut, type FanOutPlan } from '../engine/fanout.ts';
import { Repository } from '../engine/repository.ts';
import { MirrorStorage } from '../storage/mirror.ts';
import { StorageError, type StorageErrorKind } from '../storage/storage.ts';
import { planKey, type StagedPlan } from '../workflows/backup-fanout.ts';
import type { BackupSteps, FanOutState, PartState } from '../workflows/backup-steps.ts';
import type { TargetResult } from '../core/records.ts';
import { runBackup, type PipelineDeps } from './pipeline.ts';
import { defaultJobs, openTargets, sourceOfRun } from './run-backup.ts';
import type { ProgressEvent } from '../engine/progress.ts';

/**
 * The backup worker's side of the fan-out FULL (workflows/backup-fanout.ts): the coordinator is the usual
 * backup run with a `FanOut` that stages one part per worker in the table (the plan's parts, as a Fargate
 * task's state) and waits for their outcomes; a part opens the run's targets and writes its tables.
 */
export function fanOutSteps(pipeline: PipelineDeps, options: { pollMs?: number } = {}): BackupSteps {
  return {
    coordinate: async (cp, state) => {
      const record = await runBackup(cp, state.backupId, pipeline, {
        fanOut: (mirror, report) => stagedFanOut(cp, state, mirror, report, options.pollMs ?? 2000),
      });
      if (record.status === 'FAILED') throw new Error(record.error ?? `backup ${record.id} failed`);
      return { id: record.id, status: record.status };
    },
    part: (cp, state) => runPart(cp, pipeline, state),
  };
}

interface PartOutcome {
  /** Tables and key ranges read. */
  readonly pieces: number;
  readonly bytes: number;
  /** Targets this part could not write to: left out of the whole backup. */
  readonly failedTargets: readonly { id: string; kind: StorageErrorKind; message: string }[];
}

interface StagedPart {
  readonly state: PartState;
  readonly output?: PartOutcome;
  readonly error?: { readonly name: string; readonly message: string };
  readonly finishedAt?: string;
}

function stagedFanOut(
  cp: ControlPlane,
  state: FanOutState,
  mirror: MirrorStorage,
  report: (progress: ProgressEvent) => void,
  pollMs: number,
): FanOut {
  return {
    parts: state.workers,
    run: async (plan) => {
      const keys: string[] = [];
      try {
        for (const part of plan.parts.keys()) {
          const key = randomUUID();
          // Each part's item holds its own pieces only (an item holds at most 400 KB)
          const own: FanOutPlan = {
            ...plan,
            parts: plan.parts.map((each, index) => (index === part ? each : { pieces: [] })),
          };
          const staged: StagedPart = { state: { backupId: state.backupId, part, plan: own } };
          await cp.table.create(Partition.step, key, staged, cp.now(), `step ${key} exists`);
          keys.push(key);
        }
        const ready: StagedPlan = { parts: keys };
        await cp.table.create(Partition.step, planKey(state.backupId), ready, cp.now(), 'planned twice');
        for (;;) {
          const items = await Promise.all(keys.map((key) => cp.table.get<StagedPart>(Partition.step, key)));
          const failed = items.findIndex((item) => item === undefined || item.data.error !== undefined);
          if (failed !== -1)
            throw new Error(
              `part ${failed} of ${keys.length} failed: ${items[failed]?.data.error?.message ?? 'its state is gone'}`,
            );
          const done = items.filter((item) => item!.data.finishedAt !== undefined);
          const bytes = done.reduce((sum, item) => sum + (item!.data.output?.bytes ?? 0), 0);
          report({ phase: 'database', item: `${done.length} of ${keys.length} parts done`, bytes });
          if (done.length === keys.length) {
            for (const item of done)
              for (const target of item!.data.output?.failedTargets ?? [])
                mirror.exclude(
                  target.id,
                  new StorageError(target.kind, target.id, undefined, target.message, { ownWords: true }),
                );
            return;
          }
          await sleep(pollMs);
        }
      } finally {
        const staged = [...keys, planKey(state.backupId)];
        for (const key of staged) {
          const item = await cp.table.get(Partition.step, key).catch(() => undefined);
          if (item) await cp.table.delete(item).catch(() => undefined);
        }
      }
    },
  };
}

/** One part: the run's source and targets as the coordinator has them, its tables written to every target. */
async function runPart(cp: ControlPlane, pipeline: PipelineDeps, state: PartState): Promise<PartOutcome> {
  const record = await getBackup(cp, state.backupId);
  if (record.status !== 'RUNNING') throw new Error(`backup ${state.backupId} is no longer running`);
  const schedule = await findSchedule(cp, record.scheduleId);
  if (!schedule) throw new Error(`schedule ${record.scheduleId} was deleted`);
  const source = await sourceOfRun(cp);
  if (typeof source === 'string') throw new Error(source);
  if (!source.engineSource.database) throw new Error('the DR config names no source database');
  const results = new Map<string, TargetResult>();
  const members = await openTargets(cp, schedule, results);
  if (members.length === 0) throw new Error('no target of the schedule could be opened');
  const mirror = new MirrorStorage(members);
  try {
    const repository = await Repository.open(mirror, await pipeline.masterKey());
    const written = await backupPart(repository, state.plan, state.part, {
      connection: source.engineSource.database,
      jobs: schedule.jobs ?? defaultJobs(),
    });
    const failedTargets = [
      ...[...results.values()]
        .filter((result) => result.status === 'FAILED')
        .map((result) => ({
          id: result.targetId,
          kind: (result.error?.kind ?? 'other') as StorageErrorKind,
          message: result.error?.message ?? 'not opened',
        })),
      ...(await mirror.flush())
        .filter((member) => !member.ok)
        .map((member) => ({
          id: member.id,
          kind: (member.error?.kind ?? 'other') as StorageErrorKind,
          message: member.error?.message ?? 'failed',
        })),
    ];
    return { ...written, failedTargets };
  } finally {
    await mirror.close();
  }
}
