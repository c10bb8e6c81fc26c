/**
 * Application hooks: what the restore, failover and DR-test workflows call before they touch an environment's
 * database (`stop`) and after (`start`), and what a failover calls to point the application at the new
 * primary (`switch`). A webhook is POSTed a signed JSON body (retried on a network error, a timeout, 429 or
 * 5xx); a Lambda function is invoked with the same body; an ECS service is scaled to 0 and back to the count
 * it had; a command (local runtime only) is an executable of DR_HOOKS_DIR run without a shell.
 *
 * The hooks an execution ran are kept in its entry (`hooks`) as they run, not only in the execution's state:
 * a stop hook that failed halfway has still run, and `start` runs for every hook `stop` reached, on every
 * path (a failed restore included). A failed `stop` fails the run before the database is touched; a failed
 * `start` is an issue of the run.
 */
import { execFile } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { DescribeServicesCommand, ECSClient, UpdateServiceCommand } from '@aws-sdk/client-ecs';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { z } from 'zod';
import type { ControlPlane } from '../core/context.ts';
import { hookScript } from '../core/paths.ts';
import type { HookOutcome, HookRun } from '../core/records.ts';
import { hooksForRun, type HookForRun } from '../core/services/config-service.ts';
import { getDrTest, updateDrTest } from '../core/services/drtest-service.ts';
import { getFailover, updateFailover } from '../core/services/failover-service.ts';
import { getRestore, updateRestore } from '../core/services/restore-service.ts';
import { requestStatus } from '../core/outbound.ts';
import { egressRefusal } from '../storage/egress.ts';
import { WorkflowError, group, hookIssues, type WorkflowDeps } from './steps.ts';

export type HookEvent = HookOutcome['event'];

/** What every hook is told: the event, the environment, the run, and (for `switch`) the new primary. */
export interface HookPayload {
  readonly event: HookEvent;
  readonly environment: 'PRODUCTION' | 'STAGING';
  readonly workflow: 'restore' | 'failover' | 'failback' | 'failover-test';
  readonly runId: string;
  readonly at: string;
  readonly primary?: { readonly host: string; readonly port: number; readonly database?: string };
}

/** What a hook step is given: the run it belongs to (one of the ids) and, for a failover, its direction. */
const hookState = z.looseObject({
  restoreId: z.string().optional(),
  testId: z.string().optional(),
  failoverId: z.string().optional(),
  failingBack: z.boolean().optional(),
});
type HookState = z.infer<typeof hookState>;

/** The run's entry, as the hook steps read and write it. */
interface RunEntry {
  readonly workflow: HookPayload['workflow'];
  readonly id: string;
  readonly environment: 'PRODUCTION' | 'STAGING';
  readonly hooks: HookRun | undefined;
  save(change: (hooks: HookRun | undefined) => HookRun): Promise<void>;
}

async function entryOf(cp: ControlPlane, state: HookState): Promise<RunEntry> {
  if (state.restoreId) {
    const restore = await getRestore(cp, state.restoreId);
    return {
      workflow: 'restore',
      id: restore.id,
      environment: restore.request.destination.environment,
      hooks: restore.hooks,
      save: async (change) => {
        await updateRestore(cp, restore.id, (record) => ({ ...record, hooks: change(record.hooks) }));
      },
    };
  }
  if (state.testId) {
    const test = await getDrTest(cp, state.testId);
    return {
      workflow: 'failover-test',
      id: test.id,
      environment: test.targetEnvironment,
      hooks: test.hooks,
      save: async (change) => {
        await updateDrTest(cp, test.id, (record) => ({ ...record, hooks: change(record.hooks) }));
      },
    };
  }
  if (state.failoverId) {
    const failover = await getFailover(cp, state.failoverId);
    const key = state.failingBack ? 'failbackHooks' : 'hooks';
    return {
      workflow: state.failingBack ? 'failback' : 'failover',
      id: failover.id,
      environment: 'PRODUCTION',
      hooks: failover[key],
      save: async (change) => {
        await updateFailover(cp, failover.id, (record) => ({ ...record, [key]: change(record[key]) }));
      },
    };
  }
  throw new WorkflowError('InvalidState', 'a hook step needs restoreId, testId or failoverId');
}

