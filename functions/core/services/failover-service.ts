import type { Actor } from '../audit.ts';
import type { ControlPlane } from '../context.ts';
import { ConflictError, NotFoundError, ServiceUnavailableError } from '../errors.ts';
import type { HookRun, StepRecord } from '../records.ts';
import { Partition } from '../store/table.ts';
import { newBackupId } from './backup-service.ts';
import { newestFirst, runnerOf, startRunWorkflow, updateItem } from './common.ts';
import { ACTIVE_PRIMARY_KEY, findConfig, type ActivePrimary, type StoredFailover } from './config-service.ts';

/**
 * Failover of the primary (the source database) to its standby, and the failback an operator asks for. The
 * decision is here (the guardrails); the work is the `failover` workflow's (workflows/failover.ts), which
 * records what it does in the failover's entry as it goes. Every decision is audited.
 */
export type FailoverStatus = 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'FAILING_BACK' | 'FAILED_BACK';

/** The primary as the watch last saw it answer, and the standby just before its promotion. */
export interface FailoverPosition {
  readonly at?: string;
  /** A WAL position (pg_current_wal_lsn on the primary; pg_last_wal_replay_lsn on the standby). */
  readonly lsn?: string;
  /** The last commit's time (the primary: with track_commit_timestamp; the standby: the last replayed). */
  readonly lastCommitAt?: string;
}

export interface FailoverRecord {
  readonly id: string;
  readonly status: FailoverStatus;
  readonly trigger: 'automatic' | 'manual';
  readonly actor: string;
  readonly reason: string;
  readonly startedAt: string;
  readonly finishedAt?: string;
  readonly executionArn?: string;
  readonly standbyType: string;
  /** The primary's last successful probe before it went down. */
  readonly primaryLastSeen?: FailoverPosition;
  /** The standby just before it was promoted. */
  readonly standby?: FailoverPosition & { readonly host?: string; readonly receiveLsn?: string };
  /** Where the application's database is now: host[:port] of the promoted standby. */
  readonly newPrimary?: string;
  readonly promotedAt?: string;
  /**
   * The data the failover lost, measured: WAL the standby never replayed (bytes, from the old primary's last
   * seen position), and the time between the old primary's last seen commit and the standby's last.
   */
  readonly dataLoss?: {
    readonly walBytes?: number;
    readonly seconds?: number;
    readonly note: string;
  };
  /** The endpoint switch: the Route 53 record as it was (the failback puts it back), or the hook called. */
  readonly endpoint?: {
    readonly type: string;
    readonly switched: boolean;
    readonly original?: {
      readonly Name?: string;
      readonly Type?: string;
      readonly TTL?: number;
      readonly ResourceRecords?: readonly { readonly Value?: string }[];
    };
  };
  readonly checks?: { readonly ok: boolean; readonly issues: readonly string[] };
  readonly hooks?: HookRun;
  readonly failbackHooks?: HookRun;
  readonly steps?: readonly StepRecord[];
  readonly error?: string;
  readonly issues?: readonly string[];
  readonly notified?: boolean;
  readonly failback?: {
    readonly requestedAt: string;
    readonly actor: string;
    readonly force: boolean;
    /** The status before the failback (what it returns to if the failback fails). */
    readonly from: 'SUCCEEDED' | 'FAILED';
    readonly executionArn?: string;
    readonly finishedAt?: string;
    readonly error?: string;
  };
}

/** The effective failover rule: the config's, or the defaults when it has none. */
export function failoverRule(failover: Partial<Omit<StoredFailover, 'standby' | 'endpoint'>> | undefined) {
  return {
    failures: failover?.failures ?? 3,
    windowSeconds: failover?.windowSeconds ?? 120,
    cooldownMinutes: failover?.cooldownMinutes ?? 60,
    allowStaleStandby: failover?.allowStaleStandby ?? false,
  };
}

export async function getFailover(cp: ControlPlane, id: string): Promise<FailoverRecord> {
  const item = await cp.table.get<FailoverRecord>(Partition.failover, id);
  if (!item) throw new NotFoundError(`failover ${id} not found`);
  return item.data;
}

export async function updateFailover(
  cp: ControlPlane,
  id: string,
  change: (record: FailoverRecord) => FailoverRecord,
): Promise<FailoverRecord> {
  return updateItem<FailoverRecord>(cp, Partition.failover, id, `failover ${id}`, change);
}

