import { hookScript, pathProblem } from '../paths.ts';
import type { Actor } from '../audit.ts';
import type { ControlPlane } from '../context.ts';
import type { FieldIssue } from '../errors.ts';
import type { DrConfigInput, FailoverInput, HookInput } from '../schemas.ts';
import { secretName } from '../secrets/secret-store.ts';
import { Partition, type StoredItem } from '../store/table.ts';
import {
  checkVersion,
  commitWithSecret,
  mergeSecrets,
  requireFound,
  throwIfIssues,
  versioned,
  type Versioned,
} from './common.ts';

const CONFIG_KEY = 'CONFIG';

/** The database to protect, as stored: the password (from the URL or the `password` field) is not here. */
export interface DatabaseSource {
  readonly url?: string;
  readonly host?: string;
  readonly port?: number;
  readonly database?: string;
  readonly username?: string;
  readonly sslMode?: string;
  readonly passwordSet: boolean;
}

export interface DrConfig {
  readonly rto: number;
  readonly rpo: number;
  readonly backupRetentionDays: number;
  readonly testFrequencyDays: number;
  readonly autoFailover: boolean;
  readonly notificationEmails: readonly string[];
  readonly source?: {
    readonly database?: DatabaseSource;
    readonly rds?: NonNullable<NonNullable<DrConfigInput['source']>['rds']>;
    readonly files?: NonNullable<NonNullable<DrConfigInput['source']>['files']>;
    readonly healthUrl?: string;
  };
  readonly encryption?: DrConfigInput['encryption'];
  /** Automatic failover's rule, standby (its password in the secret store) and endpoint switch. */
  readonly failover?: StoredFailover;
  /** Application hooks per environment (webhook secrets in the secret store). */
  readonly hooks?: StoredHooks;
  /** Where DR tests and restores may write: STAGING's database server (its password in the secret store). */
  readonly environments?: {
    readonly STAGING?: {
      readonly database: DatabaseSource;
      readonly endpoint?: { readonly hostedZoneId: string; readonly recordName: string };
      readonly standby?: NonNullable<NonNullable<DrConfigInput['environments']>['STAGING']>['standby'];
    };
  };
}

/** A hook as stored: a webhook's secret is in the secret store (`secretSet` says one is there). */
export type StoredHook =
  | (Omit<Extract<HookInput, { type: 'webhook' }>, 'secret'> & { readonly secretSet: boolean })
  | Exclude<HookInput, { type: 'webhook' }>;
export type StoredHooks = { readonly [E in 'PRODUCTION' | 'STAGING']?: readonly StoredHook[] };

type StandbyInput = NonNullable<FailoverInput['standby']>;
export type StoredStandby =
  | { readonly type: 'replica' | 'restore'; readonly database: DatabaseSource }
  | Extract<StandbyInput, { type: 'rds-replica' | 'aurora-global' }>;
type EndpointInput = NonNullable<FailoverInput['endpoint']>;
export type StoredEndpoint = Extract<EndpointInput, { type: 'route53' }> | StoredHook;

export interface StoredFailover extends Omit<FailoverInput, 'standby' | 'endpoint'> {
  readonly standby?: StoredStandby;
  readonly endpoint?: StoredEndpoint;
}

interface StoredConfig extends DrConfig {
  readonly secretName?: string;
}

export type DrConfigView = DrConfig & Versioned;

export async function getConfig(cp: ControlPlane): Promise<DrConfigView> {
  return toView(
    requireFound(
      await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY),
      'the DR config (POST /api/dr/config first)',
    ),
  );
}

/**
 * The stored DR config in the shape POST takes, without its passwords (which a replace keeps when omitted):
 * the base a merge patch (PATCH /api/dr/config) applies to.
 */
