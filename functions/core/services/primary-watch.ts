import type pg from 'pg';
import { connect, redact, type DatabaseConnection } from '../../engine/postgres.ts';
import type { ControlPlane } from '../context.ts';
import type { Condition } from '../records.ts';
import { requestStatus } from '../outbound.ts';
import { Partition } from '../store/table.ts';
import { findConfig, sourceForRun } from './config-service.ts';
import {
  activePrimary,
  failoverRefusal,
  failoverRule,
  lastSeenOf,
  startFailover,
  type FailoverRecord,
} from './failover-service.ts';
import { withTimeout } from './common.ts';

/**
 * The watch over the primary (the source database), once a minute with the alert checks: connect, `select`,
 * not in recovery, writable. Its state and recent history are in the API (`GET /api/dr/health/primary`);
 * the primary counts as down only after `failover.failures` probes in a row failed over at least
 * `failover.windowSeconds` (defaults 3 and 2 min: one failed probe — a restart, a network blip — is not an
 * outage), and that opens an alert. With `autoFailover: true` the same decision starts a failover, when the
 * guardrails allow (failover-service.ts); the alert says what was done.
 */
export const PRIMARY_WATCH = {
  /** A probe gives up after this long (connect and query). */
  timeoutMs: 5_000,
  /** Probes kept in the history (two hours at one a minute). */
  history: 120,
} as const;

const KEY = 'watch:primary';
/** A probe this recent stands: the checks and the health figures of one minute (or two asks of the worker) probe once. */
const MIN_PROBE_INTERVAL_MS = 30_000;
/** Locally the probe runs with the checks; on AWS the worker probes (it reaches the source) when this old. */
const PROBE_PERIOD_MS = 50_000;

export interface PrimaryProbe {
  readonly at: string;
  readonly ok: boolean;
  readonly ms: number;
  readonly inRecovery?: boolean;
  readonly writable?: boolean;
  /** The primary's WAL insert position when it answered (what a standby must have replayed to lose nothing). */
  readonly lsn?: string;
  /** Its last commit's time, where track_commit_timestamp is on. */
  readonly lastCommitAt?: string;
  readonly error?: string;
  /** What RDS said of the source at the same time (source.rds), if asked. */
  readonly rdsStatus?: string;
  /** The application's health URL (source.healthUrl) at the same time. */
  readonly application?: {
    readonly ok: boolean;
    readonly status?: number;
    readonly ms: number;
    readonly error?: string;
  };
}

/** What the watch decided about a DOWN primary (once per outage; again when the reason changes). */
export interface FailoverDecision {
  readonly at: string;
  readonly failoverId?: string;
  readonly refused?: string;
}

export interface PrimaryState {
  /** UP: the last probe passed; FAILING: it failed, not yet long enough; DOWN: failed long enough. */
  readonly state: 'UP' | 'FAILING' | 'DOWN';
  readonly consecutiveFailures: number;
  readonly firstFailureAt?: string;
  /** When the state last changed. */
  readonly since: string;
  readonly lastProbe: PrimaryProbe;
  /** Newest first. */
  readonly history: readonly PrimaryProbe[];
  /** While DOWN with autoFailover on: the failover started, or why none was. */
  readonly decision?: FailoverDecision;
}

/** How many failed probes over how long make the primary DOWN. */
export interface WatchRule {
  readonly failures: number;
  readonly windowSeconds: number;
}

/** One probe of the primary: a failure says why (never the password). */
export async function probe(connection: DatabaseConnection, now: () => Date): Promise<PrimaryProbe> {
  const started = Date.now();
  const at = now().toISOString();
  let client: pg.Client | undefined;
  try {
    client = await connect(connection, {
      connectionTimeoutMillis: PRIMARY_WATCH.timeoutMs,
      query_timeout: PRIMARY_WATCH.timeoutMs,
      statement_timeout: PRIMARY_WATCH.timeoutMs,
    });
    const { rows } = await client.query<{
      recovery: boolean;
      readonly: string;
      lsn: string | null;
      committed: Date | null;
    }>(
      `SELECT pg_is_in_recovery() AS recovery, current_setting('transaction_read_only') AS readonly,
              CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END AS lsn,
              CASE WHEN current_setting('track_commit_timestamp') = 'on'
                   THEN (SELECT timestamp FROM pg_last_committed_xact()) END AS committed`,
    );
    const row = rows[0]!;
    const inRecovery = row.recovery;
    const writable = !inRecovery && row.readonly === 'off';
    return {
      at,
      ok: writable,
      ms: Date.now() - started,
      inRecovery,
      writable,
      ...(row.lsn ? { lsn: row.lsn } : {}),
      ...(row.committed ? { lastCommitAt: row.committed.toISOString() } : {}),
      ...(writable ? {} : { error: inRecovery ? 'in recovery (a standby)' : 'read-only' }),
    };
  } catch (error) {
    // connect() says what failed without the password; a query's error is redacted the same way
    return { at, ok: false, ms: Date.now() - started, error: redact((error as Error).message, connection) };
  } finally {
    await client?.end().catch(() => undefined);
  }
}

