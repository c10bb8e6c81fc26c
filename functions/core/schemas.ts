import { z } from 'zod';
import { DRIVERS, type TargetType } from '../storage/drivers.ts';
import {
  absolutePath,
  awsRegion,
  hostname,
  objectPrefix,
  port,
  range,
  s3Bucket,
  secret,
  httpUrl,
  wholeRange,
} from '../storage/fields.ts';

/**
 * Request schemas for the /api/dr API. They validate requests at the edge and generate the OpenAPI document,
 * so the contract has one source. Shapes, defaults and ranges come from the seed guide
 * (`shared/seed/000_*.txt`); every object is strict, so a misspelt field fails with its name instead of
 * being silently ignored.
 */

/** A short human-readable label. */
const label = z
  .string()
  .trim()
  .min(1, { error: 'must not be empty' })
  .max(128, { error: 'must be at most 128 characters' })
  // Printable text only: no control characters, and no bidirectional overrides or isolates, which make a
  // name read differently from what it is (in a list, an audit entry or an email subject)
  .regex(/^[^\p{Cc}\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]*$/u, {
    error: 'must be printable text, without control or bidirectional-override characters',
  });

export { TARGET_TYPES, type TargetType } from '../storage/drivers.ts';

/** Which config fields of each target type are secrets: stored in the secret store, never in the table. */
export const SECRET_FIELDS = Object.fromEntries(
  Object.values(DRIVERS).map((driver) => [driver.type, driver.secretFields]),
) as unknown as Record<TargetType, readonly string[]>;

/**
 * The settings that decide where (and how safely) a target's secrets are sent (each driver says which):
 * changing one on a target with stored secrets needs the secrets given again.
 */
export const DESTINATION_FIELDS = Object.fromEntries(
  Object.values(DRIVERS).map((driver) => [driver.type, driver.destinationFields]),
) as unknown as Record<TargetType, readonly string[]>;

/** A client-chosen id (optional on create), such as the seed's `s3-target-id`. */
export const resourceId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$/, {
  error:
    'must be 3-64 characters of letters, digits, hyphens and underscores, starting with a letter or digit',
});

const targetOf = <T extends TargetType, C extends z.ZodType>(targetType: T, config: C) =>
  z.strictObject({
    id: resourceId.optional(),
    name: label.optional(),
    targetType: z.literal(targetType),
    config,
    /**
     * Storage-capacity warnings: an alert when the target's free space falls below `minFreeBytes` (where
     * the medium tells: LOCAL, SFTP, FTP with AVBL) or what it stores exceeds `maxStoredBytes`. Measured at
     * most hourly.
     */
    capacity: z
      .strictObject({
        minFreeBytes: z.number().int().min(0).optional(),
        maxStoredBytes: z.number().int().min(1).optional(),
      })
      .optional(),
    /** The version the client last read; a mismatch is refused with 409 (optimistic concurrency). */
    version: z.number().int().min(1).optional(),
  });

export const targetInput = z.discriminatedUnion('targetType', [
  targetOf('LOCAL', DRIVERS.LOCAL.config),
  targetOf('S3', DRIVERS.S3.config),
  targetOf('AZURE', DRIVERS.AZURE.config),
  targetOf('GCP', DRIVERS.GCP.config),
  targetOf('FTP', DRIVERS.FTP.config),
  targetOf('SFTP', DRIVERS.SFTP.config),
]);
export type TargetInput = z.output<typeof targetInput>;

const databaseSource = z.strictObject({
  /** postgres://user[:password]@host[:port]/database[?sslmode=…]; a password in it goes to the secret store. */
  url: z
    .string()
    .max(2048)
    .refine(
      (value) => {
        try {
          const url = new URL(value);
          return (
            (url.protocol === 'postgres:' || url.protocol === 'postgresql:') &&
            url.hostname !== '' &&
            url.pathname.length > 1
          );
        } catch {
          return false;
        }
      },
      { error: 'must be a postgres:// URL with a host and a database' },
    )
    .optional(),
  host: hostname.optional(),
  port: port.optional(),
  database: z.string().min(1).max(63).optional(),
  username: z.string().min(1).max(63).optional(),
  password: secret,
  sslMode: z.enum(['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']).optional(),
});

