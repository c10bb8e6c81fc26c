import { ConfigurationError } from '../core/errors.ts';
import { egressFromEnv, type EgressPolicy } from '../storage/egress.ts';
import { pathPolicyFromEnv, type PathPolicy } from '../core/paths.ts';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createApiHandler } from '../api/app.ts';
import { AuditLog } from '../core/audit.ts';
import type { ControlPlane, WorkflowLauncher } from '../core/context.ts';
import type { Logger } from '../core/log.ts';
import { LocalSecretStore, writeAtomically } from '../core/secrets/local-secret-store.ts';
import { DynamoTable } from '../aws/dynamodb-table.ts';
import { VERSION } from '../core/version.ts';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { signDownload, streamArtifact, verifyDownload } from '../worker/download.ts';
import { generateMasterKey, parseMasterKey, type MasterKey } from '../engine/crypto.ts';
import { tick } from '../core/services/tick.ts';
import { retention, runBackup, type PipelineDeps } from '../worker/pipeline.ts';
import { fanOutSteps } from '../worker/fanout.ts';
import { startLocalDynamo } from './dynamodb.ts';
import { startServer, type LocalServerOptions } from './server.ts';
import { localWorkflows, type LocalWorkflowOptions } from '../workflows/local.ts';
import { writeToOutbox } from './outbox.ts';
import { measureSource } from '../core/services/change-stream-service.ts';
import type { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { cloudWatchFreeStorage } from '../aws/free-storage.ts';
import { rdsDatabaseStatus } from '../aws/rds-status.ts';
import { ARTIFACTS, artifactFilename, type DownloadLinks, type RunLauncher } from '../core/ports.ts';
import type { MailMessage } from '../core/mail.ts';
import { type HeavySteps, heavyStepsFromEnv } from '../core/env.ts';
import { watchPrimary } from '../core/services/primary-watch.ts';

export const LOCAL_TABLE_NAME = 'dr-automation';

export interface LocalRuntimeOptions {
  /** Where everything persists: the store, the secrets and their key, the generated token. */
  readonly dataDir: string;
  readonly port?: number;
  readonly host?: string;
  /** DR_API_TOKEN; when unset a token is generated on first start and kept in the data directory. */
  readonly token?: string | undefined;
  /** DR_OPERATOR_TOKEN, DR_VIEWER_TOKEN: tokens for callers who may run things, or only read. */
  readonly roleTokens?: readonly { readonly token: string; readonly role: 'operator' | 'viewer' }[];
  /** DR_SECRET_KEY (base64, 32 bytes); when unset a key file is generated in the data directory. */
  readonly secretKey?: string | undefined;
  readonly logger: Logger;
  readonly now?: () => Date;
  /** DR_MASTER_KEY (64 hex digits); when unset a key is generated into `<dataDir>/master.key` on first use. */
  readonly masterKey?: string | undefined;
  /** Worker heartbeat period (tests shorten it). */
  readonly heartbeatMs?: number;
  /** How often a running backup's progress is written (default 2 s; tests shorten it). */
  readonly progressMs?: number;
  /** How often the dispatcher evaluates the schedules (default 30 s; 0 turns it off, for tests). */
  readonly dispatchIntervalMs?: number;
  /** Wraps workflow steps by task name (tests only: tamper between two steps). */
  readonly taskWrappers?: LocalWorkflowOptions['taskWrappers'];
  /** Workflow Wait states wait this long instead (tests). */
  readonly workflowWaitMs?: number;
  /** The RDS client the workflows use (tests: a local RDS-API server); default: the SDK's, by region. */
  readonly rds?: LocalWorkflowOptions['rds'];
  /** The Route 53 client the failover test uses (tests: a local Route 53 API server). */
  readonly route53?: LocalWorkflowOptions['route53'];
  /** The Lambda and ECS clients application hooks use (tests: mocked, or moto); default: the SDK's. */
  readonly lambda?: LocalWorkflowOptions['lambda'];
  readonly ecs?: LocalWorkflowOptions['ecs'];
  /** DR_HOOKS_DIR: where command hooks' executables live (unset: command hooks are refused). */
  readonly hooksDir?: string | undefined;
  /**
   * Database checks read the worker's measurements, as on AWS with the worker in the operator's subnets
   * (tests of that path; the worker in this process still reaches the source itself).
   */
  readonly sourceFromWorker?: boolean;
  /** Where target endpoints may point (default from DR_ALLOW_PRIVATE_ENDPOINTS: public addresses only). */
  readonly egress?: EgressPolicy;
  /** Where files may be read and restored (default DR_FILES_ROOTS; the data directory never). */
  readonly paths?: PathPolicy;
  /** DR_SCRATCH_DIR: where a recovery-time test restores its scratch files (default: the temporary directory). */
  readonly scratchDir?: string;
  /** Where workflows run their heavy steps (tests: 'fargate', through the same staging as on AWS). */
  readonly heavySteps?: HeavySteps;
  /** The CloudWatch client that reads an RDS source's free storage (tests: moto); default: the SDK's, by region. */
  readonly cloudwatch?: CloudWatchClient;
  /** The dashboard's built files (dashboard/build.ts), served at `/`. */
  readonly dashboard?: LocalServerOptions['dashboard'];
}

export interface LocalRuntime {
  readonly url: string;
  readonly token: string;
  /** True when this start generated the token (so the operator must be shown it). */
  readonly tokenGenerated: boolean;
  /** The embedded DynamoDB-compatible endpoint (for inspection with any DynamoDB client). */
  readonly storeEndpoint: string;
  readonly controlPlane: ControlPlane;
  /** Resolves when no backup run is in progress in this process. */
  idle(): Promise<void>;
  close(): Promise<void>;
}

/** One process serving the same API handler as AWS, over an embedded DynamoDB-compatible store. */
export async function startLocalRuntime(options: LocalRuntimeOptions): Promise<LocalRuntime> {
  const dataDir = resolve(options.dataDir);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  // It holds the master key, the secret store and its key, and the token: this user's alone, every start
  await tighten(dataDir);
  const { token, generated } = await resolveToken(dataDir, options.token);
  const dynamo = await startLocalDynamo({ path: join(dataDir, 'dynamodb'), tableName: LOCAL_TABLE_NAME });
  const now = options.now ?? (() => new Date());
  const table = new DynamoTable({ tableName: LOCAL_TABLE_NAME, client: dynamo.documentClient });
  // The backup worker runs in this process: a launch starts the run and returns at once.
  const running = new Set<Promise<unknown>>();
  const masterKey = () => localMasterKey(dataDir, options.masterKey, options.logger);
  const track = (name: string, work: () => Promise<unknown>) => {
    const run: Promise<unknown> = work()
      .catch((error: unknown) => options.logger.error(`${name} failed`, { error: (error as Error).message }))
      .finally(() => running.delete(run));
    running.add(run);
  };
  // Emails (test results, alerts) land in <dataDir>/outbox as .eml files.
  const outbox = join(dataDir, 'outbox');
  const mailer = async (message: MailMessage) => {
    await writeToOutbox(outbox, message);
  };
  const pipeline: PipelineDeps = { masterKey, notify: mailer };
  const runs: RunLauncher = {
    launch: async (backupId, launch) => {
      // A fan-out FULL: the backup-fanout workflow, its coordinator and parts run in this process
      if ((launch?.workers ?? 1) > 1) {
        await workflows.start('backup-fanout', `backup-${backupId}`, { backupId, workers: launch!.workers! });
        return;
      }
      track('backup worker', () =>
        runBackup(worker(), backupId, pipeline, {
          ...(options.heartbeatMs === undefined ? {} : { heartbeatMs: options.heartbeatMs }),
          ...(options.progressMs === undefined ? {} : { progressMs: options.progressMs }),
        }),
      );
      return Promise.resolve();
    },
    retention: () => {
      track('retention', () => retention(controlPlane, pipeline));
      return Promise.resolve();
    },
    watch: () => {
      track('watch', () => measureSource(worker(), { readiness: true }));
      track('primary watch', () => watchPrimary(worker()));
      return Promise.resolve();
    },
  };
  /** The control plane as the worker sees it: it reaches the source database itself. */
  const worker = (): ControlPlane => ({ ...controlPlane, sourceFromWorker: false });
  // Download links: signed with a key of this process, valid 15 minutes, served by the local server.
  const downloadKey = randomBytes(32);
  let baseUrl = '';
  const downloads: DownloadLinks = {
    links: (backupId, artifacts) => {
      const expiresAt = new Date(now().getTime() + 15 * 60_000);
      return Promise.resolve({
        ready: true,
        links: artifacts.map(({ artifact }) => ({
          url: `${baseUrl}/api/dr/downloads/${signDownload(downloadKey, backupId, artifact, expiresAt)}`,
          expiresAt: expiresAt.toISOString(),
        })),
      });
    },
  };
  const stream = async (request: IncomingMessage, response: ServerResponse, url: URL): Promise<boolean> => {
    const match = /^\/api\/dr\/downloads\/([A-Za-z0-9_.-]+)$/.exec(url.pathname);
    if (!match || request.method !== 'GET') return false;
    request.resume();
    const claims = verifyDownload(downloadKey, match[1]!, now());
    if (!claims) {
      response.writeHead(403, { 'content-type': 'application/json' });
      response.end(
        JSON.stringify({
          error: { status: 403, code: 'Forbidden', message: 'the link is invalid or has expired' },
        }),
      );
      return true;
    }
    response.writeHead(200, {
      'content-type': ARTIFACTS[claims.artifact].contentType,
      'content-disposition': `attachment; filename="${artifactFilename(claims.artifact, claims.backupId)}"`,
    });
    await streamArtifact(controlPlane, claims.backupId, claims.artifact, response, masterKey).then(
      () => {
        if (!response.writableEnded) response.end();
      },
      (error: unknown) => {
        options.logger.error('download failed', { backup: claims.backupId, error: (error as Error).message });
        response.destroy(error as Error);
      },
    );
    return true;
  };
  // Restores and DR tests: the statemachines/ definitions run by the local ASL interpreter.
  let workflowRunner: WorkflowLauncher | undefined;
  const workflows: WorkflowLauncher = {
    start: (workflow, name, input) => {
      workflowRunner ??= localWorkflows(controlPlane, {
        masterKey,
        track,
        notify: mailer,
        ...(options.taskWrappers ? { taskWrappers: options.taskWrappers } : {}),
        ...(options.workflowWaitMs === undefined ? {} : { waitMs: options.workflowWaitMs }),
        ...(options.rds ? { rds: options.rds } : {}),
        ...(options.route53 ? { route53: options.route53 } : {}),
        ...(options.lambda ? { lambda: options.lambda } : {}),
        ...(options.ecs ? { ecs: options.ecs } : {}),
        ...(options.workflowWaitMs === undefined ? {} : { pollMs: options.workflowWaitMs }),
        ...(options.scratchDir ? { scratchDir: options.scratchDir } : {}),
        backups: fanOutSteps(pipeline, {
          ...(options.workflowWaitMs === undefined ? {} : { pollMs: options.workflowWaitMs }),
        }),
      });
      return workflowRunner.start(workflow, name, input);
    },
  };
  const controlPlane: ControlPlane = {
    runs,
    downloads,
    workflows,
    table,
    secrets: await LocalSecretStore.open(
      join(dataDir, 'secrets'),
      join(dataDir, 'secret.key'),
      options.secretKey,
    ),
    audit: new AuditLog(table, now, options.logger),
    logger: options.logger,
    now,
    secretPrefix: 'dr',
    ...(options.sourceFromWorker ? { sourceFromWorker: true } : {}),
    freeStorage: cloudWatchFreeStorage(options.cloudwatch ? () => options.cloudwatch! : undefined),
    databaseStatus: rdsDatabaseStatus(options.rds),
    egress: options.egress ?? egressFromEnv(),
    paths: options.paths ?? pathPolicyFromEnv([dataDir]),
    heavySteps: options.heavySteps ?? heavyStepsFromEnv(),
    ...(options.hooksDir ? { hooksDir: options.hooksDir } : {}),
    fanOut: true,
  };
  const handler = createApiHandler(controlPlane, { version: VERSION, mode: 'local' });
  // The same dispatcher EventBridge invokes every minute on AWS, on a timer; never two at once.
  let dispatching: Promise<unknown> | undefined;
  let lastRetention = 0; // retention daily, and after every run
  const intervalMs = options.dispatchIntervalMs ?? 30_000;
  const dispatcher =
    intervalMs > 0
      ? setInterval(() => {
          dispatching ??= tick(controlPlane, runs, pipeline)
            .then(async () => {
              if (Date.now() - lastRetention < 24 * 60 * 60_000) return;
              lastRetention = Date.now();
              await runs.retention?.();
            })
            .catch((error: unknown) =>
              options.logger.error('dispatch failed', { error: (error as Error).message }),
            )
            .finally(() => (dispatching = undefined));
        }, intervalMs)
      : undefined;
  let server;
  try {
    for (const { token: other, role } of options.roleTokens ?? [])
      if (other.length < MIN_TOKEN_LENGTH || other === token)
        throw new ConfigurationError(
          `DR_${role.toUpperCase()}_TOKEN must be at least ${MIN_TOKEN_LENGTH} characters and differ from DR_API_TOKEN`,
        );
    server = await startServer({
      handler,
      token,
      ...(options.roleTokens ? { roleTokens: options.roleTokens } : {}),
      logger: options.logger,
      stream,
      ...(options.dashboard ? { dashboard: options.dashboard } : {}),
      ...(options.host === undefined ? {} : { host: options.host }),
      ...(options.port === undefined ? {} : { port: options.port }),
    });
  } catch (error) {
    await dynamo.close();
    throw error;
  }
  baseUrl = server.url;
  return {
    url: server.url,
    token,
    tokenGenerated: generated,
    storeEndpoint: dynamo.endpoint,
    controlPlane,
    idle: async () => {
      while (running.size > 0) await Promise.allSettled([...running]);
    },
    close: async () => {
      clearInterval(dispatcher);
      await dispatching;
      await server.close();
      while (running.size > 0) await Promise.allSettled([...running]);
      await dynamo.close();
    },
  };
}

/** The shortest API token accepted: the token is the only thing between a caller and the backups. */
export const MIN_TOKEN_LENGTH = 32;

/** Directories 0700 and files 0600 under `root` (links are left alone, never followed). */
async function tighten(root: string): Promise<void> {
  await chmod(root, 0o700);
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    if (entry.isSymbolicLink()) continue;
    const path = join(entry.parentPath, entry.name);
    if (entry.isDirectory()) await chmod(path, 0o700);
    else if (entry.isFile()) await chmod(path, 0o600);
  }
}

