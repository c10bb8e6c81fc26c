import { randomUUID } from 'node:crypto';
import type { Actor } from '../audit.ts';
import type { ControlPlane } from '../context.ts';
import { checkCron, nextRuns } from '../cron.ts';
import type { FieldIssue } from '../errors.ts';
import type { ScheduleInput } from '../schemas.ts';
import { Partition, type Page, type StoredItem } from '../store/table.ts';
import {
  changeStreamReport,
  dropUnusedSlot,
  modeOf,
  type ChangeStreamReport,
} from './change-stream-service.ts';
import { findConfig } from './config-service.ts';
import { loadForChange, requireFound, throwIfIssues, versioned, type Versioned } from './common.ts';
import { targetIds } from './target-service.ts';
import type { StoredSchedule } from '../records.ts';

/** How many upcoming firing times a schedule response shows. */
export const NEXT_RUNS_SHOWN = 5;
/** Retention when neither the schedule nor the DR config says (the seed's default). */
const DEFAULT_RETENTION_DAYS = 30;

export type ScheduleView = StoredSchedule &
  Versioned & {
    /** The next firing times (UTC), empty while the schedule is paused. */
    readonly nextRuns: readonly string[];
    readonly warnings: readonly string[];
    /** On save of a change-stream INCREMENTAL schedule: what the source database allows. */
    readonly changeStream?: ChangeStreamReport;
  };

/** A stored schedule, or undefined when it was deleted (for the worker: no view, no firing times). */
export async function findSchedule(cp: ControlPlane, id: string): Promise<StoredSchedule | undefined> {
  return (await cp.table.get<StoredSchedule>(Partition.schedule, id))?.data;
}

export async function getSchedule(cp: ControlPlane, id: string): Promise<ScheduleView> {
  return toView(cp, await load(cp, id));
}

export async function listSchedules(
  cp: ControlPlane,
  limit: number,
  nextToken?: string,
): Promise<Page<ScheduleView>> {
  const page = await cp.table.query<StoredItem<StoredSchedule>>(Partition.schedule, { limit, nextToken });
  return { ...page, items: page.items.map((item) => toView(cp, item)) };
}

export async function createSchedule(
  cp: ControlPlane,
  input: ScheduleInput,
  actor: Actor,
): Promise<ScheduleView> {
  const id = input.id ?? randomUUID();
  const data = await validated(cp, id, input);
  const item = await cp.table.create(
    Partition.schedule,
    id,
    data,
    cp.now(),
    `a schedule with id ${id} already exists`,
  );
  await audited(cp, actor, 'create', id, data, { scheduleType: data.scheduleType });
  return withReport(cp, toView(cp, item));
}

export async function updateSchedule(
  cp: ControlPlane,
  id: string,
  input: ScheduleInput,
  actor: Actor,
  expectedVersion: number | undefined,
): Promise<ScheduleView> {
  const current = await loadForChange<StoredSchedule>(cp, Partition.schedule, id, {
    version: expectedVersion,
    bodyId: input.id,
  });
  const data = await validated(cp, id, input);
  const item = await cp.table.replace(current, data, cp.now());
  await audited(cp, actor, 'update', id, data, { version: item.version });
  return withReport(cp, toView(cp, item));
}

/** The audit entry of a saved schedule: what it runs and when. */
function audited(
  cp: ControlPlane,
  actor: Actor,
  change: 'create' | 'update',
  id: string,
  data: StoredSchedule,
  extra: Record<string, unknown>,
): Promise<unknown> {
  return cp.audit.append(actor, {
    action: `schedule.${change}`,
    resource: `schedule/${id}`,
    details: { name: data.name, ...extra, cronExpression: data.cronExpression, active: data.active },
  });
}

/**
 * A change-stream INCREMENTAL schedule is checked against the source when saved: tables without a primary key
 * or replica identity, wal_level, privileges — each with what to do. The save itself never depends on it.
 */