const filesSource = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('directory'), path: absolutePath }),
  z.strictObject({
    type: z.literal('s3'),
    bucket: s3Bucket,
    prefix: objectPrefix.optional(),
    region: awsRegion.optional(),
  }),
]);

const rdsIdentifier = z.string().regex(/^[A-Za-z](?!.*--)[A-Za-z0-9-]{0,62}$/, {
  error: 'must be an RDS identifier (letters, digits, hyphens)',
});

const rdsSource = z.strictObject({
  instanceIdentifier: rdsIdentifier.optional(),
  clusterIdentifier: rdsIdentifier.optional(),
  region: awsRegion.optional(),
});

const seconds = (min: number, max: number, fallback: number) =>
  wholeRange(min, max, 'seconds').default(fallback);

/**
 * An application hook: what the restore, failover and DR-test workflows call before they touch an
 * environment's database (`stop`) and after (`start`, on every path once `stop` ran). Each is called with
 * the event; an ECS service is scaled to 0 and back to the count it had.
 */
const webhookHook = z.strictObject({
  type: z.literal('webhook'),
  name: label.optional(),
  /** POSTed a JSON body, signed: `X-DR-Signature: sha256=<HMAC-SHA256 of "<X-DR-Timestamp>.<body>">`. */
  url: httpUrl,
  /** The HMAC key (at least 16 characters), write-only: kept when omitted and the URL is unchanged. */
  secret: z.string().min(16, { error: 'must be at least 16 characters' }).max(4096).optional(),
  timeoutSeconds: seconds(1, 60, 10),
  /** Further attempts after a network error, a timeout or a 5xx/429 answer (backoff 1 s, 2 s, 4 s…). */
  retries: wholeRange(0, 5, 'retries').default(2),
});
const lambdaHook = z.strictObject({
  type: z.literal('lambda'),
  name: label.optional(),
  functionArn: z
    .string()
    .regex(
      /^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9_$-]{1,128})?$/,
      {
        error: 'must be a Lambda function ARN (arn:aws:lambda:<region>:<account>:function:<name>)',
      },
    ),
});
const ecsName = z.string().regex(/^[A-Za-z0-9_/:.-]{1,1600}$/, { error: 'must be an ECS name or ARN' });
const ecsHook = z.strictObject({
  type: z.literal('ecs'),
  name: label.optional(),
  cluster: ecsName,
  service: ecsName,
  region: awsRegion.optional(),
  /** How long `stop` waits for the service's tasks to end (and `start` for them to run). */
  timeoutSeconds: seconds(10, 1800, 300),
});
const commandHook = z.strictObject({
  type: z.literal('command'),
  name: label.optional(),
  /**
   * An executable in the runtime's hooks directory (DR_HOOKS_DIR; local runtime only), run without a shell
   * with these arguments and the event in DR_HOOK_EVENT.
   */
  script: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, {
    error: 'must be a file name in DR_HOOKS_DIR (letters, digits, dots, hyphens; no path)',
  }),
  args: z.array(z.string().max(1024)).max(32).default([]),
  timeoutSeconds: seconds(1, 3600, 60),
});
export const hookInput = z.discriminatedUnion('type', [webhookHook, lambdaHook, ecsHook, commandHook], {
  error: 'type must be webhook, lambda, ecs or command',
});
export type HookInput = z.output<typeof hookInput>;
const hookList = z.array(hookInput).max(10, { error: 'must list at most 10 hooks' });

/** An RDS read replica standby (tagged dr-automation:standby=true): promoted. */
const rdsReplicaStandby = z.strictObject({
  type: z.literal('rds-replica'),
  instanceIdentifier: rdsIdentifier,
  region: awsRegion.optional(),
});