/** GET /api/dr/failover: failovers, newest first, paged. */
export async function listFailovers(
  cp: ControlPlane,
  filter: { limit?: number; nextToken?: string | undefined },
): Promise<{ items: FailoverRecord[]; nextToken?: string }> {
  const after = filter.nextToken === undefined ? undefined : await cp.table.openToken(filter.nextToken);
  const { items, last } = await newestFirst<FailoverRecord>(
    cp,
    Partition.failover,
    () => true,
    filter.limit ?? 50,
    after,
  );
  return last === undefined ? { items } : { items, nextToken: await cp.table.sealToken(last) };
}

/** The primary after a failover that was not failed back, if any. */
export async function activePrimary(cp: ControlPlane): Promise<ActivePrimary | undefined> {
  return (await cp.table.get<ActivePrimary>(Partition.config, ACTIVE_PRIMARY_KEY))?.data;
}

/**
 * Why a failover may not start now, or undefined when it may: a standby must be configured; one failover at a
 * time (and none while the last one is in force: fail back first); never while a restore or a DR test runs on
 * PRODUCTION; not within the cooldown after the last one.
 */
export async function failoverRefusal(cp: ControlPlane): Promise<string | undefined> {
  const config = await findConfig(cp);
  if (!config?.failover?.standby) return 'no standby is configured (failover.standby in the DR config)';
  const recent = (await newestFirst<FailoverRecord>(cp, Partition.failover, () => true, 1, undefined))
    .items[0];
  if (recent?.status === 'RUNNING' || recent?.status === 'FAILING_BACK')
    return `failover ${recent.id} is under way`;
  if (await activePrimary(cp))
    return `the last failover (${recent?.id ?? 'unknown'}) is in force: the standby is the primary; fail back first`;
  const rule = failoverRule(config.failover);
  const ended = recent?.failback?.finishedAt ?? recent?.finishedAt;
  if (ended && cp.now().getTime() - Date.parse(ended) < rule.cooldownMinutes * 60_000)
    return `within the cooldown: failover ${recent!.id} ended at ${ended} (cooldownMinutes ${rule.cooldownMinutes})`;
  const restore = (
    await newestFirst<{ id: string; status: string; request: { destination: { environment: string } } }>(
      cp,
      Partition.restore,
      (record) => record.status === 'RUNNING' && record.request.destination.environment === 'PRODUCTION',
      1,
      undefined,
    )
  ).items[0];
  if (restore) return `restore ${restore.id} is running on PRODUCTION`;
  const test = (
    await newestFirst<{ id: string; status: string; targetEnvironment: string; testType: string }>(
      cp,
      Partition.drTest,
      (record) => record.status === 'RUNNING' && record.targetEnvironment === 'PRODUCTION',
      1,
      undefined,
    )
  ).items[0];
  if (test) return `DR test ${test.id} (${test.testType}) is running on PRODUCTION`;
  return undefined;
}

/**
 * Starts a failover when the guardrails allow it; answers what was decided (`refused` with the reason). The
 * decision is audited.
 */
export async function startFailover(
  cp: ControlPlane,
  actor: Actor,
  input: {
    trigger: 'automatic' | 'manual';
    reason: string;
    primaryLastSeen?: FailoverRecord['primaryLastSeen'];
  },
): Promise<{ started?: FailoverRecord; refused?: string }> {
  const refused = !cp.workflows ? 'failover is not deployed here (no workflows)' : await failoverRefusal(cp);
  if (refused !== undefined) {
    await cp.audit.append(actor, {
      action: 'failover.refused',
      resource: 'failover',
      details: { trigger: input.trigger, reason: refused },
    });
    return { refused };
  }
  const config = await findConfig(cp);
  const now = cp.now();
  const id = newBackupId(now);
  const record: FailoverRecord = {
    id,
    status: 'RUNNING',
    trigger: input.trigger,
    actor: actor.principal,
    reason: input.reason,
    startedAt: now.toISOString(),
    standbyType: config!.failover!.standby!.type,
    ...(input.primaryLastSeen ? { primaryLastSeen: input.primaryLastSeen } : {}),
  };
  const item = await cp.table.create(Partition.failover, id, record, now, `failover ${id} exists`);
  await cp.audit.append(actor, {
    action: 'failover.start',
    resource: `failover/${id}`,
    details: { trigger: input.trigger, reason: input.reason, standby: record.standbyType },
  });
  const started = await startRunWorkflow(
    cp,
    item,
    'failover',
    { failoverId: id, standbyType: record.standbyType, runner: runnerOf(cp) },
    (reason): FailoverRecord => ({
      ...record,
      status: 'FAILED',
      error: reason,
      finishedAt: cp.now().toISOString(),
    }),
  );
  return { started };
}