async function withReport(cp: ControlPlane, view: ScheduleView): Promise<ScheduleView> {
  if (view.scheduleType !== 'INCREMENTAL' || modeOf(view) === 'dump') return view;
  const report = await changeStreamReport(cp);
  if (!report) return view;
  const warnings = [...view.warnings];
  if (report.error)
    warnings.push(`the source database could not be checked for change-stream mode: ${report.error}`);
  else if (report.readiness && !report.readiness.available)
    warnings.push(
      `changes cannot be captured from the source (${report.readiness.reasons.join('; ')}): INCREMENTALs deduplicate dumps until this is fixed`,
    );
  if (report.readiness?.unloggedTables.length)
    warnings.push(
      `unlogged tables are not in the WAL, so a restore gives them as the FULL left them: ${report.readiness.unloggedTables.join(', ')}`,
    );
  return { ...view, warnings, changeStream: report };
}

export async function deleteSchedule(
  cp: ControlPlane,
  id: string,
  actor: Actor,
  expectedVersion: number | undefined,
): Promise<void> {
  const current = await loadForChange<StoredSchedule>(cp, Partition.schedule, id, {
    version: expectedVersion,
  });
  await cp.table.delete(current);
  const slot = await dropUnusedSlot(cp, current.data);
  await cp.audit.append(actor, {
    action: 'schedule.delete',
    resource: `schedule/${id}`,
    details: { name: current.data.name, ...(slot ? { slot } : {}) },
  });
}

async function validated(cp: ControlPlane, id: string, input: ScheduleInput): Promise<StoredSchedule> {
  const issues: FieldIssue[] = [];
  const cron = checkCron(input.cronExpression, input.timezone);
  if (!cron.ok) {
    const field = cron.reason?.startsWith('unknown time zone') ? 'timezone' : 'cronExpression';
    issues.push({ field, message: cron.reason ?? 'is invalid' });
  }
  const known = await targetIds(cp);
  input.targets.forEach((target, index) => {
    if (!known.has(target))
      issues.push({ field: `targets[${index}]`, message: `no target with id ${target}` });
    if (input.targets.indexOf(target) !== index)
      issues.push({ field: `targets[${index}]`, message: 'is listed twice' });
  });
  const config = await findConfig(cp);
  const ceiling = config?.backupRetentionDays;
  if (input.retentionDays !== undefined && ceiling !== undefined && input.retentionDays > ceiling) {
    issues.push({
      field: 'retentionDays',
      message: `must not exceed the DR config's backupRetentionDays (${ceiling})`,
    });
  }
  throwIfIssues(issues);
  const { id: _id, version: _version, ...fields } = input;
  return { ...fields, id, retentionDays: input.retentionDays ?? ceiling ?? DEFAULT_RETENTION_DAYS };
}

async function load(cp: ControlPlane, id: string): Promise<StoredItem<StoredSchedule>> {
  return requireFound(await cp.table.get<StoredSchedule>(Partition.schedule, id), `schedule ${id}`);
}

function toView(cp: ControlPlane, item: StoredItem<StoredSchedule>): ScheduleView {
  const schedule = item.data;
  const warnings: string[] = [];
  if (schedule.targets.length === 0)
    warnings.push('no targets: the schedule cannot run until at least one target is added');
  if ((schedule.workers ?? 1) > 1) {
    if (schedule.scheduleType !== 'FULL')
      warnings.push(`workers: only FULL runs fan out; ${schedule.scheduleType} runs use one worker`);
    else if (!cp.fanOut)
      warnings.push(
        'workers: this deployment cannot fan a backup out (no network for Fargate tasks: deploy with -c workerSubnets): runs use one worker',
      );
  }
  return {
    ...versioned(item),
    nextRuns: schedule.active
      ? nextRuns(schedule.cronExpression, schedule.timezone, cp.now(), NEXT_RUNS_SHOWN)
      : [],
    warnings,
  };
}