/** An Aurora global database's secondary cluster as the standby. */
const auroraGlobalStandby = z.strictObject({
  type: z.literal('aurora-global'),
  globalClusterIdentifier: rdsIdentifier,
  secondaryClusterArn: z
    .string()
    .regex(/^arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:cluster:[A-Za-z][A-Za-z0-9-]{0,62}$/, {
      error: 'must be an Aurora cluster ARN (arn:aws:rds:<region>:<account>:cluster:<name>)',
    }),
});

/** The standby the primary fails over to (`failover.standby`). */
const failoverStandby = z.discriminatedUnion(
  'type',
  [
    /** A streaming replica of the source (e.g. made with pg_basebackup -R): promoted with pg_promote(). */
    z.strictObject({ type: z.literal('replica'), database: databaseSource }),
    /** A server the newest restore point is restored onto (no replica). */
    z.strictObject({ type: z.literal('restore'), database: databaseSource }),
    /** An RDS read replica of the source instance, tagged dr-automation:standby=true: promoted. */
    rdsReplicaStandby,
    /** An Aurora global database's secondary cluster: failed over to (data loss allowed: the primary is down). */
    auroraGlobalStandby,
  ],
  { error: 'type must be replica, restore, rds-replica or aurora-global' },
);

/** How the application is pointed at the new primary: a Route 53 record, or a hook told its address. */
const failoverEndpoint = z.discriminatedUnion(
  'type',
  [
    z.strictObject({
      type: z.literal('route53'),
      hostedZoneId: z.string().regex(/^[A-Z0-9]{1,32}$/, { error: 'must be a Route 53 hosted zone id' }),
      recordName: hostname,
      ttl: wholeRange(5, 86_400, 'seconds').default(60),
    }),
    webhookHook,
    lambdaHook,
    commandHook,
  ],
  { error: 'type must be route53, webhook, lambda or command' },
);

/** Automatic failover (with `autoFailover: true`) and its guardrails. */
export const failoverInput = z.strictObject({
  /** Probes in a row that must fail before the primary counts as down. */
  failures: wholeRange(2, 20, 'probes').default(3),
  /** …spanning at least this long (from the first failed probe to the last). */
  windowSeconds: seconds(60, 3600, 120),
  /** No automatic failover within this long of the last one's end. */
  cooldownMinutes: wholeRange(10, 10_080, 'minutes').default(60),
  /** Fail over to a standby whose data is older than the RPO (default: refused, an alert says why). */
  allowStaleStandby: z.boolean().default(false),
  standby: failoverStandby.optional(),
  endpoint: failoverEndpoint.optional(),
});
export type FailoverInput = z.output<typeof failoverInput>;

/** PATCH /api/dr/config: a JSON merge patch of the DR config (validated as a whole once applied). */
export const configPatch = z.record(z.string(), z.unknown(), {
  error: 'must be a JSON object (a merge patch of the DR config)',
});