export async function configAsInput(
  cp: ControlPlane,
): Promise<{ input: Record<string, unknown>; version: number }> {
  const item = requireFound(
    await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY),
    'the DR config (POST /api/dr/config first)',
  );
  const { secretName: _secretName, source, environments, failover, hooks, ...settings } = item.data;
  const database = (stored: DatabaseSource) => {
    const { passwordSet: _passwordSet, ...parts } = stored;
    return parts;
  };
  const staging = environments?.STAGING;
  return {
    version: item.version,
    input: {
      ...settings,
      ...(source
        ? { source: { ...source, ...(source.database ? { database: database(source.database) } : {}) } }
        : {}),
      ...(staging ? { environments: { STAGING: { ...staging, database: database(staging.database) } } } : {}),
      ...(failover
        ? {
            failover: {
              ...failover,
              ...(failover.standby
                ? {
                    standby:
                      'database' in failover.standby
                        ? { ...failover.standby, database: database(failover.standby.database) }
                        : failover.standby,
                  }
                : {}),
              ...(failover.endpoint ? { endpoint: hookAsInput(failover.endpoint) } : {}),
            },
          }
        : {}),
      ...(hooks
        ? {
            hooks: Object.fromEntries(
              Object.entries(hooks).map(([environment, list]) => [environment, list.map(hookAsInput)]),
            ),
          }
        : {}),
    },
  };
}

/** A stored hook in the shape POST takes (a webhook's secret, kept when omitted, is not in it). */
function hookAsInput<T extends StoredEndpoint>(hook: T): Record<string, unknown> {
  if (hook.type !== 'webhook') return hook;
  const { secretSet: _secretSet, ...rest } = hook;
  return rest;
}

/** The stored config with when it was first created, or undefined before the first POST. */
export async function findConfigItem(
  cp: ControlPlane,
): Promise<{ readonly data: DrConfig; readonly createdAt: string } | undefined> {
  return cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY);
}

/** The stored config, or undefined before the first POST (other services read it for cross-checks). */
export async function findConfig(cp: ControlPlane): Promise<DrConfig | undefined> {
  return (await findConfigItem(cp))?.data;
}

