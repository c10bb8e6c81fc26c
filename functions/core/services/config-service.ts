import { pathProblem } from '../paths.ts';
import type { Actor } from '../audit.ts';
import type { ControlPlane } from '../context.ts';
import type { FieldIssue } from '../errors.ts';
import type { DrConfigInput } from '../schemas.ts';
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
  };
  readonly encryption?: DrConfigInput['encryption'];
  /** Where DR tests and restores may write: STAGING's database server (its password in the secret store). */
  readonly environments?: {
    readonly STAGING?: {
      readonly database: DatabaseSource;
      readonly endpoint?: { readonly hostedZoneId: string; readonly recordName: string };
      readonly standby?: NonNullable<NonNullable<DrConfigInput['environments']>['STAGING']>['standby'];
    };
  };
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
  const { secretName: _secretName, source, environments, ...settings } = item.data;
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
    },
  };
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

  const { version: _version, source, environments, notificationEmails, ...settings } = input;
  // Omitted: the stored part stays as it is (its password too); null: removed.
  const keepSource = source === undefined ? current?.data.source : undefined;
  const keepEnvironments = environments === undefined ? current?.data.environments : undefined;
  const issues: FieldIssue[] = [];
  const main = splitDatabase(source?.database, 'source.database', issues);
  const staging = splitDatabase(environments?.STAGING?.database, 'environments.STAGING.database', issues);
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
  throwIfIssues(issues);

  // Passwords live in the secret store; omitted on a replace keeps the stored one, null removes it.
  const oldName = current?.data.secretName;
  const keeps =
    (main.stored && main.password === undefined) ||
    (staging.stored && staging.password === undefined) ||
    keepSource?.database !== undefined ||
    keepEnvironments?.STAGING !== undefined;
  const stored = oldName !== undefined && keeps ? ((await cp.secrets.get(oldName)) ?? {}) : {};
  const { values, changed } = mergeSecrets(stored, {
    password: keepSource?.database ? undefined : main.stored === undefined ? null : main.password,
    [STAGING_PASSWORD]: keepEnvironments?.STAGING
      ? undefined
      : staging.stored === undefined
        ? null
        : staging.password,
  });
  for (const field of ['password', STAGING_PASSWORD])
    if (
      oldName !== undefined &&
      values[field] === undefined &&
      stored[field] !== undefined &&
      !changed.includes(field)
    )
      changed.push(field);
  const storedDatabase = main.stored && { ...main.stored, passwordSet: values.password !== undefined };
  const stagingDatabase = staging.stored && {
    ...staging.stored,
    passwordSet: values[STAGING_PASSWORD] !== undefined,
  };

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
      secretsChanged: changed.map((field) =>
        field === STAGING_PASSWORD ? 'environments.STAGING.database.password' : `source.database.${field}`,
      ),
      ...(moved.length > 0 ? { destinationChanged: moved } : {}),
    },
  });
  return { view: toView(item), created: current === undefined };
}

const STAGING_PASSWORD = 'staging.password';

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

/** The source to back up, with its password, for the worker (never for API responses). */
export interface SourceForRun {
  readonly database?: { readonly url: string; readonly password?: string };
  readonly files?: NonNullable<NonNullable<DrConfigInput['source']>['files']>;
}

export async function sourceForRun(cp: ControlPlane): Promise<SourceForRun | undefined> {
  const stored = (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data;
  if (!stored?.source) return undefined;
  const { database, files } = stored.source;
  const secrets = stored.secretName === undefined ? {} : ((await cp.secrets.get(stored.secretName)) ?? {});
  const connection = database && connectionOf(database, secrets.password);
  return { ...(connection ? { database: connection } : {}), ...(files ? { files } : {}) };
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
  const secrets = stored.secretName === undefined ? {} : ((await cp.secrets.get(stored.secretName)) ?? {});
  return connectionOf(database, environment === 'PRODUCTION' ? secrets.password : secrets[STAGING_PASSWORD]);
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