export const drConfigInput = z.strictObject({
  rto: range(0.5, 72, 'hours').default(4),
  rpo: range(0.25, 24, 'hours').default(1),
  backupRetentionDays: wholeRange(7, 365, 'days').default(30),
  testFrequencyDays: wholeRange(30, 365, 'days').default(90),
  autoFailover: z.boolean().default(false),
  /** Omitted on a replace: the stored list stays; null: none. */
  notificationEmails: z
    .array(z.email({ error: 'must be an email address' }))
    .max(50, { error: 'must list at most 50 addresses' })
    .nullable()
    .optional(),
  /** Omitted on a replace: the stored source stays (with its password); null: removed. */
  source: z
    .strictObject({
      database: databaseSource.optional(),
      rds: rdsSource.optional(),
      files: filesSource.optional(),
      /**
       * The application's own health URL, asked (GET, 5 s) with every probe of the primary: shown beside it
       * and in the alert; the database's probe alone decides a failover.
       */
      healthUrl: httpUrl.optional(),
    })
    .nullable()
    .optional(),
  /**
   * Where DR tests and restores may write, besides production: the staging database server. Omitted on a
   * replace: the stored environments stay (with their passwords); null: removed.
   */
  environments: z
    .strictObject({
      STAGING: z
        .strictObject({
          database: databaseSource,
          /**
           * The DNS record the application reaches its database by (Route 53): FAILOVER_TEST points it at the
           * standby, checks, and points it back.
           */
          endpoint: z
            .strictObject({
              hostedZoneId: z
                .string()
                .regex(/^[A-Z0-9]{1,32}$/, { error: 'must be a Route 53 hosted zone id' }),
              recordName: hostname,
            })
            .optional(),
          /**
           * The standby FAILOVER_TEST fails over to, when the staging database has one in RDS: a (cross-region)
           * read replica that is promoted and then re-created, or an Aurora global database's secondary
           * cluster that is switched over to and back. Absent: a standby restored from the newest backup.
           */
          standby: z
            .discriminatedUnion('type', [rdsReplicaStandby, auroraGlobalStandby], {
              error: 'type must be rds-replica or aurora-global',
            })
            .optional(),
        })
        .optional(),
    })
    .nullable()
    .optional(),
  /**
   * Automatic failover's rule, standby and endpoint switch. Omitted on a replace: the stored one stays (with
   * its passwords); null: removed (the watch uses the defaults).
   */
  failover: failoverInput.nullable().optional(),
  /**
   * Application hooks per environment, called before a workflow touches that environment's database and
   * after. Omitted on a replace: the stored hooks stay (with their secrets); null: removed.
   */
  hooks: z
    .strictObject({ PRODUCTION: hookList.optional(), STAGING: hookList.optional() })
    .nullable()
    .optional(),
  encryption: z
    .strictObject({
      algorithm: z.enum(['AES-256', 'AES-256-GCM']).default('AES-256-GCM'),
      keyRotation: wholeRange(1, 3650, 'days').default(90),
    })
    .optional(),
  version: z.number().int().min(1).optional(),
});
export type DrConfigInput = z.output<typeof drConfigInput>;

export const SCHEDULE_TYPES = ['FULL', 'INCREMENTAL', 'SCHEMA'] as const;
export const FREQUENCIES = ['HOURLY', 'DAILY', 'WEEKLY', 'MONTHLY', 'CUSTOM'] as const;

export const scheduleInput = z.strictObject({
  id: resourceId.optional(),
  name: label,
  scheduleType: z.enum(SCHEDULE_TYPES),
  frequency: z.enum(FREQUENCIES).optional(),
  cronExpression: z.string().min(9).max(256),
  /** IANA time zone the cron expression is evaluated in. */
  timezone: z.string().min(1).max(64).default('UTC'),
  active: z.boolean().default(true),
  retentionDays: wholeRange(1, 365, 'days').optional(),
  targets: z.array(resourceId).max(10, { error: 'must list at most 10 targets' }).default([]),
  /**
   * How INCREMENTALs capture the database. `change-stream`: row changes from a logical replication slot
   * (recovery to any commit); `dump`: deduplicated dumps; `auto` (default): the change stream where the
   * database allows it, else dumps. A FULL starts the stream when an INCREMENTAL schedule reads it.
   */
  mode: z.enum(['auto', 'change-stream', 'dump']).default('auto'),
  /** Tables read (and chunks sealed) at once by the worker; default: its cores, at most 8. */
  jobs: wholeRange(1, 64, 'jobs').optional(),
  /**
   * A FULL's tables read by this many workers at once, each a Fargate task on AWS (a process's tasks
   * locally), all in one snapshot; default 1 (one worker). INCREMENTALs always run in one worker.
   */
  workers: wholeRange(1, 16, 'workers').optional(),
  version: z.number().int().min(1).optional(),
});
export type ScheduleInput = z.output<typeof scheduleInput>;