/** The next state after a probe. */
export function nextState(
  previous: PrimaryState | undefined,
  probe: PrimaryProbe,
  rule: WatchRule,
): PrimaryState {
  const history = [probe, ...(previous?.history ?? [])].slice(0, PRIMARY_WATCH.history);
  if (probe.ok)
    return {
      state: 'UP',
      consecutiveFailures: 0,
      since: previous?.state === 'UP' ? previous.since : probe.at,
      lastProbe: probe,
      history,
    };
  const failures = (previous?.consecutiveFailures ?? 0) + 1;
  const firstFailureAt = failures === 1 ? probe.at : (previous?.firstFailureAt ?? probe.at);
  const down =
    failures >= rule.failures &&
    Date.parse(probe.at) - Date.parse(firstFailureAt) >= rule.windowSeconds * 1000;
  const state = down ? 'DOWN' : 'FAILING';
  return {
    state,
    consecutiveFailures: failures,
    firstFailureAt,
    since: previous?.state === state ? previous.since : probe.at,
    lastProbe: probe,
    history,
    ...(down && previous?.decision ? { decision: previous.decision } : {}),
  };
}

/** Probes the primary and records the result; undefined when the config names no source database. */
export async function watchPrimary(cp: ControlPlane): Promise<PrimaryState | undefined> {
  const database = (await sourceForRun(cp))?.database;
  if (!database) return undefined;
  const recent = await cp.table.get<PrimaryState>(Partition.alert, KEY);
  if (recent && cp.now().getTime() - Date.parse(recent.data.lastProbe.at) < MIN_PROBE_INTERVAL_MS)
    return recent.data;
  const config = await findConfig(cp);
  const [result, rdsStatus, application] = await Promise.all([
    probe(database, () => cp.now()),
    config?.source?.rds && cp.databaseStatus
      ? withTimeout('RDS', cp.databaseStatus(config.source.rds), PRIMARY_WATCH.timeoutMs).catch(
          (error: unknown) => `unknown (${(error as Error).message})`,
        )
      : undefined,
    config?.source?.healthUrl ? applicationHealth(cp, config.source.healthUrl) : undefined,
  ]);
  const probed: PrimaryProbe = {
    ...result,
    ...(rdsStatus ? { rdsStatus } : {}),
    ...(application ? { application } : {}),
  };
  const stored = await cp.table.get<PrimaryState>(Partition.alert, KEY);
  const next = nextState(stored?.data, probed, failoverRule(config?.failover));
  await (
    stored
      ? cp.table.replace(stored, next, cp.now())
      : cp.table.create(Partition.alert, KEY, next, cp.now(), 'watched')
  ).catch((error: unknown) =>
    cp.logger.warn('primary watch not recorded', { error: (error as Error).message }),
  );
  return next;
}

/** Whether the primary was up at its last probe (undefined: never probed, or no source). */
export async function primaryUp(cp: ControlPlane): Promise<boolean | undefined> {
  const stored = await cp.table.get<PrimaryState>(Partition.alert, KEY);
  return stored ? stored.data.state === 'UP' : undefined;
}

/** GET /api/dr/health/primary: the state, the probes, and the rule that decides. */
export async function primaryHealth(cp: ControlPlane) {
  const [stored, config, active] = await Promise.all([
    cp.table.get<PrimaryState>(Partition.alert, KEY),
    findConfig(cp),
    activePrimary(cp),
  ]);
  const rule = failoverRule(config?.failover);
  return {
    ...(stored ? stored.data : { state: 'UNKNOWN', history: [] }),
    autoFailover: config?.autoFailover ?? false,
    ...(active ? { failedOver: { failoverId: active.failoverId, since: active.since } } : {}),
    rule: {
      failures: rule.failures,
      windowSeconds: rule.windowSeconds,
      timeoutSeconds: PRIMARY_WATCH.timeoutMs / 1000,
      cooldownMinutes: rule.cooldownMinutes,
      allowStaleStandby: rule.allowStaleStandby,
    },
  };
}

/**
 * The primary's condition, with the alert checks: probed here when this process reaches the source, else
 * from the worker's last probe (asked for again when it is old).
 */
