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

/** The stored config, or undefined before the first POST (other services read it for cross-checks). */
export async function findConfig(cp: ControlPlane): Promise<DrConfig | undefined> {
  return (await cp.table.get<StoredConfig>(Partition.config, CONFIG_KEY))?.data;
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

  const { version: _version, source, ...settings } = input;
  const issues: FieldIssue[] = [];
  const database = source?.database;
  let passwordUpdate: string | null | undefined = database?.password;
  let storedDatabase: DatabaseSource | undefined;

  if (database !== undefined) {
    const { password: _password, url, ...parts } = database;
    let safeUrl: string | undefined;
    if (url !== undefined) {
      if (parts.host !== undefined || parts.database !== undefined) {
        issues.push({
          field: 'source.database',
          message: 'give either url or host/database/username, not both',
        });
      }
      const parsed = new URL(url);
      if (parsed.password !== '') {
        if (passwordUpdate !== undefined) {
          issues.push({ field: 'source.database.password', message: 'the url already holds a password' });
        }
        passwordUpdate = decodeURIComponent(parsed.password);
        parsed.password = '';
      }
      safeUrl = parsed.toString();
    } else if (parts.host === undefined || parts.database === undefined || parts.username === undefined) {
      issues.push({ field: 'source.database', message: 'needs url, or host, database and username' });
    }
    storedDatabase = { ...(safeUrl === undefined ? {} : { url: safeUrl }), ...parts, passwordSet: false };
  }
  const rds = source?.rds;
  if (rds !== undefined && (rds.instanceIdentifier === undefined) === (rds.clusterIdentifier === undefined)) {
    issues.push({
      field: 'source.rds',
      message: 'give exactly one of instanceIdentifier (RDS) and clusterIdentifier (Aurora)',
    });
  }
  throwIfIssues(issues);

  // The password lives in the secret store; omitted on a replace keeps the stored one, null removes it.
  const keeps = database !== undefined && passwordUpdate === undefined;
  const oldName = current?.data.secretName;
  const stored = oldName !== undefined && keeps ? ((await cp.secrets.get(oldName)) ?? {}) : {};
  const { values, changed } = mergeSecrets(stored, {
    password: database === undefined ? null : passwordUpdate,
  });
  if (oldName !== undefined && values.password === undefined && !changed.includes('password'))
    changed.push('password');
  const passwordSet = values.password !== undefined;

  const write = (name: string | undefined) => {
    const data: StoredConfig = {
      ...settings,
      ...(source === undefined
        ? {}
        : {
            source: {
              ...(storedDatabase === undefined ? {} : { database: { ...storedDatabase, passwordSet } }),
              ...(source.rds === undefined ? {} : { rds: source.rds }),
              ...(source.files === undefined ? {} : { files: source.files }),
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
    details: { version: item.version, secretsChanged: changed.map((field) => `source.database.${field}`) },
  });
  return { view: toView(item), created: current === undefined };
}

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
  const password =
    stored.secretName === undefined ? undefined : (await cp.secrets.get(stored.secretName))?.password;
  let url: string | undefined;
  if (database?.url) url = database.url;
  else if (database?.host && database.database) {
    const built = new URL('postgres://localhost');
    built.hostname = database.host;
    built.port = String(database.port ?? 5432);
    built.pathname = `/${encodeURIComponent(database.database)}`;
    if (database.username) built.username = encodeURIComponent(database.username);
    if (database.sslMode) built.searchParams.set('sslmode', database.sslMode);
    url = built.toString();
  }
  return {
    ...(url ? { database: { url, ...(password === undefined ? {} : { password }) } } : {}),
    ...(files ? { files } : {}),
  };
}