/** Creates or replaces the DR config (POST /api/dr/config). */
export async function replaceConfig(
  cp: ControlPlane,
  input: DrConfigInput,
  actor: Actor,
  expectedVersion: number | undefined,
): Promise<{ view: DrConfigView; created: boolean }> {
  const current = await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY);
  checkVersion(current, expectedVersion, 'the DR config');

  const { version: _version, source, environments, notificationEmails, failover, hooks, ...settings } = input;
  // Omitted: the stored part stays as it is (its password too); null: removed.
  const keepSource = source === undefined ? current?.data.source : undefined;
  const keepEnvironments = environments === undefined ? current?.data.environments : undefined;
  const keepFailover = failover === undefined ? current?.data.failover : undefined;
  const keepHooks = hooks === undefined ? current?.data.hooks : undefined;
  const issues: FieldIssue[] = [];
  const main = splitDatabase(source?.database, 'source.database', issues);
  const staging = splitDatabase(environments?.STAGING?.database, 'environments.STAGING.database', issues);
  const standbyInput = failover?.standby;
  const standby = splitDatabase(
    standbyInput && 'database' in standbyInput ? standbyInput.database : undefined,
    'failover.standby.database',
    issues,
  );
  const previousStandby = current?.data.failover?.standby;
  // A stored password never follows a new server, port, user or database: it must be given again.
  const moved: string[] = [];
  for (const [field, before, after, password] of [
    ['source.database', current?.data.source?.database, main.stored, main.password],
    [
      'environments.STAGING.database',
      current?.data.environments?.STAGING?.database,
      staging.stored,
      staging.password,
    ],
    [
      'failover.standby.database',
      previousStandby && 'database' in previousStandby ? previousStandby.database : undefined,
      standby.stored,
      standby.password,
    ],
  ] as const) {
    if (!before || !after || destinationOf(before) === destinationOf(after)) continue;
    moved.push(field);
    if (before.passwordSet && password === undefined)
      issues.push({
        field: `${field}.password`,
        message:
          'must be given again (or null): the server, port, user or database changed, and a stored password is never sent to a new destination',
      });
  }
  if (source?.files?.type === 'directory') {
    const problem = await pathProblem(source.files.path, cp.paths);
    if (problem !== undefined) issues.push({ field: 'source.files.path', message: problem });
  }
  const rds = source?.rds;
  if (rds !== undefined && (rds.instanceIdentifier === undefined) === (rds.clusterIdentifier === undefined)) {
    issues.push({
      field: 'source.rds',
      message: 'give exactly one of instanceIdentifier (RDS) and clusterIdentifier (Aurora)',
    });
  }
  // A webhook's secret: given, or kept from the stored hook at the same place with the same URL.
  const hookSecrets: Record<string, string | null | undefined> = {};
  const hookPlaces = (
    list: readonly HookInput[] | undefined,
    before: readonly StoredEndpoint[] | undefined,
    key: (index: number) => string,
    field: (index: number) => string,
  ) =>
    (list ?? []).map((hook, index) => {
      if (hook.type !== 'webhook') return hook;
      const { secret, ...rest } = hook;
      const previous = before?.[index];
      const keep = previous?.type === 'webhook' && previous.secretSet && previous.url === hook.url;
      if (secret === undefined && !keep)
        issues.push({
          field: `${field(index)}.secret`,
          message:
            previous?.type === 'webhook' && previous.url !== hook.url
              ? 'must be given again: the URL changed, and a stored secret is never sent to a new destination'
              : 'is required: every webhook body is signed with it (at least 16 characters)',
        });
      hookSecrets[key(index)] = secret;
      return { ...rest, secretSet: true };
    });
  const newHooks: Record<string, StoredHook[]> = {};
  for (const environment of ['PRODUCTION', 'STAGING'] as const)
    if (hooks?.[environment])
      newHooks[environment] = hookPlaces(
        hooks[environment],
        current?.data.hooks?.[environment],
        (index) => `${HOOK_SECRET}${environment}.${index}`,
        (index) => `hooks.${environment}[${index}]`,
      );
  const [newEndpoint] =
    failover?.endpoint === undefined
      ? []
      : failover.endpoint.type === 'route53'
        ? [failover.endpoint]
        : hookPlaces(
            [failover.endpoint],
            current?.data.failover?.endpoint ? [current.data.failover.endpoint] : undefined,
            () => ENDPOINT_SECRET,
            () => 'failover.endpoint',
          );
  // A command hook names an executable of DR_HOOKS_DIR (the local runtime's): checked now, and again when run.
  const commands: [string, string][] = [];
  for (const environment of ['PRODUCTION', 'STAGING'] as const)
    (hooks?.[environment] ?? []).forEach((hook, index) => {
      if (hook.type === 'command') commands.push([`hooks.${environment}[${index}].script`, hook.script]);
    });
  if (failover?.endpoint?.type === 'command')
    commands.push(['failover.endpoint.script', failover.endpoint.script]);
  for (const [field, script] of commands)
    await hookScript(cp, script).catch((error: unknown) =>
      issues.push({ field, message: (error as Error).message }),
    );
  throwIfIssues(issues);

  // Passwords live in the secret store; omitted on a replace keeps the stored one, null removes it.
  const oldName = current?.data.secretName;
  const stored = oldName !== undefined ? ((await cp.secrets.get(oldName)) ?? {}) : {};
  const updates: Record<string, string | null | undefined> = {
    password: keepSource?.database ? undefined : main.stored === undefined ? null : main.password,
    [STAGING_PASSWORD]: keepEnvironments?.STAGING
      ? undefined
      : staging.stored === undefined
        ? null
        : staging.password,
    [STANDBY_PASSWORD]: keepFailover ? undefined : standby.stored === undefined ? null : standby.password,
  };
  // Hook secrets no hook holds any more are removed.
  for (const name of Object.keys(stored))
    if (
      (name.startsWith(HOOK_SECRET) && !keepHooks && !(name in hookSecrets)) ||
      (name === ENDPOINT_SECRET && !keepFailover && !(name in hookSecrets))
    )
      updates[name] = null;
  Object.assign(updates, hookSecrets);
  const { values, changed } = mergeSecrets(stored, updates);
  const storedDatabase = main.stored && { ...main.stored, passwordSet: values.password !== undefined };
  const stagingDatabase = staging.stored && {
    ...staging.stored,
    passwordSet: values[STAGING_PASSWORD] !== undefined,
  };
  const newFailover: StoredFailover | undefined = failover
    ? {
        ...omit(failover, 'standby', 'endpoint'),
        ...(standbyInput === undefined
          ? {}
          : {
              standby:
                'database' in standbyInput
                  ? {
                      type: standbyInput.type,
                      database: { ...standby.stored!, passwordSet: values[STANDBY_PASSWORD] !== undefined },
                    }
                  : standbyInput,
            }),
        ...(newEndpoint === undefined ? {} : { endpoint: newEndpoint }),
      }
    : undefined;

  const write = (name: string | undefined) => {
    const data: StoredConfig = {
      ...settings,
      notificationEmails:
        notificationEmails === undefined
          ? (current?.data.notificationEmails ?? [])
          : (notificationEmails ?? []),
      ...(keepSource ? { source: keepSource } : {}),
      ...(keepEnvironments ? { environments: keepEnvironments } : {}),
      ...(!source
        ? {}
        : {
            source: {
              ...(storedDatabase === undefined ? {} : { database: storedDatabase }),
              ...(source.rds === undefined ? {} : { rds: source.rds }),
              ...(source.files === undefined ? {} : { files: source.files }),
              ...(source.healthUrl === undefined ? {} : { healthUrl: source.healthUrl }),
            },
          }),
      ...(stagingDatabase === undefined
        ? {}
        : {
            environments: {
              STAGING: {
                database: stagingDatabase,
                ...(environments?.STAGING?.endpoint ? { endpoint: environments.STAGING.endpoint } : {}),
                ...(environments?.STAGING?.standby ? { standby: environments.STAGING.standby } : {}),
              },
            },
          }),
      ...(keepFailover ? { failover: keepFailover } : newFailover ? { failover: newFailover } : {}),
      ...(keepHooks ? { hooks: keepHooks } : Object.keys(newHooks).length > 0 ? { hooks: newHooks } : {}),
      ...(name === undefined ? {} : { secretName: name }),
    };
    return current
      ? cp.table.replace(current, data, cp.now())
      : cp.table.create(
          Partition.config,
          CONFIG_KEY,
          data,
          cp.now(),
          'the DR config was created by another request; read it and retry',
        );
  };
  const item =
    changed.length > 0
      ? await commitWithSecret(cp, secretName(cp.secretPrefix, 'config', 'database'), values, oldName, write)
      : await write(oldName);

  await cp.audit.append(actor, {
    action: current ? 'config.replace' : 'config.create',
    resource: 'config',
    details: {
      version: item.version,
      secretsChanged: changed.map(secretField),
      ...(moved.length > 0 ? { destinationChanged: moved } : {}),
    },
  });
  return { view: toView(item), created: current === undefined };
}