async function resolveToken(
  dataDir: string,
  fromEnv: string | undefined,
): Promise<{ token: string; generated: boolean }> {
  if (fromEnv !== undefined && fromEnv !== '') {
    if (fromEnv.length < MIN_TOKEN_LENGTH)
      throw new Error(
        `DR_API_TOKEN is ${fromEnv.length} characters: it must be at least ${MIN_TOKEN_LENGTH} (it is the only thing between a caller and the backups); generate one with: openssl rand -base64 32`,
      );
    return { token: fromEnv, generated: false };
  }
  const file = join(dataDir, 'api-token');
  try {
    return { token: (await readFile(file, 'utf8')).trim(), generated: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const token = randomBytes(32).toString('base64url');
  await writeAtomically(file, `${token}\n`);
  return { token, generated: true };
}

/**
 * The master key the local runtime's repositories are sealed under: DR_MASTER_KEY, or `<dataDir>/master.key`,
 * generated (0600) on first use. drctl restores with the same file (`--key-file .dr/master.key`).
 */
async function localMasterKey(
  dataDir: string,
  fromEnv: string | undefined,
  logger: Logger,
): Promise<MasterKey> {
  if (fromEnv !== undefined && fromEnv !== '') return parseMasterKey(fromEnv);
  const file = join(dataDir, 'master.key');
  try {
    return parseMasterKey(await readFile(file, 'utf8'));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  try {
    await writeFile(file, `${generateMasterKey()}\n`, { flag: 'wx', mode: 0o600 });
    logger.warn(
      'generated the backup master key: keep a copy away from this machine; drctl needs it to restore',
      {
        file,
      },
    );
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  return parseMasterKey(await readFile(file, 'utf8'));
}
