import { z } from 'zod';
import type { ControlPlane } from '../core/context.ts';
import { NotFoundError, ValidationError } from '../core/errors.ts';
import {
  backupListQuery,
  configPatch,
  drConfigInput,
  drTestInput,
  drTestListQuery,
  restoreListQuery,
  failoverRequest,
  failbackRequest,
  drTestResultsInput,
  idParams,
  metricsQuery,
  restoreInput,
  listQuery,
  scheduleInput,
  targetInput,
} from '../core/schemas.ts';
import {
  confirmBackupReview,
  downloadLinks,
  getBackup,
  listBackups,
  startRun,
} from '../core/services/backup-service.ts';
import { listFirings } from '../core/services/dispatch-service.ts';
import { getDrTest, listDrTests, recordDrTestResults, startDrTest } from '../core/services/drtest-service.ts';
import { primaryHealth } from '../core/services/primary-watch.ts';
import { getRestore, listRestores, startRestore } from '../core/services/restore-service.ts';
import {
  getFailover,
  listFailovers,
  requestFailover,
  startFailback,
} from '../core/services/failover-service.ts';
import { listAlerts } from '../core/services/alert-service.ts';
import { changeStreamReport } from '../core/services/change-stream-service.ts';
import {
  complianceView,
  metricsRange,
  metricsSeries,
  metricsSuccessRate,
  metricsSummary,
  metricsViolations,
} from '../core/services/metrics-service.ts';
import { retentionPlan } from '../core/services/retention-service.ts';
import { ServiceUnavailableError } from '../core/errors.ts';
import { configAsInput, getConfig, replaceConfig } from '../core/services/config-service.ts';
import { mergePatch } from '../core/merge-patch.ts';
import {
  createSchedule,
  deleteSchedule,
  getSchedule,
  listSchedules,
  updateSchedule,
} from '../core/services/schedule-service.ts';
import {
  checkTarget,
  targetUsage,
  createTarget,
  deleteTarget,
  getTarget,
  listTargets,
  updateTarget,
} from '../core/services/target-service.ts';
import { actorOf, ifMatchVersion, parseWith, type HttpEvent } from './http.ts';
import type { DrRole } from '../core/authz.ts';

export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** The DR config's parts that a replace keeps when omitted (null removes them). */
const KEPT_WHEN_OMITTED = ['source', 'environments', 'notificationEmails', 'failover', 'hooks'] as const;

export interface RouteRequest<B, Q, P> {
  readonly body: B;
  readonly query: Q;
  readonly params: P;
  readonly event: HttpEvent;
}

export interface RouteResponse {
  readonly status?: number;
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
}

/**
 * One API operation: how it is reached, what it accepts (schemas that both validate requests and document
 * them in OpenAPI), and a handler that calls a domain function and shapes the response.
 */
export interface Route<B = unknown, Q = unknown, P = unknown> {
  readonly method: Method;
  readonly path: string;
  readonly operationId: string;
  readonly summary: string;
  readonly tag: string;
  /** Reachable without authentication (health only). */
  readonly public?: boolean;
  /** Who may call it (core/authz.ts). @default viewer for GET, operator otherwise */
  readonly role?: DrRole;
  readonly body?: z.ZodType<B>;
  readonly query?: z.ZodType<Q>;
  readonly params?: z.ZodType<P>;
  /** The status of a successful response. */
  readonly status: number;
  readonly handle: (request: RouteRequest<B, Q, P>) => Promise<RouteResponse>;
}

function route<B = undefined, Q = undefined, P = undefined>(definition: Route<B, Q, P>): Route {
  return definition as unknown as Route;
}

/** The role a route needs: its own, or viewer to read and operator to change. */
export function neededRole(route: Route): DrRole {
  return route.role ?? (route.method === 'GET' ? 'viewer' : 'operator');
}

