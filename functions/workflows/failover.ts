/**
 * The failover of the primary to its standby (statemachines/failover.asl.json), and its failback on request.
 *
 * failover: check the standby (a standby, fresh enough: no older than the RPO unless allowStaleStandby) →
 * stop hooks → promote it (pg_promote() on a streaming replica; PromoteReadReplica; an Aurora global
 * database failed over to its secondary, data loss allowed since the primary is down; or the newest restore
 * point restored onto the standby server) → wait for it → the application's database is the standby from now
 * on (backups and the watch follow) → switch the endpoint (Route 53 record or a hook) → check it serves:
 * writable, the tables there → measure the data lost → start hooks → record and email.
 *
 * failback: the original primary must answer, writable, and (unless forced) have followed the standby since
 * the failover (its timeline past the standby's), so no write made on the standby is left behind → stop
 * hooks → endpoint back → start hooks → the source is the original primary again.
 */
import {
  DescribeDBInstancesCommand,
  DescribeGlobalClustersCommand,
  FailoverGlobalClusterCommand,
  PromoteReadReplicaCommand,
} from '@aws-sdk/client-rds';
import { Route53Client, type ResourceRecordSet } from '@aws-sdk/client-route-53';
import type pg from 'pg';
import { z } from 'zod';
import type { ControlPlane } from '../core/context.ts';
import { isGood, newestRestorePoint } from '../core/services/backup-service.ts';
import {
  ACTIVE_PRIMARY_KEY,
  environmentConnection,
  failoverForRun,
  findConfig,
  originalPrimaryConnection,
  type ActivePrimary,
  type FailoverForRun,
} from '../core/services/config-service.ts';
import {
  activePrimary,
  failoverRule,
  getFailover,
  updateFailover,
  type FailoverRecord,
} from '../core/services/failover-service.ts';
import { withBackup } from '../core/services/open-backup.ts';
import { Partition } from '../core/store/table.ts';
import { mailBody } from '../core/mail.ts';
import {
  connect,
  connectionFrom,
  createDatabase,
  databaseName,
  withDatabase,
  type DatabaseConnection,
} from '../engine/postgres.ts';
import { restoreDatabase } from '../engine/restore.ts';
import { STANDBY_TAG } from './failover-test.ts';
import { currentRecord, fqdn, replaceRecord } from './route53.ts';
import { switchHook } from './hooks.ts';
import { clusterEndpoint, instanceEndpoint, rdsClient, regionOfArn } from './rds.ts';
import { runProgress } from './run-record.ts';
import { WorkflowError, atEndpoint, errorMessage, group, hookIssues, type WorkflowDeps } from './steps.ts';

const stamp = z.string().optional();
export const failoverState = z.looseObject({
  failoverId: z.string(),
  failingBack: z.boolean().optional(),
  promoted: z
    .looseObject({ done: z.boolean().optional(), polls: z.number().optional(), checkedAt: stamp })
    .optional(),
  error: z.looseObject({ Error: z.string().optional(), Cause: z.string().optional() }).optional(),
  hookError: z.looseObject({ Error: z.string().optional(), Cause: z.string().optional() }).optional(),
});
type FailoverState = z.infer<typeof failoverState>;

/** The standby's configuration, which the failover needs from its first step to its last. */
async function settings(
  cp: ControlPlane,
): Promise<FailoverForRun & { standby: NonNullable<FailoverForRun['standby']> }> {
  const failover = await failoverForRun(cp);
  if (!failover?.standby)
    throw new WorkflowError('NoStandby', 'failover.standby is no longer configured in the DR config');
  return failover as FailoverForRun & { standby: NonNullable<FailoverForRun['standby']> };
}

/** Where the standby answers (RDS: its endpoint, with the source's credentials, which a replica shares). */
async function standbyConnection(
  cp: ControlPlane,
  deps: WorkflowDeps,
  standby: NonNullable<FailoverForRun['standby']>,
): Promise<{ connection: DatabaseConnection; credentials: ActivePrimary['credentials'] } | undefined> {
  if (standby.type === 'replica' || standby.type === 'restore')
    return {
      connection: connectionFrom(standby.database.url, standby.database.password),
      credentials: 'standby',
    };
  const source = await originalPrimaryConnection(cp);
  if (!source) throw new WorkflowError('NoSource', 'source.database is not configured');
  const endpoint =
    standby.type === 'rds-replica'
      ? await instanceEndpoint(deps, standby.instanceIdentifier, standby.region)
      : await clusterEndpoint(deps, standby.secondaryClusterArn);
  return endpoint
    ? { connection: connectionFrom(atEndpoint(source.url, endpoint), source.password), credentials: 'source' }
    : undefined;
}

