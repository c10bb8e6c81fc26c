import { createRequire } from 'node:module';
import type { Agent } from 'node:http';
import { guardedAgents, type EgressGuard } from '../egress.ts';

/**
 * Where the GCS client's requests may go. The library sends most calls through teeny-request, which takes no
 * agent and follows redirects to any host: it keeps one keep-alive agent per protocol for the whole
 * process. Those two are replaced, once, by agents that connect only where some GcsStorage of this process
 * was opened to go (its endpoint, under the egress policy it was opened with). Resumable uploads and tokens
 * go through the auth client, which is given its own guarded agent (`agentFor`).
 */
const guards = new Map<string, EgressGuard>();
let installed = false;

function install(): void {
  if (installed) return;
  const require = createRequire(import.meta.url);
  const storageEntry = require.resolve('@google-cloud/storage');
  const teeny = createRequire(storageEntry)('teeny-request/build/src/agents.js') as {
    pool?: Map<string, Agent>;
  };
  // Fail closed: a library that no longer keeps its agents here must not run unguarded
  if (!(teeny.pool instanceof Map))
    throw new Error(
      'teeny-request no longer exposes its agent pool: the GCS egress guard cannot be installed',
    );
  const agents = guardedAgents(() => [...guards.values()], { keepAlive: true, maxSockets: Infinity });
  teeny.pool.set('http:forever', agents.http);
  teeny.pool.set('https:forever', agents.https);
  installed = true;
}

/** Lets this process's GCS client reach what `guard` allows (registered once per distinct guard). */
export function allowGcs(guard: EgressGuard): void {
  install();
  const { allowPrivate = false, allowLoopback = false, resolve } = guard.policy;
  const key = JSON.stringify([guard.hosts ?? '*', allowPrivate, allowLoopback, resolve !== undefined]);
  guards.set(key, guard);
}

/** An agent (per protocol) for gaxios, the auth client's transport. */
export function agentFor(guard: EgressGuard): (url: URL) => Agent {
  const agents = guardedAgents(guard);
  return (url) => (url.protocol === 'http:' ? agents.http : agents.https);
}