export const hookSteps = group(hookState, {
  'hooks.stop': async (cp, deps, state) => {
    const entry = await entryOf(cp, state);
    const hooks = await hooksForRun(cp, entry.environment);
    if (hooks.length === 0) return { ran: 0 };
    const outcomes: HookOutcome[] = [];
    const save = () => entry.save(() => ({ environment: entry.environment, stop: [...outcomes] }));
    for (const hook of hooks) {
      // Recorded before it runs: a hook that dies halfway has run, and start will be called for it.
      outcomes.push({ name: hookName(hook), type: hook.type, event: 'stop', ok: false, seconds: 0 });
      await save();
      outcomes[outcomes.length - 1] = await runHook(cp, deps, hook, payload(cp, entry, 'stop'));
      await save();
      const last = outcomes.at(-1)!;
      if (!last.ok)
        throw new WorkflowError(
          'HookFailed',
          `the stop hook ${last.name} failed: ${last.error}; the database was not touched`,
        );
    }
    return { ran: outcomes.length };
  },
  'hooks.start': async (cp, deps, state) => {
    const entry = await entryOf(cp, state);
    const stopped = entry.hooks?.stop ?? [];
    if (stopped.length === 0 || entry.hooks?.start) return { ran: 0 };
    const hooks = await hooksForRun(cp, entry.environment);
    const outcomes: HookOutcome[] = [];
    // In reverse order of stop: the last stopped starts first.
    for (let index = stopped.length - 1; index >= 0; index--) {
      const hook = hooks[index];
      const before = stopped[index]!;
      if (!hook || hookName(hook) !== before.name) {
        outcomes.push({
          ...before,
          event: 'start',
          ok: false,
          seconds: 0,
          error: 'the hook was removed from the config after stop ran: start it by hand',
        });
        continue;
      }
      outcomes.push(await runHook(cp, deps, hook, payload(cp, entry, 'start'), before.previousCount));
    }
    await entry.save((current) => ({
      ...(current ?? { environment: entry.environment, stop: [] }),
      start: outcomes,
    }));
    return {
      ran: outcomes.length,
      ...hookIssues({ environment: entry.environment, stop: stopped, start: outcomes }),
    };
  },
});

function payload(cp: ControlPlane, entry: RunEntry, event: HookEvent): HookPayload {
  return {
    event,
    environment: entry.environment,
    workflow: entry.workflow,
    runId: entry.id,
    at: cp.now().toISOString(),
  };
}

export function hookName(hook: HookForRun): string {
  if (hook.name) return hook.name;
  switch (hook.type) {
    case 'webhook':
      return `webhook ${new URL(hook.url).host}`;
    case 'lambda':
      return `lambda ${hook.functionArn.split(':')[6]}`;
    case 'ecs':
      return `ecs ${hook.service.split('/').at(-1)}`;
    case 'command':
      return `command ${hook.script}`;
  }
}

/** Runs one hook for one event; never throws: the outcome says what happened. */
export async function runHook(
  cp: ControlPlane,
  deps: WorkflowDeps,
  hook: HookForRun,
  body: HookPayload,
  previousCount?: number,
): Promise<HookOutcome> {
  const started = Date.now();
  const base = { name: hookName(hook), type: hook.type, event: body.event };
  try {
    const result = await callHook(cp, deps, hook, body, previousCount);
    return { ...base, ok: true, seconds: (Date.now() - started) / 1000, ...result };
  } catch (error) {
    const failure = error as Error & { attempts?: number };
    cp.logger.warn('hook failed', { hook: base.name, event: body.event, error: failure.message });
    return {
      ...base,
      ok: false,
      seconds: (Date.now() - started) / 1000,
      error: failure.message,
      ...(failure.attempts ? { attempts: failure.attempts } : {}),
    };
  }
}

async function callHook(
  cp: ControlPlane,
  deps: WorkflowDeps,
  hook: HookForRun,
  body: HookPayload,
  previousCount: number | undefined,
): Promise<Partial<HookOutcome>> {
  switch (hook.type) {
    case 'webhook':
      return { attempts: await postWebhook(cp, hook, body) };
    case 'lambda': {
      const region = hook.functionArn.split(':')[3];
      const lambda = deps.lambda?.(region) ?? new LambdaClient({ region });
      const answer = await lambda.send(
        new InvokeCommand({
          FunctionName: hook.functionArn,
          InvocationType: 'RequestResponse',
          Payload: Buffer.from(JSON.stringify(body)),
        }),
      );
      if (answer.FunctionError) {
        const text = answer.Payload ? Buffer.from(answer.Payload).toString('utf8').slice(0, 300) : '';
        throw new Error(`the function failed (${answer.FunctionError}): ${text}`);
      }
      return {};
    }
    case 'ecs':
      return scaleService(deps, hook, body.event, previousCount);
    case 'command':
      await runCommand(cp, hook, body);
      return {};
  }
}

// ------------------------------------------------------------------------------------------------ webhook

type Webhook = Extract<HookForRun, { type: 'webhook' }>;

/**
 * POSTs the signed body: `X-DR-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` under the hook's
 * secret, `X-DR-Timestamp` (seconds), `X-DR-Delivery` (the same on every attempt). Connections go through the
 * egress policy to the hook's host only; a redirect is not followed (it fails). Answers the attempts made.
 */