export const listQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  nextToken: z.string().max(2048).optional(),
});
export type ListQuery = z.output<typeof listQuery>;

export const idParams = z.strictObject({ id: resourceId });

/** GET /api/dr/backups: the seed's filters (`type`, `latest=true`) and more. */
export const backupListQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  nextToken: z.string().max(2048).optional(),
  type: z.enum(['FULL', 'INCREMENTAL', 'SCHEMA']).optional(),
  status: z.enum(['RUNNING', 'SUCCESS', 'PARTIAL', 'FAILED']).optional(),
  scheduleId: resourceId.optional(),
  targetId: resourceId.optional(),
  from: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time' }).optional(),
  to: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time' }).optional(),
  latest: z
    .enum(['true', 'false'], { error: "must be 'true' or 'false'" })
    .transform((value) => value === 'true')
    .optional(),
});
export type BackupListQuery = z.output<typeof backupListQuery>;

const isoInstant = z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time with a time zone' });
const relationName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$/, {
  error: 'must be table or schema.table (letters, digits, _ and $)',
});

export const ENVIRONMENTS = ['STAGING', 'PRODUCTION'] as const;

/** POST /api/dr/restore. */
export const restoreInput = z
  .strictObject({
    backupId: z
      .string()
      .regex(/^\d{8}T\d{9}Z-[0-9a-f]{6}$/, { error: 'must be a backup id' })
      .optional(),
    /** Restore the newest backup whose restore point is at or before this instant. */
    pointInTime: isoInstant.optional(),
    /** With pointInTime: only this schedule's backups. */
    scheduleId: z.string().min(1).max(64).optional(),
    scope: z
      .strictObject({
        database: z.boolean().default(true),
        tables: z.array(relationName).max(500).optional(),
        schemas: z
          .array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_$]*$/, { error: 'must be a schema name' }))
          .max(100)
          .optional(),
        files: z.boolean().default(true),
        /** Globs over the stored relative paths. */
        include: z.array(z.string().min(1).max(512)).max(100).optional(),
      })
      .default({ database: true, files: true }),
    destination: z
      .strictObject({
        /** Whose database server: STAGING (default) or PRODUCTION (named explicitly). */
        environment: z.enum(ENVIRONMENTS).default('STAGING'),
        /** The database on that server (created when missing); default: the environment's own. */
        database: z
          .string()
          .regex(/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/, { error: 'must be a database name' })
          .optional(),
        /** Where the files go (an empty or missing directory, unless overwrite). */
        filesTo: absolutePath.optional(),
      })
      .default({ environment: 'STAGING' }),
    /**
     * With pointInTime: `rds` restores the RDS/Aurora source with the service's own point-in-time restore
     * to a new instance; `backup` restores our newest backup at or before the time; `auto` (default) is
     * `rds` when the config names an RDS/Aurora source, else `backup`.
     */
    method: z.enum(['auto', 'rds', 'backup']).default('auto'),
    /** Replace what the backup defines in a destination that is not empty. */
    overwrite: z.boolean().default(false),
    /** Keep setuid/setgid bits of restored files (default: cleared; ownership is never restored). */
    preserveSpecialBits: z.boolean().default(false),
    /** Only plan: which backup, its chain and size, and the gap to pointInTime; nothing is touched. */
    dryRun: z.boolean().default(false),
    /**
     * Into PRODUCTION, or with overwrite: the name of the database the restore writes into (the directory, for
     * files alone), typed by the caller as proof they mean it. Needs the admin role too.
     */
    confirm: z.string().max(4096).optional(),
  })
  .refine((value) => (value.backupId === undefined) !== (value.pointInTime === undefined), {
    error: 'give exactly one of backupId and pointInTime',
    path: ['backupId'],
  });
export type RestoreInput = z.output<typeof restoreInput>;