/** Where the standby stands: its replay position, and the WAL it is behind the primary's last seen. */
async function standbyPosition(
  connection: DatabaseConnection,
  primaryLsn: string | undefined,
): Promise<{
  inRecovery: boolean;
  lsn?: string;
  receiveLsn?: string;
  lastCommitAt?: string;
  behind?: number;
}> {
  const client = await connect(connection, { connectionTimeoutMillis: 10_000, query_timeout: 10_000 });
  try {
    const { rows } = await client.query<{
      recovery: boolean;
      replay: string | null;
      receive: string | null;
      replayed: Date | null;
    }>(
      `SELECT pg_is_in_recovery() AS recovery, pg_last_wal_replay_lsn()::text AS replay,
              pg_last_wal_receive_lsn()::text AS receive, pg_last_xact_replay_timestamp() AS replayed`,
    );
    const row = rows[0]!;
    return {
      inRecovery: row.recovery,
      ...(row.replay ? { lsn: row.replay } : {}),
      ...(row.receive ? { receiveLsn: row.receive } : {}),
      ...(row.replayed ? { lastCommitAt: row.replayed.toISOString() } : {}),
      ...(primaryLsn && row.replay ? { behind: walBehind(primaryLsn, row.replay) } : {}),
    };
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * How far the standby's data lags the primary as last seen (seconds): none when it replayed all the WAL the
 * primary had written at its last probe; else from its last replayed commit to that probe; undefined when
 * nothing tells.
 */
function lagSeconds(
  record: FailoverRecord,
  position: { behind?: number; lastCommitAt?: string },
): number | undefined {
  const seen = record.primaryLastSeen?.at;
  if (!seen) return undefined;
  if (position.behind !== undefined && position.behind <= 0) return 0;
  if (!position.lastCommitAt) return undefined;
  return Math.max(0, (Date.parse(seen) - Date.parse(position.lastCommitAt)) / 1000);
}

export const failover = group(failoverState, {
  'failover.standby': async (cp, deps, state) => {
    const record = await getFailover(cp, state.failoverId);
    const config = await settings(cp);
    const rpoHours = (await findConfig(cp))?.rpo ?? 1;
    const allowStale = failoverRule(config).allowStaleStandby;
    const standby = config.standby;
    const stale = (lag: number | undefined, what: string) => {
      if (lag === undefined || lag <= rpoHours * 3600 || allowStale) return;
      throw new WorkflowError(
        'StaleStandby',
        `${what} is ${Math.round(lag)} s behind the primary as last seen, more than the RPO (${rpoHours} h): set failover.allowStaleStandby to fail over to it anyway`,
      );
    };
    if (standby.type === 'restore') {
      const newest = await newestRestorePoint(
        cp,
        (backup) => isGood(backup) && backup.restorePoint !== undefined,
      );
      if (!newest?.restorePoint)
        throw new WorkflowError('NothingToRestore', 'no good restore point to restore onto the standby');
      const seen = record.primaryLastSeen?.at ?? cp.now().toISOString();
      const lag = Math.max(0, (Date.parse(seen) - Date.parse(newest.restorePoint)) / 1000);
      stale(lag, `the newest restore point (${newest.id}, ${newest.restorePoint})`);
      await updateFailover(cp, record.id, (current) => ({
        ...current,
        standby: {
          at: cp.now().toISOString(),
          lastCommitAt: newest.restorePoint!,
          host: hostOf(standby.database.url),
        },
      }));
      return {
        backupId: newest.id,
        restorePoint: newest.restorePoint,
        lagSeconds: lag,
        bytes: newest.sizes?.sourceBytes ?? 0,
      };
    }
    if (standby.type === 'rds-replica') {
      const instance = (
        await rdsClient(deps, standby.region).send(
          new DescribeDBInstancesCommand({ DBInstanceIdentifier: standby.instanceIdentifier }),
        )
      ).DBInstances?.[0];
      if (!instance?.ReadReplicaSourceDBInstanceIdentifier)
        throw new WorkflowError(
          'NotAReplica',
          `${standby.instanceIdentifier} is not a read replica (already promoted?)`,
        );
      if (!instance.TagList?.some((tag) => tag.Key === STANDBY_TAG && tag.Value === 'true'))
        throw new WorkflowError(
          'StandbyNotTagged',
          `${standby.instanceIdentifier} is not tagged ${STANDBY_TAG}=true: tag it to let the failover promote it`,
        );
    }
    if (standby.type === 'aurora-global') {
      const global = (
        await rdsClient(deps, regionOfArn(standby.secondaryClusterArn)).send(
          new DescribeGlobalClustersCommand({ GlobalClusterIdentifier: standby.globalClusterIdentifier }),
        )
      ).GlobalClusters?.[0];
      const member = global?.GlobalClusterMembers?.find(
        (each) => each.DBClusterArn === standby.secondaryClusterArn,
      );
      if (!member)
        throw new WorkflowError(
          'NotAMember',
          `${standby.secondaryClusterArn} is not a member of ${standby.globalClusterIdentifier}`,
        );
      if (member.IsWriter)
        throw new WorkflowError('StandbyIsPrimary', `${standby.secondaryClusterArn} is already the writer`);
    }
    const reach = await standbyConnection(cp, deps, standby);
    if (!reach) throw new WorkflowError('StandbyUnreachable', 'the standby has no endpoint');
    const position = await standbyPosition(reach.connection, record.primaryLastSeen?.lsn).catch(
      (error: unknown) => {
        throw new WorkflowError(
          'StandbyUnreachable',
          `the standby does not answer: ${(error as Error).message}`,
        );
      },
    );
    if (!position.inRecovery)
      throw new WorkflowError(
        'NotAStandby',
        `${hostOf(reach.connection.url)} is not in recovery: it is not a standby (promoted already, or a primary)`,
      );
    const lag = lagSeconds(record, position);
    stale(lag, `the standby ${hostOf(reach.connection.url)}`);
    if (lag === undefined && (position.behind ?? 0) > 0 && !allowStale)
      throw new WorkflowError(
        'StaleStandby',
        `the standby ${hostOf(reach.connection.url)} is ${position.behind} bytes of WAL behind the primary as last seen, and has replayed no commit since it started: how old its data is cannot be told. Set failover.allowStaleStandby to fail over to it anyway`,
      );
    await updateFailover(cp, record.id, (current) => ({
      ...current,
      standby: { at: cp.now().toISOString(), ...omitBehind(position), host: hostOf(reach.connection.url) },
    }));
    return { lagSeconds: lag ?? null, behindBytes: position.behind ?? null };
  },
  'failover.promote': async (cp, deps, state) => {
    const record = await getFailover(cp, state.failoverId);
    const { standby } = await settings(cp);
    const startedAt = cp.now().toISOString();
    switch (standby.type) {
      case 'replica': {
        const connection = connectionFrom(standby.database.url, standby.database.password);
        // The last look before the promotion: what it replayed is what the new primary holds.
        const position = await standbyPosition(connection, record.primaryLastSeen?.lsn);
        await updateFailover(cp, record.id, (current) => ({
          ...current,
          standby: { ...current.standby, at: cp.now().toISOString(), ...omitBehind(position) },
        }));
        const client = await connect(connection);
        try {
          const { rows } = await client.query<{ promoted: boolean }>(
            'SELECT pg_promote(true, 60) AS promoted',
          );
          if (!rows[0]?.promoted)
            throw new WorkflowError('PromotionFailed', 'pg_promote() did not finish within 60 s');
        } finally {
          await client.end().catch(() => undefined);
        }
        await makePrimary(cp, record.id, connection, 'standby');
        return { startedAt, done: true };
      }
      case 'restore': {
        const connection = connectionFrom(standby.database.url, standby.database.password);
        const newest = await newestRestorePoint(
          cp,
          (backup) => isGood(backup) && backup.restorePoint !== undefined,
        );
        if (!newest) throw new WorkflowError('NothingToRestore', 'no good restore point');
        const server = withDatabase(connection, 'postgres');
        const name = databaseName(connection);
        const exists = await connect(server).then(async (client) => {
          try {
            return (await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount! > 0;
          } finally {
            await client.end().catch(() => undefined);
          }
        });
        if (!exists) await createDatabase(server, name);
        const progress = runProgress(cp, { failoverId: record.id });
        const result = await withBackup(cp, newest.id, deps.masterKey, (repository, manifest) =>
          restoreDatabase(repository, manifest, { target: connection, onProgress: progress.onProgress }),
        ).finally(() => progress.flush());
        if (!result.consistent)
          throw new WorkflowError('InconsistentRestore', 'the standby restored differs from the backup');
        await makePrimary(cp, record.id, connection, 'standby');
        return { startedAt, done: true, backupId: newest.id, tables: result.tables, rows: result.rows };
      }
      case 'rds-replica': {
        const reach = await standbyConnection(cp, deps, standby);
        if (reach) {
          const position = await standbyPosition(reach.connection, record.primaryLastSeen?.lsn).catch(
            () => undefined,
          );
          if (position)
            await updateFailover(cp, record.id, (current) => ({
              ...current,
              standby: { ...current.standby, at: cp.now().toISOString(), ...omitBehind(position) },
            }));
        }
        await rdsClient(deps, standby.region).send(
          new PromoteReadReplicaCommand({ DBInstanceIdentifier: standby.instanceIdentifier }),
        );
        return { startedAt, done: false };
      }
      case 'aurora-global':
        // The primary region is down: a switchover needs it, a failover does not (and may lose the last
        // writes, measured below).
        await rdsClient(deps, regionOfArn(standby.secondaryClusterArn)).send(
          new FailoverGlobalClusterCommand({
            GlobalClusterIdentifier: standby.globalClusterIdentifier,
            TargetDbClusterIdentifier: standby.secondaryClusterArn,
            AllowDataLoss: true,
          }),
        );
        return { startedAt, done: false };
    }
  },
  'failover.promoted': async (cp, deps, state) => {
    const polls = (state.promoted?.polls ?? 0) + 1;
    const checkedAt = cp.now().toISOString();
    const { standby } = await settings(cp);
    if (standby.type === 'replica' || standby.type === 'restore') return { done: true, polls, checkedAt };
    let done: boolean;
    let status: string | undefined;
    if (standby.type === 'rds-replica') {
      const instance = (
        await rdsClient(deps, standby.region).send(
          new DescribeDBInstancesCommand({ DBInstanceIdentifier: standby.instanceIdentifier }),
        )
      ).DBInstances?.[0];
      status = instance?.DBInstanceStatus;
      done = status === 'available' && !instance?.ReadReplicaSourceDBInstanceIdentifier;
    } else {
      const global = (
        await rdsClient(deps, regionOfArn(standby.secondaryClusterArn)).send(
          new DescribeGlobalClustersCommand({ GlobalClusterIdentifier: standby.globalClusterIdentifier }),
        )
      ).GlobalClusters?.[0];
      const writer = global?.GlobalClusterMembers?.find((member) => member.IsWriter)?.DBClusterArn;
      status = global?.FailoverState?.Status ?? global?.Status;
      done =
        writer === standby.secondaryClusterArn && global?.Status === 'available' && !global.FailoverState;
    }
    if (!done) return { done, polls, checkedAt, ...(status ? { status } : {}) };
    const reach = await standbyConnection(cp, deps, standby);
    if (!reach) return { done: false, polls, checkedAt, status: 'no endpoint yet' };
    // RDS says it is done; the database says so too (out of recovery) before it becomes the primary.
    const position = await standbyPosition(reach.connection, undefined).catch(() => undefined);
    if (!position || position.inRecovery)
      return { done: false, polls, checkedAt, status: position ? 'still in recovery' : 'not answering yet' };
    await makePrimary(cp, state.failoverId, reach.connection, reach.credentials);
    return { done: true, polls, checkedAt };
  },
  'failover.switch': async (cp, deps, state) => {
    const { endpoint } = await settings(cp);
    const active = await activePrimary(cp);
    if (!active) throw new WorkflowError('NotPromoted', 'the standby was not made the primary');
    const target = new URL(active.url);
    if (!endpoint) {
      await updateFailover(cp, state.failoverId, (current) => ({
        ...current,
        endpoint: { type: 'none', switched: false },
      }));
      return {
        switched: false,
        note: 'no failover.endpoint: point the application at the new primary by hand',
      };
    }
    if (endpoint.type === 'route53') {
      const route53 = deps.route53?.() ?? new Route53Client({});
      const original = await currentRecord(route53, endpoint);
      // Kept before the change: the failback puts it back.
      await updateFailover(cp, state.failoverId, (current) => ({
        ...current,
        endpoint: { type: 'route53', switched: false, ...(original ? { original } : {}) },
      }));
      const record: ResourceRecordSet = {
        Name: fqdn(endpoint.recordName),
        Type: 'CNAME',
        TTL: endpoint.ttl,
        ResourceRecords: [{ Value: target.hostname }],
      };
      await replaceRecord(
        route53,
        endpoint.hostedZoneId,
        original,
        record,
        `DR Automation failover ${state.failoverId}: to the standby`,
      );
      await updateFailover(cp, state.failoverId, (current) => ({
        ...current,
        endpoint: { ...current.endpoint!, switched: true },
      }));
      return { switched: true, to: target.hostname };
    }
    const outcome = await switchHook(cp, deps, endpoint, {
      environment: 'PRODUCTION',
      workflow: 'failover',
      runId: state.failoverId,
      primary: primaryOf(target),
    });
    await updateFailover(cp, state.failoverId, (current) => ({
      ...current,
      endpoint: { type: endpoint.type, switched: outcome.ok },
    }));
    if (!outcome.ok)
      throw new WorkflowError('SwitchFailed', `the endpoint hook ${outcome.name} failed: ${outcome.error}`);
    return { switched: true, to: target.hostname };
  },
  'failover.verify': async (cp, _deps, state) => {
    const record = await getFailover(cp, state.failoverId);
    const active = await activePrimary(cp);
    const connection = (await failoverConnection(cp, active))!;
    const issues: string[] = [];
    const client = await connect(connection, { connectionTimeoutMillis: 10_000 });
    let dataLoss: FailoverRecord['dataLoss'];
    try {
      const { rows } = await client.query<{ recovery: boolean; tables: string }>(
        `SELECT pg_is_in_recovery() AS recovery,
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg_toast%')::text AS tables`,
      );
      if (rows[0]!.recovery) issues.push('the new primary is still in recovery (read-only)');
      if (Number(rows[0]!.tables) === 0) issues.push('the new primary holds no tables');
      // A write, undone: the new primary takes writes.
      await client.query('BEGIN');
      try {
        await client.query('CREATE TEMPORARY TABLE dr_failover_check (at timestamptz)');
        await client.query('INSERT INTO dr_failover_check VALUES (now())');
      } catch (error) {
        issues.push(`the new primary refused a write: ${(error as Error).message}`);
      } finally {
        await client.query('ROLLBACK').catch(() => undefined);
      }
      dataLoss = measureLoss(record);
    } finally {
      await client.end().catch(() => undefined);
    }
    await updateFailover(cp, record.id, (current) => ({
      ...current,
      checks: { ok: issues.length === 0, issues },
      ...(dataLoss ? { dataLoss } : {}),
    }));
    if (issues.length > 0) throw new WorkflowError('CheckFailed', issues.join('; '));
    return { ok: true };
  },
  'failover.finish': async (cp, deps, state) => {
    const failed = state.error !== undefined;
    const record = await updateFailover(cp, state.failoverId, (current) => {
      const { issues } = hookIssues(current.hooks, state.hookError);
      return {
        ...current,
        status: failed ? 'FAILED' : 'SUCCEEDED',
        finishedAt: cp.now().toISOString(),
        ...(failed ? { error: errorMessage(state.error) } : {}),
        ...(issues ? { issues } : {}),
      };
    });
    await cp.audit.append(
      { principal: 'workflow:failover' },
      {
        action: 'failover.finish',
        resource: `failover/${record.id}`,
        details: {
          status: record.status,
          ...(record.newPrimary ? { newPrimary: record.newPrimary } : {}),
          ...(record.dataLoss?.walBytes !== undefined ? { dataLossBytes: record.dataLoss.walBytes } : {}),
        },
      },
    );
    const notified = await notify(cp, deps, failoverMail(record));
    await updateFailover(cp, record.id, (current) => ({ ...current, notified }));
    return { status: record.status, notified };
  },
  'failback.check': async (cp, _deps, state) => {
    const record = await getFailover(cp, state.failoverId);
    const original = await originalPrimaryConnection(cp);
    if (!original) throw new WorkflowError('NoSource', 'source.database is not configured');
    const active = await activePrimary(cp);
    const issues: string[] = [];
    const client = await connect(connectionFrom(original.url, original.password), {
      connectionTimeoutMillis: 10_000,
    }).catch((error: unknown) => {
      throw new WorkflowError(
        'NotReadyToFailBack',
        `the original primary does not answer: ${(error as Error).message}`,
      );
    });
    let timeline: number | undefined;
    try {
      const { rows } = await client.query<{ recovery: boolean; readonly: string }>(
        "SELECT pg_is_in_recovery() AS recovery, current_setting('transaction_read_only') AS readonly",
      );
      if (rows[0]!.recovery || rows[0]!.readonly === 'on')
        issues.push(
          'the original primary is read-only (in recovery): promote it once it has caught up with the standby',
        );
      timeline = await timelineOf(client);
    } finally {
      await client.end().catch(() => undefined);
    }
    if (!record.failback?.force && issues.length === 0) {
      const current = active ? await failoverConnection(cp, active) : undefined;
      const standbyTimeline = current
        ? await connect(current, { connectionTimeoutMillis: 10_000 })
            .then(async (standby) => {
              try {
                return await timelineOf(standby);
              } finally {
                await standby.end().catch(() => undefined);
              }
            })
            .catch(() => undefined)
        : undefined;
      if (timeline === undefined || standbyTimeline === undefined)
        issues.push(
          'cannot tell whether the original primary holds the writes made on the standby since the failover (their timelines could not be read); give force: true once you have made sure',
        );
      else if (timeline <= standbyTimeline)
        issues.push(
          `the original primary (timeline ${timeline}) has not followed the standby (timeline ${standbyTimeline}): the writes made since the failover would be lost. Rebuild it from the standby (pg_rewind or pg_basebackup), let it catch up and promote it; or give force: true to fail back anyway`,
        );
    }
    if (issues.length > 0) throw new WorkflowError('NotReadyToFailBack', issues.join('; '));
    return { ok: true, ...(timeline !== undefined ? { timeline } : {}) };
  },
  'failback.switch': async (cp, deps, state) => {
    const record = await getFailover(cp, state.failoverId);
    const { endpoint } = (await failoverForRun(cp)) ?? {};
    const original = await originalPrimaryConnection(cp);
    if (record.endpoint?.type === 'route53' && record.endpoint.original && endpoint?.type === 'route53') {
      const route53 = deps.route53?.() ?? new Route53Client({});
      const now = await currentRecord(route53, endpoint);
      const back = record.endpoint.original as ResourceRecordSet;
      await replaceRecord(
        route53,
        endpoint.hostedZoneId,
        now,
        back,
        `DR Automation failover ${record.id}: failback`,
      );
      return { switched: true };
    }
    if (endpoint && endpoint.type !== 'route53' && original) {
      const outcome = await switchHook(cp, deps, endpoint, {
        environment: 'PRODUCTION',
        workflow: 'failback',
        runId: record.id,
        primary: primaryOf(new URL(original.url)),
      });
      if (!outcome.ok)
        throw new WorkflowError('SwitchFailed', `the endpoint hook ${outcome.name} failed: ${outcome.error}`);
      return { switched: true };
    }
    return {
      switched: false,
      note: 'no endpoint to switch back: point the application at the original primary by hand',
    };
  },
  'failback.finish': async (cp, deps, state) => {
    const failed = state.error !== undefined;
    if (!failed) {
      const active = await cp.table.get<ActivePrimary>(Partition.config, ACTIVE_PRIMARY_KEY);
      if (active?.data.failoverId === state.failoverId) await cp.table.delete(active);
    }
    const record = await updateFailover(cp, state.failoverId, (current) => ({
      ...current,
      status: failed ? (current.failback?.from ?? 'SUCCEEDED') : 'FAILED_BACK',
      failback: {
        ...current.failback!,
        finishedAt: cp.now().toISOString(),
        ...(failed ? { error: errorMessage(state.error) } : {}),
      },
    }));
    await cp.audit.append(
      { principal: 'workflow:failover' },
      {
        action: 'failover.failback.finish',
        resource: `failover/${record.id}`,
        details: { status: record.status, ...(failed ? { error: record.failback?.error ?? '' } : {}) },
      },
    );
    await notify(cp, deps, {
      subject: failed
        ? `[DR] Failback of ${record.id} FAILED — the standby is still the primary`
        : `[DR] Failed back: the original primary serves again (${record.id})`,
      lines: failed
        ? [
            `The failback of failover ${record.id} did not complete: ${record.failback?.error}`,
            'The standby stays the primary; nothing else was changed.',
          ]
        : [
            `Failover ${record.id} was failed back at ${record.failback?.finishedAt}: the application's endpoint points at the original primary again, and backups read it.`,
          ],
    });
    return { status: record.status };
  },
});

/** The connection of the primary a failover put in force (its password from the config's secrets). */
async function failoverConnection(
  cp: ControlPlane,
  active: ActivePrimary | undefined,
): Promise<DatabaseConnection | undefined> {
  if (!active) return undefined;
  const production = await environmentConnection(cp, 'PRODUCTION');
  return production && connectionFrom(production.url, production.password);
}

/** A primary's timeline: the first 8 hex digits of its current WAL file's name (up to date at once after a promotion). */
async function timelineOf(client: pg.Client): Promise<number | undefined> {
  return client
    .query<{ file: string }>('SELECT pg_walfile_name(pg_current_wal_lsn()) AS file')
    .then((result) => parseInt(result.rows[0]!.file.slice(0, 8), 16))
    .catch(() => undefined);
}

/**
 * The data the failover lost: the WAL between the old primary's last seen position and the standby's last
 * replayed one (bytes), and the time between their last commits, where both are known.
 */
function measureLoss(record: FailoverRecord): FailoverRecord['dataLoss'] {
  const seen = record.primaryLastSeen;
  const standby = record.standby;
  const walBytes = seen?.lsn && standby?.lsn ? walBehind(seen.lsn, standby.lsn) : undefined;
  // All the WAL replayed: nothing lost up to the last probe, whatever the commit times say.
  const seconds =
    walBytes === 0
      ? 0
      : seen?.lastCommitAt && standby?.lastCommitAt
        ? Math.max(0, (Date.parse(seen.lastCommitAt) - Date.parse(standby.lastCommitAt)) / 1000)
        : undefined;
  const parts: string[] = [];
  if (walBytes !== undefined)
    parts.push(
      walBytes === 0
        ? `the standby had replayed all the WAL the primary had written when last seen (${seen!.lsn} at ${seen!.at})`
        : `${walBytes} bytes of WAL the primary had written by ${seen!.at} (${seen!.lsn}) never reached the standby (replayed up to ${standby!.lsn})`,
    );
  if (seconds !== undefined && walBytes !== 0)
    parts.push(
      `the primary's last seen commit was at ${seen!.lastCommitAt}, the standby's last at ${standby!.lastCommitAt}: ${seconds} s of commits lost`,
    );
  if (parts.length === 0)
    parts.push(
      standby?.lastCommitAt
        ? `the new primary holds the commits up to ${standby.lastCommitAt}; the old primary's position was not seen (no probe answered)`
        : 'not measurable: neither the old primary nor the standby said where it stood',
    );
  if (seen?.at)
    parts.push(`commits the old primary made after its last probe (${seen.at}) cannot be seen from here`);
  return {
    ...(walBytes !== undefined ? { walBytes } : {}),
    ...(seconds !== undefined ? { seconds } : {}),
    note: parts.join('; '),
  };
}

/** From now on the application's database (and what backups read) is the promoted standby. */
async function makePrimary(
  cp: ControlPlane,
  failoverId: string,
  connection: DatabaseConnection,
  credentials: ActivePrimary['credentials'],
): Promise<void> {
  const since = cp.now().toISOString();
  const active: ActivePrimary = { failoverId, since, url: connection.url, credentials };
  const existing = await cp.table.get<ActivePrimary>(Partition.config, ACTIVE_PRIMARY_KEY);
  await (existing
    ? cp.table.replace(existing, active, cp.now())
    : cp.table.create(
        Partition.config,
        ACTIVE_PRIMARY_KEY,
        active,
        cp.now(),
        'another failover is in force',
      ));
  await updateFailover(cp, failoverId, (current) => ({
    ...current,
    promotedAt: since,
    newPrimary: hostOf(connection.url),
  }));
}

function hostOf(url: string): string {
  const parsed = new URL(url);
  return parsed.port ? `${parsed.hostname}:${parsed.port}` : parsed.hostname;
}

function primaryOf(url: URL): { host: string; port: number; database?: string } {
  const database = decodeURIComponent(url.pathname.slice(1));
  return { host: url.hostname, port: Number(url.port || 5432), ...(database ? { database } : {}) };
}

function omitBehind<T extends { behind?: number; inRecovery?: boolean }>(
  position: T,
): Omit<T, 'behind' | 'inRecovery'> {
  const { behind: _behind, inRecovery: _inRecovery, ...rest } = position;
  return rest;
}

/** The failover's email: what happened, where the application's database is, and the data lost. */
function failoverMail(record: FailoverRecord): { subject: string; lines: string[] } {
  const ok = record.status === 'SUCCEEDED';
  const lines = [
    `Failover ${record.id} (${record.trigger}): ${record.reason}.`,
    `Standby: ${record.standbyType}${record.standby?.host ? ` at ${record.standby.host}` : ''}.`,
    record.promotedAt
      ? `Promoted at ${record.promotedAt}: the application's database is now ${record.newPrimary}; backups read it from now on.`
      : 'The standby was not promoted: the primary is unchanged (and down).',
    record.endpoint
      ? record.endpoint.switched
        ? `Endpoint (${record.endpoint.type}) switched to the new primary.`
        : `Endpoint not switched${record.endpoint.type === 'none' ? ' (no failover.endpoint configured): point the application at the new primary by hand' : ''}.`
      : 'Endpoint not switched.',
    record.dataLoss
      ? `Data loss: ${record.dataLoss.walBytes !== undefined ? `${record.dataLoss.walBytes} bytes of WAL` : 'WAL not measured'}${record.dataLoss.seconds !== undefined ? `, ${record.dataLoss.seconds} s of commits` : ''} — ${record.dataLoss.note}.`
      : 'Data loss: not measured.',
    ...(record.checks
      ? [
          `Checks: ${record.checks.ok ? 'the new primary takes writes and holds the tables' : record.checks.issues.join('; ')}.`,
        ]
      : []),
    ...(record.error ? [`Error: ${record.error}`] : []),
    ...(record.issues ?? []).map((issue) => `Issue: ${issue}`),
    `Fail back when the original primary has been rebuilt from the new one: POST /api/dr/failover/${record.id}/failback.`,
  ];
  return {
    subject: ok
      ? `[DR] Failed over to the standby (${record.id})${record.dataLoss?.walBytes ? ` — ${record.dataLoss.walBytes} bytes of WAL lost` : ''}`
      : `[DR] Failover ${record.id} FAILED${record.promotedAt ? ' after the promotion' : ''}`,
    lines,
  };
}

async function notify(
  cp: ControlPlane,
  deps: WorkflowDeps,
  message: { subject: string; lines: readonly string[] },
): Promise<boolean> {
  const to = (await findConfig(cp))?.notificationEmails ?? [];
  if (to.length === 0 || !deps.notify) return false;
  return deps
    .notify({ to, subject: message.subject, ...mailBody(message.lines) })
    .then(() => true)
    .catch((error: unknown) => {
      cp.logger.warn('failover email not sent', { error: (error as Error).message });
      return false;
    });
}

export type { FailoverState };

function lsnValue(lsn: string): bigint {
  const [high, low] = lsn.split('/');
  return (BigInt(`0x${high}`) << 32n) + BigInt(`0x${low}`);
}

/**
 * Bytes of WAL between a primary's position and a standby's replayed one (0 when the standby is level or
 * ahead). A primary's insert position just past a page header (24 bytes, 40 at a segment's start) holds no
 * record yet: a standby that replayed up to that page's start lacks nothing.
 */
export function walBehind(primary: string, replayed: string): number {
  const diff = lsnValue(primary) - lsnValue(replayed);
  if (diff <= 0n) return 0;
  if (lsnValue(replayed) % 8192n === 0n && diff <= 40n) return 0;
  return Number(diff);
}
