import { PROGRAM_DIR } from '../../functions/core/paths.ts';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../functions/core/log.ts';
import {
  startLocalRuntime,
  type LocalRuntime,
  type LocalRuntimeOptions,
} from '../../functions/local/runtime.ts';

export interface ApiResponse {
  readonly status: number;
  readonly headers: Headers;
  /** Parsed JSON, or undefined for an empty body. */
  readonly body: any;
  readonly text: string;
}

export interface RequestOptions {
  /** Bearer token; `null` sends none. Defaults to the runtime's token. */
  readonly token?: string | null;
  readonly headers?: Record<string, string>;
  /** Sent as is (not JSON-encoded). */
  readonly rawBody?: string;
}

export interface TestApi {
  readonly runtime: LocalRuntime;
  readonly dataDir: string;
  call(method: string, path: string, body?: unknown, options?: RequestOptions): Promise<ApiResponse>;
  restart(): Promise<TestApi>;
  close(): Promise<void>;
}

/** A local runtime on a random loopback port over a fresh data directory, as `npm start` would run it. */
export async function startTestApi(
  options: {
    dataDir?: string;
    now?: () => Date;
    dispatchIntervalMs?: number;
    taskWrappers?: LocalRuntimeOptions['taskWrappers'];
    rds?: LocalRuntimeOptions['rds'];
    route53?: LocalRuntimeOptions['route53'];
    lambda?: LocalRuntimeOptions['lambda'];
    ecs?: LocalRuntimeOptions['ecs'];
    hooksDir?: string;
    sourceFromWorker?: boolean;
    /** Default: loopback allowed (the tests' emulators listen there), private and metadata refused. */
    egress?: LocalRuntimeOptions['egress'];
    /** Default: the machine's temporary directory is the files root (the tests' trees live there). */
    paths?: LocalRuntimeOptions['paths'];
    cloudwatch?: LocalRuntimeOptions['cloudwatch'];
    /** Where workflows run their heavy steps (default: in-process, as the Lambda path). */
    heavySteps?: LocalRuntimeOptions['heavySteps'];
    roleTokens?: LocalRuntimeOptions['roleTokens'];
    scratchDir?: string;
    /** Every Wait state of a workflow, and the fan-out's polls, this long instead. */
    workflowWaitMs?: number;
    /** The dashboard's built files (dashboard/build.ts), served at `/`. */
    dashboard?: LocalRuntimeOptions['dashboard'];
    progressMs?: number;
  } = {},
): Promise<TestApi> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'dr-api-')));
  const runtime = await startLocalRuntime({
    dataDir,
    port: 0,
    logger: silentLogger,
    // Tests fire schedules by calling the dispatcher with their own clock, unless they ask for the timer.
    dispatchIntervalMs: options.dispatchIntervalMs ?? 0,
    ...(options.now ? { now: options.now } : {}),
    ...(options.taskWrappers ? { taskWrappers: options.taskWrappers } : {}),
    ...(options.rds ? { rds: options.rds, workflowWaitMs: 10 } : {}),
    ...(options.workflowWaitMs === undefined ? {} : { workflowWaitMs: options.workflowWaitMs }),
    ...(options.route53 ? { route53: options.route53 } : {}),
    ...(options.lambda ? { lambda: options.lambda } : {}),
    ...(options.ecs ? { ecs: options.ecs } : {}),
    ...(options.hooksDir ? { hooksDir: options.hooksDir } : {}),
    ...(options.sourceFromWorker ? { sourceFromWorker: true } : {}),
    egress: options.egress ?? { allowLoopback: true },
    paths: options.paths ?? { roots: [tmpdir()], forbidden: [dataDir, PROGRAM_DIR] },
    ...(options.cloudwatch ? { cloudwatch: options.cloudwatch } : {}),
    ...(options.heavySteps ? { heavySteps: options.heavySteps } : {}),
    ...(options.roleTokens ? { roleTokens: options.roleTokens } : {}),
    ...(options.scratchDir ? { scratchDir: options.scratchDir } : {}),
    ...(options.dashboard ? { dashboard: options.dashboard } : {}),
    ...(options.progressMs === undefined ? {} : { progressMs: options.progressMs }),
  });
  const api: TestApi = {
    runtime,
    dataDir,
    async call(method, path, body, request = {}) {
      const token = request.token === undefined ? runtime.token : request.token;
      const headers: Record<string, string> = {
        ...(token === null ? {} : { authorization: `Bearer ${token}` }),
      };
      let payload: string | undefined = request.rawBody;
      if (body !== undefined) {
        payload = JSON.stringify(body);
        headers['content-type'] = 'application/json';
      }
      const response = await fetch(`${runtime.url}${path}`, {
        method,
        headers: { ...headers, ...request.headers },
        ...(payload === undefined ? {} : { body: payload }),
      });
      const text = await response.text();
      return {
        status: response.status,
        headers: response.headers,
        text,
        body: text === '' ? undefined : JSON.parse(text),
      };
    },
    async restart() {
      await runtime.close();
      return startTestApi({ dataDir, ...(options.now ? { now: options.now } : {}) });
    },
    async close() {
      await runtime.close();
      if (options.dataDir === undefined) await rm(dataDir, { recursive: true, force: true });
    },
  };
  return api;
}

/** Every field named in an error response. */
export function fieldsOf(response: ApiResponse): string[] {
  return ((response.body?.error?.details ?? []) as { field: string }[]).map((detail) => detail.field);
}
