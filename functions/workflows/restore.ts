/** The restore workflow: plan (which backup, where), prepare the destination, restore database and files, finish. */
import { runProgress } from './run-record.ts';
import { mkdir, readdir } from 'node:fs/promises';
import type { ControlPlane } from '../core/context.ts';
import { pathProblem } from '../core/paths.ts';
import type { BackupRecord } from '../core/records.ts';
import { getBackup, isGood, newestRestorePoint } from '../core/services/backup-service.ts';
import { environmentConnection, findConfig } from '../core/services/config-service.ts';
import { withBackup } from '../core/services/open-backup.ts';
import {
  getRestore,
  updateRestore,
  type RestorePlan,
  type RestoreRecord,
} from '../core/services/restore-service.ts';
import { Partition } from '../core/store/table.ts';
import {
  connectionFrom,
  createDatabase,
  userRelationCount,
  withDatabase,
  type DatabaseConnection,
} from '../engine/postgres.ts';
import { restoreDatabase, restoreFiles } from '../engine/restore.ts';
import { planRdsRestore } from './rds.ts';
import type { WorkflowDeps } from './steps.ts';
import {
  WorkflowError,
  hookIssues,
  databaseExists,
  databaseNameOf,
  errorMessage,
  group,
  restoreState,
} from './steps.ts';

async function planRestore(
  cp: ControlPlane,
  deps: WorkflowDeps,
  restore: RestoreRecord,
): Promise<RestorePlan> {
  const request = restore.request;
  const rdsSource = (await findConfig(cp))?.source?.rds;
  if (request.pointInTime !== undefined && request.method !== 'backup' && rdsSource)
    return planRdsRestore(deps, restore, rdsSource);
  let backup: BackupRecord;
  let gapSeconds: number | undefined;
  let until: string | undefined;
  if (request.backupId !== undefined) {
    backup = await getBackup(cp, request.backupId);
    if (!isGood(backup))
      throw new WorkflowError(
        'BackupNotRestorable',
        `backup ${backup.id} is ${backup.status}: it cannot be restored`,
      );
  } else {
    const at = Date.parse(request.pointInTime!);
    const candidates = await restorePointsBefore(cp, at, request.scheduleId);
    if (!candidates)
      throw new WorkflowError(
        'NoRestorePoint',
        `no backup${request.scheduleId ? ` of schedule ${request.scheduleId}` : ''} restores to ${request.pointInTime} or earlier`,
      );
    backup = candidates;
    gapSeconds = Math.round((at - Date.parse(backup.restorePoint!)) / 1000);
    if (backup.changes) {
      // Change-stream chain: its newest backup, applied up to the asked instant (the apply stops at the first
      // commit after it, so a later backup of the chain is always as good, and never misses a late commit).
      backup = (await newestOfChain(cp, backup.changes.base)) ?? backup;
      until = request.pointInTime;
      gapSeconds = undefined;
    }
  }
  const chain: string[] = [];
  for (let parent = backup.parent; parent !== undefined;) {
    chain.push(parent);
    parent = (await cp.table.get<BackupRecord>(Partition.backup, parent))?.data.parent;
  }
  return {
    method: 'backup',
    backupId: backup.id,
    type: backup.type,
    restorePoint: backup.restorePoint ?? backup.startedAt,
    ...(gapSeconds === undefined ? {} : { gapSeconds }),
    ...(until === undefined ? {} : { until }),
    chain,
    bytes: backup.sizes?.sourceBytes ?? 0,
    database: request.scope.database && backup.database !== undefined,
    files: request.scope.files && backup.files !== undefined && request.destination.filesTo !== undefined,
    destination: {
      environment: request.destination.environment,
      ...(request.destination.database ? { database: request.destination.database } : {}),
      ...(request.destination.filesTo ? { filesTo: request.destination.filesTo } : {}),
    },
  };
}

/**
 * The newest restore point of a change-stream chain (the FULL `base` and the INCREMENTALs on it, of any
 * schedule: the FULL and the INCREMENTALs are usually different schedules).
 */
function newestOfChain(cp: ControlPlane, base: string): Promise<BackupRecord | undefined> {
  return newestRestorePoint(cp, (backup) => backup.changes?.base === base, {
    past: (backup) => backup.id < base,
  });
}

/** The newest restore point whose restore point is at or before `at`. */
function restorePointsBefore(
  cp: ControlPlane,
  at: number,
  scheduleId?: string,
): Promise<BackupRecord | undefined> {
  return newestRestorePoint(
    cp,
    (backup) => backup.restorePoint !== undefined && Date.parse(backup.restorePoint) <= at,
    { scheduleId },
  );
}

/** The destination database of a restore: the environment's server, the named database on it. */
async function destinationOf(cp: ControlPlane, restore: RestoreRecord): Promise<DatabaseConnection> {
  const server = await environmentConnection(cp, restore.request.destination.environment);
  if (!server)
    throw new WorkflowError(
      'NoDestination',
      `environment ${restore.request.destination.environment} has no database configured`,
    );
  const base = connectionFrom(server.url, server.password);
  return restore.request.destination.database
    ? withDatabase(base, restore.request.destination.database)
    : base;
}