/** The version a client expects to be replacing: If-Match header first, then `version` in the body. */
function expectedVersion(event: HttpEvent, body?: { version?: number | undefined }): number | undefined {
  const header = ifMatchVersion(event);
  if (header !== undefined && body?.version !== undefined && header !== body.version) {
    throw ValidationError.forField('version', `disagrees with the If-Match header (${header})`);
  }
  return header ?? body?.version;
}

function etag(version: number): Record<string, string> {
  return { etag: `"${version}"` };
}

export interface ApiInfo {
  readonly version: string;
  readonly mode: 'aws' | 'local';
}

export function buildRoutes(cp: ControlPlane, info: ApiInfo, openApi: () => unknown): Route[] {
  return [
    route({
      method: 'GET',
      path: '/api/dr/health',
      operationId: 'getHealth',
      summary: 'Liveness: answers without authentication once the server is ready',
      tag: 'meta',
      public: true,
      status: 200,
      handle: () => Promise.resolve({ body: { status: 'ok', version: info.version, mode: info.mode } }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/health/primary',
      operationId: 'getPrimaryHealth',
      summary:
        'The watch over the primary database (once a minute: connect, select, not in recovery, writable): state (UP, FAILING, DOWN, UNKNOWN), consecutive failures, the probes of the last two hours, and the rule that declares it down',
      tag: 'health',
      status: 200,
      handle: async () => ({ body: await primaryHealth(cp) }),
    }),
    route({
      method: 'POST',
      path: '/api/dr/failover',
      operationId: 'startFailover',
      summary:
        'Fail over to the standby by hand (confirm: "FAILOVER"): the guardrails of the automatic failover apply; refused while the watch sees the primary up unless force; 202 with the failover',
      tag: 'failover',
      role: 'admin',
      body: failoverRequest,
      status: 202,
      handle: async ({ body, event }) => {
        const record = await requestFailover(cp, actorOf(event), body);
        return { body: record, headers: { location: `/api/dr/failover/${record.id}` } };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/failover',
      operationId: 'listFailovers',
      summary:
        'Failovers of the primary, newest first (paged): trigger, standby, promotion, endpoint, checks, measured data loss, hooks, failback',
      tag: 'failover',
      query: listQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await listFailovers(cp, query) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/failover/{id}',
      operationId: 'getFailover',
      summary: 'One failover: what was done, step by step, and the data loss measured',
      tag: 'failover',
      params: idParams,
      status: 200,
      handle: async ({ params }) => ({ body: await getFailover(cp, params.id) }),
    }),
    route({
      method: 'POST',
      path: '/api/dr/failover/{id}/failback',
      operationId: 'failBack',
      summary:
        'Point the application back at the original primary once it is rebuilt from the standby (it must be writable and on a later timeline, unless force); 202',
      tag: 'failover',
      role: 'admin',
      params: idParams,
      body: failbackRequest,
      status: 202,
      handle: async ({ params, body, event }) => ({
        body: await startFailback(cp, params.id, actorOf(event), body.force),
      }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/openapi.json',
      operationId: 'getOpenApi',
      summary: 'This API as an OpenAPI 3.1 document',
      tag: 'meta',
      status: 200,
      handle: () => Promise.resolve({ body: openApi() }),
    }),

    route({
      method: 'GET',
      path: '/api/dr/config',
      operationId: 'getConfig',
      summary: 'The DR config',
      tag: 'config',
      status: 200,
      handle: async () => {
        const view = await getConfig(cp);
        return { body: view, headers: etag(view.version) };
      },
    }),
    route({
      method: 'POST',
      path: '/api/dr/config',
      role: 'admin',
      operationId: 'putConfig',
      summary:
        'Create or replace the DR config: unset settings take the seed defaults; an omitted source, environments or notificationEmails keeps the stored one, null removes it',
      tag: 'config',
      body: drConfigInput,
      status: 200,
      handle: async ({ body, event }) => {
        const { view, created } = await replaceConfig(cp, body, actorOf(event), expectedVersion(event, body));
        return { status: created ? 201 : 200, body: view, headers: etag(view.version) };
      },
    }),
    route({
      method: 'PATCH',
      path: '/api/dr/config',
      role: 'admin',
      operationId: 'patchConfig',
      summary:
        'Change part of the DR config as a JSON merge patch (RFC 7396): members given replace, objects merge, null removes; passwords not given are kept',
      tag: 'config',
      body: configPatch,
      status: 200,
      handle: async ({ body, event }) => {
        const { input, version } = await configAsInput(cp);
        const patched = mergePatch(input, body) as Record<string, unknown>;
        // null removes: for the parts a replace keeps when they are omitted, the removal is said as null.
        for (const key of KEPT_WHEN_OMITTED) if (body[key] === null) patched[key] = null;
        const merged = parseWith(drConfigInput, patched, 'body');
        const expected = expectedVersion(event, merged) ?? version;
        const { view } = await replaceConfig(cp, { ...merged, version: expected }, actorOf(event), expected);
        return { body: view, headers: etag(view.version) };
      },
    }),

    route({
      method: 'GET',
      path: '/api/dr/targets',
      operationId: 'listTargets',
      summary: 'List backup targets',
      tag: 'targets',
      query: listQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await listTargets(cp, query.limit, query.nextToken) }),
    }),
    route({
      method: 'POST',
      path: '/api/dr/targets',
      role: 'admin',
      operationId: 'createTarget',
      summary: 'Create a backup target (secret fields go to the secret store and are never returned)',
      tag: 'targets',
      body: targetInput,
      status: 201,
      handle: async ({ body, event }) => {
        const view = await createTarget(cp, body, actorOf(event));
        return { body: view, headers: { ...etag(view.version), location: `/api/dr/targets/${view.id}` } };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/targets/{id}',
      operationId: 'getTarget',
      summary: 'Get a backup target',
      tag: 'targets',
      params: idParams,
      status: 200,
      handle: async ({ params }) => {
        const view = await getTarget(cp, params.id);
        return { body: view, headers: etag(view.version) };
      },
    }),
    route({
      method: 'PUT',
      path: '/api/dr/targets/{id}',
      role: 'admin',
      operationId: 'updateTarget',
      summary: 'Replace a backup target (omitted secrets are kept; null removes one)',
      tag: 'targets',
      params: idParams,
      body: targetInput,
      status: 200,
      handle: async ({ params, body, event }) => {
        const view = await updateTarget(cp, params.id, body, actorOf(event), expectedVersion(event, body));
        return { body: view, headers: etag(view.version) };
      },
    }),
    route({
      method: 'DELETE',
      path: '/api/dr/targets/{id}',
      role: 'admin',
      operationId: 'deleteTarget',
      summary: 'Delete a backup target (409 while an active schedule uses it)',
      tag: 'targets',
      params: idParams,
      status: 204,
      handle: async ({ params, event }) => {
        await deleteTarget(cp, params.id, actorOf(event), expectedVersion(event));
        return {};
      },
    }),

    route({
      method: 'POST',
      path: '/api/dr/targets/{id}/check',
      operationId: 'checkTarget',
      summary: 'Live probe: write, read back and delete a small object; latency, or a classified reason',
      tag: 'targets',
      params: idParams,
      status: 200,
      handle: async ({ params }) => ({ body: await checkTarget(cp, params.id) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/targets/{id}/usage',
      operationId: 'targetUsage',
      summary: 'Bytes stored on the target (and free capacity where the medium tells), measured now',
      tag: 'targets',
      params: idParams,
      status: 200,
      handle: async ({ params }) => ({ body: await targetUsage(cp, params.id) }),
    }),

    route({
      method: 'POST',
      path: '/api/dr/schedules/{id}/execute',
      operationId: 'executeSchedule',
      summary: 'Start a backup of this schedule now; 202 with the backup id (409 while one runs)',
      tag: 'backups',
      params: idParams,
      status: 202,
      handle: async ({ params, event }) => {
        const record = await startRun(cp, cp.runs, {
          scheduleId: params.id,
          trigger: { kind: 'manual', actor: actorOf(event).principal },
          actor: actorOf(event),
        });
        return { body: record, headers: { location: `/api/dr/backups/${record.id}` } };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/schedules/{id}/firings',
      operationId: 'listFirings',
      summary: 'The firings of this schedule, newest first: started, missed (the system was down), skipped',
      tag: 'schedules',
      params: idParams,
      status: 200,
      handle: async ({ params }) => {
        await getSchedule(cp, params.id);
        return { body: { items: await listFirings(cp, params.id) } };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/backups',
      operationId: 'listBackups',
      summary:
        'The backup catalog, newest first: filter by type, status, schedule, target, time; latest=true',
      tag: 'backups',
      query: backupListQuery,
      status: 200,
      handle: async ({ query }) => {
        const { latest, ...rest } = query;
        return { body: await listBackups(cp, { ...rest, ...(latest ? { latest } : {}) }) };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/backups/{id}/download',
      role: 'operator',
      operationId: 'downloadBackup',
      summary:
        'Time-limited links to the backup as standard artifacts: SQL for psql, an archive for pg_restore, files as .tar.gz (202 while they are being prepared)',
      tag: 'backups',
      params: idParams,
      status: 200,
      handle: ({ params, event }) => downloadLinks(cp, cp.downloads, params.id, actorOf(event)),
    }),
    route({
      method: 'POST',
      path: '/api/dr/backups/{id}/confirm',
      role: 'admin',
      operationId: 'confirmBackup',
      summary:
        'Confirm a backup flagged for review (empty, or far smaller than the one before) after checking the source really shrank: it becomes a restore point; 409 when it is not flagged',
      tag: 'backups',
      params: idParams,
      status: 200,
      handle: async ({ params, event }) => ({
        body: await confirmBackupReview(cp, params.id, actorOf(event)),
      }),
    }),
    route({
      method: 'POST',
      path: '/api/dr/restore',
      operationId: 'startRestore',
      summary:
        'Restore a backup (by id, or the newest at or before pointInTime) into a database and/or directory; 202 with the restore id and execution ARN',
      tag: 'restores',
      body: restoreInput,
      status: 202,
      handle: async ({ body, event }) => {
        const record = await startRestore(cp, body, actorOf(event));
        return {
          body: {
            restoreId: record.id,
            executionArn: record.executionArn,
            status: record.status,
            restore: record,
          },
          headers: { location: `/api/dr/restore/${record.id}` },
        };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/restore',
      operationId: 'listRestores',
      summary: 'Restores, newest first (status; paged), each with its progress and workflow steps',
      tag: 'restores',
      query: restoreListQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await listRestores(cp, query) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/restore/{id}',
      operationId: 'getRestore',
      summary: 'One restore: status, plan (backup, chain, bytes, gap to the asked time), result or error',
      tag: 'restores',
      params: idParams,
      status: 200,
      handle: async ({ params }) => ({ body: await getRestore(cp, params.id) }),
    }),
    route({
      method: 'POST',
      path: '/api/dr/test',
      operationId: 'startDrTest',
      summary:
        'Start a DR test (testType, targetEnvironment, notifyOnCompletion); 202 with the test id and execution ARN',
      tag: 'dr-tests',
      body: drTestInput,
      status: 202,
      handle: async ({ body, event }) => {
        const record = await startDrTest(cp, body, actorOf(event));
        return {
          body: {
            testId: record.id,
            ...(record.executionArn ? { executionArn: record.executionArn } : {}),
            status: record.status,
            test: record,
          },
          headers: { location: `/api/dr/test/${record.id}` },
        };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/test',
      operationId: 'listDrTests',
      summary:
        'DR tests, newest first (testType, status; paged), with when each type last passed and whether it is overdue',
      tag: 'dr-tests',
      query: drTestListQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await listDrTests(cp, query) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/test/{id}',
      operationId: 'getDrTest',
      summary: 'One DR test: status, execution, results (success, actual RTO/RPO, issues, phases)',
      tag: 'dr-tests',
      params: idParams,
      status: 200,
      handle: async ({ params }) => ({ body: await getDrTest(cp, params.id) }),
    }),
    route({
      method: 'POST',
      path: '/api/dr/test/{id}/results',
      operationId: 'recordDrTestResults',
      summary: "Record the results of a DR test run by hand (the guide's fields)",
      tag: 'dr-tests',
      params: idParams,
      body: drTestResultsInput,
      status: 200,
      handle: async ({ params, body, event }) => ({
        body: await recordDrTestResults(cp, params.id, body, actorOf(event)),
      }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/metrics',
      operationId: 'getMetrics',
      summary:
        'Key figures over startDate..endDate: backup success rate, durations, storage per target, RTO/RPO violations, last restore points, DR-test compliance',
      tag: 'metrics',
      query: metricsQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await metricsSummary(cp, metricsRange(cp, query)) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/metrics/violations',
      operationId: 'getViolations',
      summary:
        'RPO and RTO violations overlapping the range: kind, start, end or ongoing, objective, achieved',
      tag: 'metrics',
      query: metricsQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await metricsViolations(cp, metricsRange(cp, query)) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/metrics/series',
      operationId: 'getMetricsSeries',
      summary:
        'The figures over time, for charts: per day success rate, durations (average, p95) and storage per target; the restore point age (RPO) over time; violations; each DR test’s RTO',
      tag: 'metrics',
      query: metricsQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await metricsSeries(cp, metricsRange(cp, query)) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/metrics/success-rate',
      operationId: 'getSuccessRate',
      summary: 'Backup success rate over the range: overall, per schedule, per target, per day',
      tag: 'metrics',
      query: metricsQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await metricsSuccessRate(cp, metricsRange(cp, query)) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/metrics/compliance',
      operationId: 'getCompliance',
      summary:
        'The 3-2-1 view per schedule: copies, media, off-site and immutable copies of the newest restore point, the newest restore test, and what is missing',
      tag: 'metrics',
      status: 200,
      handle: async () => ({ body: await complianceView(cp) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/alerts',
      operationId: 'listAlerts',
      summary:
        'Alert episodes: open ones first (a failing schedule, the RPO, an overdue DR test type…), since when',
      tag: 'metrics',
      status: 200,
      handle: async () => ({ body: { items: await listAlerts(cp) } }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/retention',
      operationId: 'retentionPlan',
      summary: 'Dry run of retention: the backups it would delete now, and why each other one is kept',
      tag: 'backups',
      status: 200,
      handle: async () => ({ body: await retentionPlan(cp) }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/change-stream',
      operationId: 'changeStream',
      summary:
        'Change-stream mode on the source database: what it allows (wal_level, privileges, tables without a primary key or replica identity, each with the fix) and where the replication slot stands (retained WAL, confirmed position)',
      tag: 'schedules',
      status: 200,
      handle: async () => {
        const report = await changeStreamReport(cp);
        if (!report) throw new NotFoundError('the DR config names no source database');
        return { body: report };
      },
    }),
    route({
      method: 'POST',
      path: '/api/dr/retention/apply',
      role: 'admin',
      operationId: 'applyRetention',
      summary: 'Apply retention now (it also runs daily and after every backup): 202, done by the worker',
      tag: 'backups',
      status: 202,
      handle: async ({ event }) => {
        if (!cp.runs?.retention)
          throw new ServiceUnavailableError('no backup worker is configured in this deployment');
        await cp.audit.append(actorOf(event), { action: 'retention.apply', resource: 'backups' });
        await cp.runs.retention();
        return { body: { status: 'started' } };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/backups/{id}',
      operationId: 'getBackup',
      summary: 'One backup: status, per-target results, restore point, sizes and deduplication',
      tag: 'backups',
      params: idParams,
      status: 200,
      handle: async ({ params }) => ({ body: await getBackup(cp, params.id) }),
    }),

    route({
      method: 'GET',
      path: '/api/dr/schedules',
      operationId: 'listSchedules',
      summary: 'List backup schedules with their next run times',
      tag: 'schedules',
      query: listQuery,
      status: 200,
      handle: async ({ query }) => ({ body: await listSchedules(cp, query.limit, query.nextToken) }),
    }),
    route({
      method: 'POST',
      path: '/api/dr/schedules',
      operationId: 'createSchedule',
      summary: 'Create a backup schedule (standard 5-field cron, UTC unless timezone is given)',
      tag: 'schedules',
      body: scheduleInput,
      status: 201,
      handle: async ({ body, event }) => {
        const view = await createSchedule(cp, body, actorOf(event));
        return { body: view, headers: { ...etag(view.version), location: `/api/dr/schedules/${view.id}` } };
      },
    }),
    route({
      method: 'GET',
      path: '/api/dr/schedules/{id}',
      operationId: 'getSchedule',
      summary: 'Get a backup schedule',
      tag: 'schedules',
      params: idParams,
      status: 200,
      handle: async ({ params }) => {
        const view = await getSchedule(cp, params.id);
        return { body: view, headers: etag(view.version) };
      },
    }),
    route({
      method: 'PUT',
      path: '/api/dr/schedules/{id}',
      operationId: 'updateSchedule',
      summary: 'Replace a backup schedule',
      tag: 'schedules',
      params: idParams,
      body: scheduleInput,
      status: 200,
      handle: async ({ params, body, event }) => {
        const view = await updateSchedule(cp, params.id, body, actorOf(event), expectedVersion(event, body));
        return { body: view, headers: etag(view.version) };
      },
    }),
    route({
      method: 'DELETE',
      path: '/api/dr/schedules/{id}',
      operationId: 'deleteSchedule',
      summary: 'Delete a backup schedule',
      tag: 'schedules',
      params: idParams,
      status: 204,
      handle: async ({ params, event }) => {
        await deleteSchedule(cp, params.id, actorOf(event), expectedVersion(event));
        return {};
      },
    }),

    route({
      method: 'GET',
      path: '/api/dr/audit',
      operationId: 'listAudit',
      summary: 'The audit log, newest first',
      tag: 'audit',
      query: listQuery,
      status: 200,
      handle: async ({ query }) => ({
        body: await cp.audit.list({ limit: query.limit, nextToken: query.nextToken }),
      }),
    }),
    route({
      method: 'GET',
      path: '/api/dr/audit/verify',
      operationId: 'verifyAudit',
      summary: "Walk the audit log's hash chain and report the first entry that does not fit",
      tag: 'audit',
      status: 200,
      handle: async () => ({ body: await cp.audit.verify() }),
    }),
  ];
}

/** Runs one route: validate path, query and body, then call the handler. */
export async function runRoute(route: Route, event: HttpEvent): Promise<RouteResponse & { status: number }> {
  const params = route.params ? parseWith(route.params, event.pathParameters ?? {}, 'path') : undefined;
  const query = parseWith(route.query ?? z.strictObject({}), event.queryStringParameters ?? {}, 'query');
  if (!route.body && event.parsedBody !== undefined) {
    throw ValidationError.forField('body', 'this operation takes no request body');
  }
  const body = route.body ? parseWith(route.body, event.parsedBody, 'body') : undefined;
  const response = await route.handle({ body, query, params, event });
  return { ...response, status: response.status ?? route.status };
}
