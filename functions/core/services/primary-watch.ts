import type pg from 'pg';
import { connect, redact, type DatabaseConnection } from '../../engine/postgres.ts';
import type { ControlPlane } from '../context.ts';
import type { Condition } from '../records.ts';
import { Partition } from '../store/table.ts';
import { findConfig, sourceForRun } from './config-service.ts';

/**
 * The watch over the primary (the source database), once a minute with the alert checks: connect, `select`,
 * not in recovery, writable. Its state and recent history are in the API (`GET /api/dr/health/primary`);
 * the primary counts as down only after `FAILURES` probes in a row failed over at least `WINDOW_MS` (one
 * failed probe — a restart, a network blip — is not an outage), and that opens an alert. Automatic failover
 * (`autoFailover: true`) acts on the same decision (issue 22: not built yet; the alert says so).
 */
export const PRIMARY_WATCH = {
  /** Probes in a row that must fail. */
  failures: 3,
  /** And over at least this long (from the first failed probe to the last). */
  windowMs: 2 * 60_000,
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
  readonly error?: string;
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
    const { rows } = await client.query<{ recovery: boolean; readonly: string }>(
      "SELECT pg_is_in_recovery() AS recovery, current_setting('transaction_read_only') AS readonly",
    );
    const inRecovery = rows[0]!.recovery;
    const writable = !inRecovery && rows[0]!.readonly === 'off';
    return {
      at,
      ok: writable,
      ms: Date.now() - started,
      inRecovery,
      writable,
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
export function nextState(previous: PrimaryState | undefined, probe: PrimaryProbe): PrimaryState {
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
    failures >= PRIMARY_WATCH.failures &&
    Date.parse(probe.at) - Date.parse(firstFailureAt) >= PRIMARY_WATCH.windowMs;
  const state = down ? 'DOWN' : 'FAILING';
  return {
    state,
    consecutiveFailures: failures,
    firstFailureAt,
    since: previous?.state === state ? previous.since : probe.at,
    lastProbe: probe,
    history,
  };
}

/** Probes the primary and records the result; undefined when the config names no source database. */
export async function watchPrimary(cp: ControlPlane): Promise<PrimaryState | undefined> {
  const database = (await sourceForRun(cp))?.database;
  if (!database) return undefined;
  const recent = await cp.table.get<PrimaryState>(Partition.alert, KEY);
  if (recent && cp.now().getTime() - Date.parse(recent.data.lastProbe.at) < MIN_PROBE_INTERVAL_MS)
    return recent.data;
  const result = await probe(database, () => cp.now());
  const stored = await cp.table.get<PrimaryState>(Partition.alert, KEY);
  const next = nextState(stored?.data, result);
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
  const [stored, config] = await Promise.all([
    cp.table.get<PrimaryState>(Partition.alert, KEY),
    findConfig(cp),
  ]);
  return {
    ...(stored ? stored.data : { state: 'UNKNOWN', history: [] }),
    autoFailover: config?.autoFailover ?? false,
    rule: {
      failures: PRIMARY_WATCH.failures,
      windowSeconds: PRIMARY_WATCH.windowMs / 1000,
      timeoutSeconds: PRIMARY_WATCH.timeoutMs / 1000,
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
  const last = state.lastProbe;
  return [
    {
      key: 'primary-down',
      active: state.state === 'DOWN',
      subject: '[DR] The primary database is down',
      lines: [
        `${state.consecutiveFailures} probes in a row failed since ${state.firstFailureAt ?? last.at}; the last at ${last.at}: ${last.error ?? 'failed'}.`,
        config.autoFailover
          ? 'autoFailover is on, but automatic failover is not built yet: nothing was done. Fail over by hand (see the README).'
          : 'autoFailover is off: nothing was done. Restore or fail over by hand (see the README).',
      ],
      recoverySubject: '[DR] Recovered — the primary database answers again',
      recoveryLines: [`The primary answered at ${last.at} (${last.ms} ms), writable.`],
    },
  ];
}