export const restore = group(restoreState, {
  'restore.plan': async (cp, _deps, state) => {
    const restore = await getRestore(cp, state.restoreId);
    const plan = await planRestore(cp, _deps, restore);
    await updateRestore(cp, restore.id, (record) => ({ ...record, plan }));
    return plan;
  },
  'restore.prepare': async (cp, _deps, state) => {
    const restore = await getRestore(cp, state.restoreId);
    const plan = state.plan as RestorePlan;
    const prepared: Record<string, unknown> = {};
    if (plan.database) {
      const target = await destinationOf(cp, restore);
      const exists = await databaseExists(target);
      if (!exists) {
        await createDatabase(withDatabase(target, 'postgres'), databaseNameOf(target));
        prepared.createdDatabase = databaseNameOf(target);
      } else if (
        !restore.request.overwrite &&
        (await userRelationCount(target)) > 0 &&
        !partialScope(restore)
      )
        throw new WorkflowError(
          'DestinationNotEmpty',
          `database ${databaseNameOf(target)} on ${restore.request.destination.environment} is not empty: restore into an empty database, or ask for overwrite`,
        );
    }
    if (plan.files && plan.destination.filesTo) {
      const problem = await pathProblem(plan.destination.filesTo, cp.paths);
      if (problem !== undefined)
        throw new WorkflowError('DestinationRefused', `directory ${plan.destination.filesTo} ${problem}`);
      const entries = await readdir(plan.destination.filesTo).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return [];
        throw error;
      });
      if (entries.length > 0 && !restore.request.overwrite)
        throw new WorkflowError(
          'DestinationNotEmpty',
          `directory ${plan.destination.filesTo} is not empty: restore into an empty directory, or ask for overwrite`,
        );
      await mkdir(plan.destination.filesTo, { recursive: true });
    }
    return prepared;
  },
  'restore.database': async (cp, deps, state) => {
    const plan = state.plan as RestorePlan;
    if (!plan.database) return { skipped: true };
    const restore = await getRestore(cp, state.restoreId);
    const target = await destinationOf(cp, restore);
    const started = Date.now();
    const progress = runProgress(cp, { restoreId: restore.id });
    const result = await withBackup(cp, plan.backupId!, deps.masterKey, (repository, manifest) =>
      restoreDatabase(repository, manifest, {
        target,
        onProgress: progress.onProgress,
        clean: restore.request.overwrite,
        ...(plan.until ? { until: plan.until } : {}),
        ...(restore.request.scope.tables ? { tables: restore.request.scope.tables } : {}),
        ...(restore.request.scope.schemas ? { schemas: restore.request.scope.schemas } : {}),
      }),
    ).finally(() => progress.flush());
    if (!result.consistent)
      throw new WorkflowError(
        'InconsistentRestore',
        `restored tables differ from the backup: ${result.checks
          .filter((check) => !check.ok)
          .map((check) => check.table)
          .join(', ')}`,
      );
    return {
      tables: result.tables,
      rows: result.rows,
      bytes: result.bytes,
      consistent: result.consistent,
      ...(result.changes ? { changes: result.changes } : {}),
      seconds: (Date.now() - started) / 1000,
    };
  },
  'restore.files': async (cp, deps, state) => {
    const plan = state.plan as RestorePlan;
    if (!plan.files || !plan.destination.filesTo) return { skipped: true };
    const restore = await getRestore(cp, state.restoreId);
    const started = Date.now();
    const progress = runProgress(cp, { restoreId: restore.id });
    const result = await withBackup(cp, plan.backupId!, deps.masterKey, (repository, manifest) =>
      restoreFiles(repository, manifest, {
        destination: plan.destination.filesTo!,
        onProgress: progress.onProgress,
        ...(restore.request.scope.include ? { include: restore.request.scope.include } : {}),
        ...(restore.request.preserveSpecialBits ? { preserveSpecialBits: true } : {}),
      }),
    ).finally(() => progress.flush());
    return { ...result, seconds: (Date.now() - started) / 1000 };
  },
  'restore.finish': async (cp, _deps, state) => {
    const failed = state.error !== undefined;
    const dryRun = !failed && state.request?.dryRun === true;
    const now = cp.now();
    const record = await updateRestore(cp, state.restoreId, (current) => ({
      ...current,
      ...hookIssues(current.hooks, state.hookError),
      status: failed ? 'FAILED' : dryRun ? 'PLANNED' : 'SUCCEEDED',
      finishedAt: now.toISOString(),
      ...(state.plan ? { plan: state.plan as RestorePlan } : {}),
      ...(failed
        ? {
            error: [
              errorMessage(state.error),
              ...(state.cleanupError ? [`cleanup failed: ${errorMessage(state.cleanupError)}`] : []),
            ].join('; '),
          }
        : dryRun
          ? {}
          : {
              result: {
                ...(state.database && !state.database.skipped
                  ? {
                      database: {
                        tables: state.database.tables ?? 0,
                        rows: state.database.rows ?? 0,
                        bytes: state.database.bytes ?? 0,
                        consistent: state.database.consistent === true,
                        ...(state.database.changes ? { changes: state.database.changes } : {}),
                      },
                    }
                  : {}),
                ...(state.files && !state.files.skipped
                  ? { files: { files: state.files.files ?? 0, bytes: state.files.bytes ?? 0 } }
                  : {}),
                ...(state.rds
                  ? {
                      rds: {
                        identifier: state.rds.identifier,
                        cluster: state.rds.cluster === true,
                        ...(state.rdsStatus?.endpoint ? { endpoint: state.rdsStatus.endpoint } : {}),
                      },
                    }
                  : {}),
                seconds: (now.getTime() - Date.parse(current.startedAt)) / 1000,
              },
            }),
    }));
    await cp.audit.append(
      { principal: 'workflow:restore' },
      {
        action: 'restore.finish',
        resource: `restore/${record.id}`,
        details: { status: record.status, ...(record.plan ? { backupId: record.plan.backupId } : {}) },
      },
    );
    return { status: record.status };
  },
});

function partialScope(restore: RestoreRecord): boolean {
  return (restore.request.scope.tables?.length ?? 0) > 0 || (restore.request.scope.schemas?.length ?? 0) > 0;
}