export async function primaryConditions(
  cp: ControlPlane,
  config: { readonly autoFailover: boolean },
): Promise<Condition[]> {
  let state: PrimaryState | undefined;
  if (cp.sourceFromWorker) {
    const stored = (await cp.table.get<PrimaryState>(Partition.alert, KEY))?.data;
    if (!stored || cp.now().getTime() - Date.parse(stored.lastProbe.at) > PROBE_PERIOD_MS)
      await cp.runs?.watch?.().catch(() => undefined);
    state = stored;
  } else state = await watchPrimary(cp);
  if (!state) return [];
  if (state.state === 'DOWN' && config.autoFailover) state = await decide(cp, state);
  const last = state.lastProbe;
  const active = state.state === 'UP' ? await activePrimary(cp) : undefined;
  return [
    {
      key: 'primary-down',
      active: state.state === 'DOWN',
      subject: '[DR] The primary database is down',
      lines: [
        `${state.consecutiveFailures} probes in a row failed since ${state.firstFailureAt ?? last.at}; the last at ${last.at}: ${last.error ?? 'failed'}.`,
        ...(last.rdsStatus ? [`RDS reports the source as: ${last.rdsStatus}.`] : []),
        ...(last.application
          ? [
              `The application's health URL: ${last.application.ok ? `answers (${last.application.status})` : `does not answer well (${last.application.status ?? last.application.error})`}.`,
            ]
          : []),
        !config.autoFailover
          ? 'autoFailover is off: nothing was done. Restore or fail over by hand (see the README).'
          : state.decision?.failoverId
            ? `autoFailover is on: failover ${state.decision.failoverId} was started at ${state.decision.at} (GET /api/dr/failover/${state.decision.failoverId}); its own email says how it ended.`
            : `autoFailover is on, but no failover was started: ${state.decision?.refused ?? 'not decided yet'}.`,
      ],
      recoverySubject: active
        ? '[DR] Recovered — the promoted standby serves as the primary'
        : '[DR] Recovered — the primary database answers again',
      recoveryLines: active
        ? [
            `The standby promoted by failover ${active.failoverId} (${active.since}) answered at ${last.at} (${last.ms} ms), writable: it is the primary now.`,
            `The old primary is not watched until the failback (POST /api/dr/failover/${active.failoverId}/failback).`,
          ]
        : [`The primary answered at ${last.at} (${last.ms} ms), writable.`],
    },
  ];
}

/**
 * With the primary DOWN and autoFailover on: starts a failover once per outage (the guardrails may refuse;
 * asked again each check while refused, audited only when the reason changes). Kept on the watch's state.
 */
async function decide(cp: ControlPlane, state: PrimaryState): Promise<PrimaryState> {
  if (state.decision?.failoverId) return state;
  const reason = `the primary is down: ${state.consecutiveFailures} probes failed since ${state.firstFailureAt}`;
  const refused = await failoverRefusal(cp);
  if (refused !== undefined && refused === state.decision?.refused) return state;
  const lastSeen = lastSeenOf(state.history);
  const outcome = await startFailover(cp, WATCH_ACTOR, {
    trigger: 'automatic',
    reason,
    ...(lastSeen ? { primaryLastSeen: lastSeen } : {}),
  }).catch((error: unknown): { started?: FailoverRecord; refused?: string } => ({
    refused: `the failover did not start: ${(error as Error).message}`,
  }));
  const decision: FailoverDecision = {
    at: cp.now().toISOString(),
    ...(outcome.started ? { failoverId: outcome.started.id } : { refused: outcome.refused ?? 'refused' }),
  };
  const stored = await cp.table.get<PrimaryState>(Partition.alert, KEY);
  if (stored)
    await cp.table
      .replace(stored, { ...stored.data, decision }, cp.now())
      .catch((error: unknown) => cp.logger.warn('failover decision not recorded', { error: String(error) }));
  return { ...state, decision };
}

/** The watch acts on its own (no caller's role). */
const WATCH_ACTOR = { principal: 'watch:primary' } as const;

/** The application's health URL: GET, 5 s, through the egress policy; 2xx and 3xx are well. */
async function applicationHealth(
  cp: ControlPlane,
  url: string,
): Promise<NonNullable<PrimaryProbe['application']>> {
  const started = Date.now();
  try {
    const status = await requestStatus(new URL(url), {
      method: 'GET',
      egress: cp.egress,
      timeoutMs: PRIMARY_WATCH.timeoutMs,
      headers: { 'user-agent': 'dr-automation-watch/1' },
    });
    return { ok: status >= 200 && status < 400, status, ms: Date.now() - started };
  } catch (error) {
    return { ok: false, ms: Date.now() - started, error: (error as Error).message };
  }
}