/**
 * POST /api/dr/failover/{id}/failback: points the application back at the original primary, which must be up
 * and writable; without `force`, also one that has followed the standby since the failover (its timeline is
 * past the promoted standby's), so that no write made on the standby is left behind.
 */
export async function startFailback(
  cp: ControlPlane,
  id: string,
  actor: Actor,
  force: boolean,
): Promise<FailoverRecord> {
  if (!cp.workflows) throw new ServiceUnavailableError('failover is not deployed here (no workflows)');
  const record = await getFailover(cp, id);
  const active = await activePrimary(cp);
  if (record.status !== 'SUCCEEDED' && record.status !== 'FAILED')
    throw new ConflictError(
      `failover ${id} is ${record.status}: only a finished failover can be failed back`,
    );
  // A failover that promoted the standby is in force (even one that failed after), until its failback.
  if (active?.failoverId !== id)
    throw new ConflictError(`failover ${id} is not in force: nothing to fail back`);
  const requestedAt = cp.now().toISOString();
  await updateFailover(cp, id, (current) => {
    if (current.status === 'FAILING_BACK') throw new ConflictError(`failover ${id} is already failing back`);
    return {
      ...current,
      status: 'FAILING_BACK',
      failback: {
        requestedAt,
        actor: actor.principal,
        force,
        from: current.status === 'FAILED' ? 'FAILED' : 'SUCCEEDED',
      },
    };
  });
  await cp.audit.append(actor, {
    action: 'failover.failback',
    resource: `failover/${id}`,
    details: { force },
  });
  try {
    const { executionArn } = await cp.workflows.start('failover', `${id}-failback`, {
      failoverId: id,
      failingBack: true,
      runner: runnerOf(cp),
    });
    return updateFailover(cp, id, (current) => ({
      ...current,
      failback: { ...current.failback!, executionArn },
    }));
  } catch (error) {
    return updateFailover(cp, id, (current) => ({
      ...current,
      status: record.status,
      failback: {
        ...current.failback!,
        finishedAt: cp.now().toISOString(),
        error: `the workflow did not start: ${(error as Error).message}`,
      },
    }));
  }
}

/**
 * POST /api/dr/failover: a failover asked for by hand. Refused (409) when the guardrails say no, and while the
 * watch sees the primary up unless forced (two primaries: the old one must then be fenced by hand).
 */
export async function requestFailover(
  cp: ControlPlane,
  actor: Actor,
  input: { reason?: string | undefined; force: boolean },
): Promise<FailoverRecord> {
  const watch = await cp.table.get<{
    state: string;
    history: readonly { ok: boolean; at: string; lsn?: string; lastCommitAt?: string }[];
  }>(Partition.alert, 'watch:primary');
  if (watch?.data.state === 'UP' && !input.force) {
    const reason =
      'the watch sees the primary up: a failover now makes two primaries. Give force: true once the old primary is fenced (stopped, or unreachable for the application)';
    await cp.audit.append(actor, {
      action: 'failover.refused',
      resource: 'failover',
      details: { trigger: 'manual', reason },
    });
    throw new ConflictError(reason);
  }
  const lastSeen = lastSeenOf(watch?.data.history ?? []);
  const outcome = await startFailover(cp, actor, {
    trigger: 'manual',
    reason: input.reason ?? `asked for by ${actor.principal}`,
    ...(lastSeen ? { primaryLastSeen: lastSeen } : {}),
  });
  if (!outcome.started) {
    if (!cp.workflows) throw new ServiceUnavailableError(outcome.refused ?? 'no workflows');
    throw new ConflictError(`failover refused: ${outcome.refused}`);
  }
  return outcome.started;
}

/** Where the primary stood at the newest probe it answered (the base the data loss is measured from). */
export function lastSeenOf(
  history: readonly { ok: boolean; at: string; lsn?: string; lastCommitAt?: string }[],
): FailoverPosition | undefined {
  const seen = history.find((probe) => probe.ok);
  return (
    seen && {
      at: seen.at,
      ...(seen.lsn ? { lsn: seen.lsn } : {}),
      ...(seen.lastCommitAt ? { lastCommitAt: seen.lastCommitAt } : {}),
    }
  );
}