async function postWebhook(cp: ControlPlane, hook: Webhook, body: HookPayload): Promise<number> {
  if (!hook.secret) throw new Error('the webhook has no secret (give it again in the DR config)');
  const url = new URL(hook.url);
  const text = JSON.stringify(body);
  const delivery = randomUUID();
  const attempts = hook.retries + 1;
  for (let attempt = 1; ; attempt++) {
    const timestamp = String(Math.floor(Date.now() / 1000));
    const signature = createHmac('sha256', hook.secret).update(`${timestamp}.${text}`).digest('hex');
    let retry: boolean;
    let problem: string;
    try {
      const status = await requestStatus(url, {
        method: 'POST',
        egress: cp.egress,
        timeoutMs: hook.timeoutSeconds * 1000,
        body: text,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'dr-automation-hook/1',
          'x-dr-event': body.event,
          'x-dr-delivery': delivery,
          'x-dr-timestamp': timestamp,
          'x-dr-signature': `sha256=${signature}`,
        },
      });
      if (status >= 200 && status < 300) return attempt;
      retry = status === 429 || status >= 500;
      problem = `answered ${status}`;
    } catch (error) {
      const refused = egressRefusal(error);
      retry = refused === undefined;
      problem = refused ? refused.message : (error as Error).message;
    }
    if (!retry || attempt >= attempts)
      throw Object.assign(
        new Error(`${url.origin}${url.pathname} ${problem} (attempt ${attempt} of ${attempts})`),
        {
          attempts: attempt,
        },
      );
    await sleep(Math.min(1000 * 2 ** (attempt - 1), 8000));
  }
}

// ---------------------------------------------------------------------------------------------------- ECS

type EcsHook = Extract<HookForRun, { type: 'ecs' }>;

/** stop: the service scaled to 0 (its count kept), waiting for its tasks to end; start: back to that count. */
async function scaleService(
  deps: WorkflowDeps,
  hook: EcsHook,
  event: HookEvent,
  previousCount: number | undefined,
): Promise<Partial<HookOutcome>> {
  const ecs = deps.ecs?.(hook.region) ?? new ECSClient(hook.region ? { region: hook.region } : {});
  const describe = async () => {
    const found = await ecs.send(
      new DescribeServicesCommand({ cluster: hook.cluster, services: [hook.service] }),
    );
    const service = found.services?.[0];
    if (!service || service.status === 'INACTIVE')
      throw new Error(`service ${hook.service} not found in cluster ${hook.cluster}`);
    return service;
  };
  const wanted = event === 'stop' ? 0 : previousCount;
  if (wanted === undefined) throw new Error('start without the count stop found: scale the service by hand');
  const before = await describe();
  await ecs.send(
    new UpdateServiceCommand({ cluster: hook.cluster, service: hook.service, desiredCount: wanted }),
  );
  const deadline = Date.now() + hook.timeoutSeconds * 1000;
  for (;;) {
    const now = await describe();
    if ((now.runningCount ?? 0) === wanted && (now.pendingCount ?? 0) === 0) break;
    if (Date.now() >= deadline)
      throw new Error(
        `service ${hook.service} has ${now.runningCount ?? 0} running tasks, not ${wanted}, after ${hook.timeoutSeconds} s`,
      );
    await sleep(deps.pollMs ?? 5000);
  }
  return event === 'stop' ? { previousCount: before.desiredCount ?? 0 } : {};
}

// ------------------------------------------------------------------------------------------------ command

type CommandHook = Extract<HookForRun, { type: 'command' }>;

/** The hook's script, resolved inside DR_HOOKS_DIR (a link out of it is refused), run without a shell. */
async function runCommand(cp: ControlPlane, hook: CommandHook, body: HookPayload): Promise<void> {
  const file = await hookScript(cp, hook.script);
  await new Promise<void>((resolve, reject) => {
    execFile(
      file,
      hook.args,
      {
        timeout: hook.timeoutSeconds * 1000,
        killSignal: 'SIGKILL',
        maxBuffer: 1 << 20,
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          DR_HOOK_EVENT: body.event,
          DR_HOOK_ENVIRONMENT: body.environment,
          DR_HOOK_WORKFLOW: body.workflow,
          DR_HOOK_RUN_ID: body.runId,
          DR_HOOK_PAYLOAD: JSON.stringify(body),
          ...(body.primary
            ? {
                DR_HOOK_PRIMARY_HOST: body.primary.host,
                DR_HOOK_PRIMARY_PORT: String(body.primary.port),
              }
            : {}),
        },
      },
      (error, _stdout, stderr) => {
        if (!error) return resolve();
        const why = error.killed
          ? `was stopped after ${hook.timeoutSeconds} s`
          : `exited with ${String(error.code ?? error.signal)}`;
        const tail = String(stderr).trim().split('\n').slice(-3).join(' | ').slice(0, 300);
        reject(new Error(`${hook.script} ${why}${tail ? `: ${tail}` : ''}`));
      },
    );
  });
}

/** Calls the failover's endpoint hook with the new primary (event `switch`). */
export async function switchHook(
  cp: ControlPlane,
  deps: WorkflowDeps,
  hook: HookForRun,
  body: Omit<HookPayload, 'event' | 'at'>,
): Promise<HookOutcome> {
  return runHook(cp, deps, hook, { ...body, event: 'switch', at: cp.now().toISOString() });
}