const STAGING_PASSWORD = 'staging.password';
const STANDBY_PASSWORD = 'failover.password';
const ENDPOINT_SECRET = 'failover.endpoint.secret';
const HOOK_SECRET = 'hook.';

/** The config field a secret-store entry holds (for the audit log). */
function secretField(name: string): string {
  if (name === STAGING_PASSWORD) return 'environments.STAGING.database.password';
  if (name === STANDBY_PASSWORD) return 'failover.standby.database.password';
  if (name === ENDPOINT_SECRET) return 'failover.endpoint.secret';
  if (name.startsWith(HOOK_SECRET)) {
    const [environment, index] = name.slice(HOOK_SECRET.length).split('.');
    return `hooks.${environment}[${index}].secret`;
  }
  return `source.database.${name}`;
}

/** A database setting split into what is stored in the table and the password (from the url or the field). */
function splitDatabase(
  database: DatabaseInput | undefined,
  field: string,
  issues: FieldIssue[],
): { stored?: Omit<DatabaseSource, 'passwordSet'>; password?: string | null } {
  if (database === undefined) return {};
  let password: string | null | undefined = database.password;
  const { password: _password, url, ...parts } = database;
  let safeUrl: string | undefined;
  if (url !== undefined) {
    if (parts.host !== undefined || parts.database !== undefined) {
      issues.push({ field, message: 'give either url or host/database/username, not both' });
    }
    const parsed = new URL(url);
    if (parsed.password !== '') {
      if (password !== undefined)
        issues.push({ field: `${field}.password`, message: 'the url already holds a password' });
      password = decodeURIComponent(parsed.password);
      parsed.password = '';
    }
    safeUrl = parsed.toString();
  } else if (parts.host === undefined || parts.database === undefined || parts.username === undefined) {
    issues.push({ field, message: 'needs url, or host, database and username' });
  }
  return {
    stored: { ...(safeUrl === undefined ? {} : { url: safeUrl }), ...parts },
    ...(password === undefined ? {} : { password }),
  };
}