export const DR_TEST_TYPES = [
  'BACKUP_VERIFICATION',
  'RESTORE_TEST',
  'FAILOVER_TEST',
  'RECOVERY_TIME_TEST',
] as const;
/** The guide writes "FAILOVER" for FAILOVER_TEST; the short forms are accepted for every type. */
const TEST_TYPE_ALIASES: Record<string, (typeof DR_TEST_TYPES)[number]> = {
  VERIFICATION: 'BACKUP_VERIFICATION',
  BACKUP: 'BACKUP_VERIFICATION',
  RESTORE: 'RESTORE_TEST',
  FAILOVER: 'FAILOVER_TEST',
  RECOVERY_TIME: 'RECOVERY_TIME_TEST',
};

/** POST /api/dr/test (the guide's fields). */
export const drTestInput = z.strictObject({
  testType: z.preprocess(
    (value) => (typeof value === 'string' ? (TEST_TYPE_ALIASES[value] ?? value) : value),
    z.enum(DR_TEST_TYPES),
  ),
  targetEnvironment: z.enum(ENVIRONMENTS).default('STAGING'),
  notifyOnCompletion: z.boolean().default(false),
  /** Run by people, not by the workflow: the entry waits for POST /api/dr/test/{id}/results. */
  manual: z.boolean().default(false),
  /**
   * RESTORE_TEST and RECOVERY_TIME_TEST: where the backup is restored. `scratch`: a scratch database on the
   * target environment's server. `rds`: a temporary RDS instance (or Aurora cluster) restored from the newest
   * snapshot of the RDS/Aurora source and deleted afterwards. `auto`: `rds` when the config names an
   * RDS/Aurora source, else `scratch`.
   */
  method: z.enum(['auto', 'scratch', 'rds']).default('auto'),
});
export type DrTestInput = z.output<typeof drTestInput>;

/** POST /api/dr/test/{testId}/results: a test run by hand (the guide's fields). */
export const drTestResultsInput = z.strictObject({
  success: z.boolean(),
  actualRTO: range(0, 10_000, 'hours').optional(),
  actualRPO: range(0, 10_000, 'hours').optional(),
  issues: z.array(z.string().min(1).max(2000)).max(100).default([]),
  notes: z.string().max(10_000).optional(),
  participants: z
    .array(z.email({ error: 'must be an email address' }))
    .max(50)
    .default([]),
});
export type DrTestResultsInput = z.output<typeof drTestResultsInput>;

/** GET /api/dr/test. */
export const drTestListQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  nextToken: z.string().max(2048).optional(),
  testType: z.enum(DR_TEST_TYPES).optional(),
  status: z.enum(['RUNNING', 'PASSED', 'FAILED']).optional(),
});

export const restoreListQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  nextToken: z.string().max(2048).optional(),
  status: z.enum(['RUNNING', 'PLANNED', 'SUCCEEDED', 'FAILED']).optional(),
});

/** POST /api/dr/failover: a failover asked for by hand (the same guardrails as the watch's). */
export const failoverRequest = z.strictObject({
  /** Must say FAILOVER: the standby becomes the primary, and that is not undone by itself. */
  confirm: z.literal('FAILOVER', { error: 'must be "FAILOVER": the standby becomes the primary' }),
  reason: label.optional(),
  /** Fail over although the watch sees the primary up (two primaries: the old one must be fenced by hand). */
  force: z.boolean().default(false),
});
export type FailoverRequest = z.output<typeof failoverRequest>;

/** POST /api/dr/failover/{id}/failback. */
export const failbackRequest = z.strictObject({
  /**
   * Fail back although the original primary may not hold the writes made on the standby since the failover
   * (its timeline is not past the standby's, or cannot be read).
   */
  force: z.boolean().default(false),
});

/** GET /api/dr/metrics…: the date range (ISO dates or date-times), checked by the service. */
export const metricsQuery = z.strictObject({
  startDate: z.string().max(64).optional(),
  endDate: z.string().max(64).optional(),
});