/** host:port/user/database of a database setting (its URL, as written or built), to tell a move. */
function destinationOf(database: Omit<DatabaseSource, 'passwordSet'>): string {
  const connection = connectionOf(database, undefined);
  if (!connection) return '';
  const url = new URL(connection.url);
  return JSON.stringify([
    url.hostname.toLowerCase(),
    url.port || '5432',
    decodeURIComponent(url.username),
    decodeURIComponent(url.pathname.slice(1)),
  ]);
}

type DatabaseInput = NonNullable<NonNullable<DrConfigInput['source']>['database']>;

function toView(item: StoredItem<StoredConfig>): DrConfigView {
  const { secretName: _secretName, ...rest } = versioned(item);
  return rest;
}

/** The primary the application uses after a failover (until the failback): config PRIMARY. */
export interface ActivePrimary {
  readonly failoverId: string;
  readonly since: string;
  /** postgres:// URL without a password: the promoted standby. */
  readonly url: string;
  /** Whose password opens it: the standby's (failover.standby.database) or the source's (an RDS standby). */
  readonly credentials: 'standby' | 'source';
}

/** Its sort key in the CONFIG partition (set by the failover workflow, removed by the failback). */
export const ACTIVE_PRIMARY_KEY = 'PRIMARY';

/** The source to back up, with its password, for the worker (never for API responses). */
export interface SourceForRun {
  readonly database?: { readonly url: string; readonly password?: string };
  readonly files?: NonNullable<NonNullable<DrConfigInput['source']>['files']>;
}

export async function sourceForRun(cp: ControlPlane): Promise<SourceForRun | undefined> {
  const stored = (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data;
  if (!stored?.source) return undefined;
  const { database, files } = stored.source;
  const connection = database && (await productionConnection(cp, stored, database));
  return { ...(connection ? { database: connection } : {}), ...(files ? { files } : {}) };
}

/** The production database's connection: the source, or after a failover the promoted standby. */
async function productionConnection(
  cp: ControlPlane,
  stored: StoredConfig,
  database: DatabaseSource,
): Promise<{ url: string; password?: string } | undefined> {
  const [secrets, active] = await Promise.all([
    secretsOf(cp, stored),
    cp.table.get<ActivePrimary>(Partition.config, ACTIVE_PRIMARY_KEY),
  ]);
  if (!active) return connectionOf(database, secrets.password);
  const password = active.data.credentials === 'standby' ? secrets[STANDBY_PASSWORD] : secrets.password;
  return { url: active.data.url, ...(password === undefined ? {} : { password }) };
}

/** The source database as configured (the original primary), whatever failover is in force. */
export async function originalPrimaryConnection(
  cp: ControlPlane,
): Promise<{ url: string; password?: string } | undefined> {
  const stored = (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data;
  const database = stored?.source?.database;
  return database && connectionOf(database, (await secretsOf(cp, stored)).password);
}

/**
 * The connection to an environment's database server, with its password, for the workflows (never for API
 * responses). PRODUCTION is the source database; STAGING the configured staging one.
 */
/** The name of the database an environment's connection opens (what a restore with no database writes into). */
export async function environmentDatabaseName(
  cp: ControlPlane,
  environment: 'STAGING' | 'PRODUCTION',
): Promise<string | undefined> {
  // The stored settings say it; the password (a secret read) is not needed for a name.
  const database = environmentSettings(
    (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data,
    environment,
  );
  const connection = database && connectionOf(database, undefined);
  if (!connection) return undefined;
  const name = decodeURIComponent(new URL(connection.url).pathname.replace(/^\//, ''));
  return name === '' ? undefined : name;
}

export async function environmentConnection(
  cp: ControlPlane,
  environment: 'STAGING' | 'PRODUCTION',
): Promise<{ readonly url: string; readonly password?: string } | undefined> {
  const stored = (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data;
  const database = environmentSettings(stored, environment);
  if (!stored || !database) return undefined;
  if (environment === 'PRODUCTION') return productionConnection(cp, stored, database);
  return connectionOf(database, (await secretsOf(cp, stored))[STAGING_PASSWORD]);
}

/** An environment's database settings as stored: PRODUCTION is the source's, STAGING its own. */
function environmentSettings(stored: StoredConfig | undefined, environment: 'STAGING' | 'PRODUCTION') {
  return environment === 'PRODUCTION' ? stored?.source?.database : stored?.environments?.STAGING?.database;
}

function connectionOf(
  database: Omit<DatabaseSource, 'passwordSet'>,
  password: string | undefined,
): { url: string; password?: string } | undefined {
  let url: string | undefined;
  if (database.url) url = database.url;
  else if (database.host && database.database) {
    const built = new URL('postgres://localhost');
    built.hostname = database.host;
    built.port = String(database.port ?? 5432);
    built.pathname = `/${encodeURIComponent(database.database)}`;
    if (database.username) built.username = encodeURIComponent(database.username);
    if (database.sslMode) built.searchParams.set('sslmode', database.sslMode);
    url = built.toString();
  }
  return url === undefined ? undefined : { url, ...(password === undefined ? {} : { password }) };
}

/** A hook with its secret, for the workflows (never for API responses). */
export type HookForRun = Exclude<HookInput, { type: 'webhook' }> | Extract<HookInput, { type: 'webhook' }>;

/** An environment's application hooks, each webhook with its secret. */
export async function hooksForRun(
  cp: ControlPlane,
  environment: 'PRODUCTION' | 'STAGING',
): Promise<HookForRun[]> {
  const stored = (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data;
  const hooks = stored?.hooks?.[environment] ?? [];
  if (hooks.length === 0) return [];
  const secrets = await secretsOf(cp, stored);
  return hooks.map((hook, index) => withSecret(hook, secrets[`${HOOK_SECRET}${environment}.${index}`]));
}

function withSecret(hook: StoredHook, secret: string | undefined): HookForRun {
  if (hook.type !== 'webhook') return hook;
  const { secretSet: _secretSet, ...rest } = hook;
  return { ...rest, ...(secret === undefined ? {} : { secret }) };
}

async function secretsOf(
  cp: ControlPlane,
  stored: StoredConfig | undefined,
): Promise<Readonly<Record<string, string>>> {
  return stored?.secretName === undefined ? {} : ((await cp.secrets.get(stored.secretName)) ?? {});
}

/** The failover settings with the standby's connection and the endpoint hook's secret, for the workflows. */
export interface FailoverForRun extends Omit<StoredFailover, 'standby' | 'endpoint'> {
  readonly standby?:
    | { readonly type: 'replica'; readonly database: { url: string; password?: string } }
    | { readonly type: 'restore'; readonly database: { url: string; password?: string } }
    | Extract<StoredStandby, { type: 'rds-replica' | 'aurora-global' }>;
  readonly endpoint?: Extract<StoredEndpoint, { type: 'route53' }> | HookForRun;
}

export async function failoverForRun(cp: ControlPlane): Promise<FailoverForRun | undefined> {
  const stored = (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data;
  const failover = stored?.failover;
  if (!failover) return undefined;
  const secrets = await secretsOf(cp, stored);
  const { standby, endpoint, ...settings } = failover;
  let standbyForRun: FailoverForRun['standby'];
  if (standby && 'database' in standby) {
    const database = connectionOf(standby.database, secrets[STANDBY_PASSWORD]);
    if (database)
      standbyForRun =
        standby.type === 'replica' ? { type: 'replica', database } : { type: 'restore', database };
  } else standbyForRun = standby;
  return {
    ...settings,
    ...(standbyForRun ? { standby: standbyForRun } : {}),
    ...(endpoint
      ? { endpoint: endpoint.type === 'route53' ? endpoint : withSecret(endpoint, secrets[ENDPOINT_SECRET]) }
      : {}),
  };
}

function omit<T extends object, K extends keyof T>(value: T, ...keys: K[]): Omit<T, K> {
  const rest = { ...value };
  for (const key of keys) delete rest[key];
  return rest;
}
