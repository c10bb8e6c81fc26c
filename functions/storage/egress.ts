import { lookup } from 'node:dns/promises';
import { Agent as HttpAgent, type AgentOptions } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { BlockList, isIP, type LookupFunction, type NetConnectOpts, type Socket } from 'node:net';

/**
 * Where target endpoints may point. An API token must not turn the control plane into a proxy towards what
 * only it can reach: the instance-metadata service (never), this machine (loopback) and the private network
 * (unless the operator allows them: `DR_ALLOW_PRIVATE_ENDPOINTS`, or the stack setting).
 */
export interface EgressPolicy {
  /** Private, unique-local and carrier-grade NAT ranges (an on-premises MinIO, say). Loopback included. */
  readonly allowPrivate?: boolean;
  /** This machine only (the test runtime: emulators on loopback ports). */
  readonly allowLoopback?: boolean;
  /** How names are resolved (default the system's resolver); tests give names whose answer changes. */
  readonly resolve?: (host: string) => Promise<readonly ResolvedAddress[]>;
}

export interface ResolvedAddress {
  readonly address: string;
  readonly family: number;
}

const systemResolve = (host: string): Promise<ResolvedAddress[]> => lookup(host, { all: true });

const metadata = new BlockList();
metadata.addAddress('169.254.169.254');
metadata.addAddress('169.254.170.2'); // ECS task metadata and credentials
metadata.addAddress('fd00:ec2::254', 'ipv6');
const METADATA_NAMES = new Set(['metadata.google.internal', 'metadata', 'instance-data']);

const linkLocal = new BlockList();
linkLocal.addSubnet('169.254.0.0', 16);
linkLocal.addSubnet('fe80::', 10, 'ipv6');

const loopback = new BlockList();
loopback.addSubnet('127.0.0.0', 8);
loopback.addAddress('::1', 'ipv6');

const privateRanges = new BlockList();
for (const [network, prefix] of [
  ['10.0.0.0', 8],
  ['172.16.0.0', 12],
  ['192.168.0.0', 16],
  ['100.64.0.0', 10],
  ['0.0.0.0', 8],
] as const)
  privateRanges.addSubnet(network, prefix);
privateRanges.addSubnet('fc00::', 7, 'ipv6');
privateRanges.addAddress('::', 'ipv6');

/** Why an address may not be reached under `policy`, or undefined when it may. */
export function addressProblem(address: string, policy: EgressPolicy): string | undefined {
  let ip = address.replace(/^\[|\]$/g, '');
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped) ip = mapped[1]!;
  const family = isIP(ip) === 6 ? 'ipv6' : 'ipv4';
  if (isIP(ip) === 0) return undefined;
  if (metadata.check(ip, family)) return `${ip} is the instance-metadata service`;
  if (linkLocal.check(ip, family)) return `${ip} is a link-local address`;
  if (loopback.check(ip, family))
    return policy.allowLoopback || policy.allowPrivate
      ? undefined
      : `${ip} is this machine (loopback); set DR_ALLOW_PRIVATE_ENDPOINTS=true to allow private endpoints`;
  if (privateRanges.check(ip, family))
    return policy.allowPrivate
      ? undefined
      : `${ip} is a private address; set DR_ALLOW_PRIVATE_ENDPOINTS=true to allow private endpoints`;
  return undefined;
}

/**
 * Why an endpoint URL may not be used, or undefined when it may: the host as written, and every address it
 * resolves to now (a name that does not resolve here is left to fail when used).
 */
export async function endpointProblem(endpoint: string, policy: EgressPolicy): Promise<string | undefined> {
  let host: string;
  try {
    host = new URL(endpoint).hostname.toLowerCase();
  } catch {
    return 'is not a URL';
  }
  if (METADATA_NAMES.has(host)) return `${host} is the instance-metadata service`;
  if (host === 'localhost' || host.endsWith('.localhost')) return addressProblem('127.0.0.1', policy);
  const literal = addressProblem(host, policy);
  if (literal !== undefined || isIP(host.replace(/^\[|\]$/g, '')) !== 0) return literal;
  // A resolver that does not answer within 3 s leaves the name to fail (or not) when used
  const addresses = await Promise.race([
    (policy.resolve ?? systemResolve)(host).catch(() => []),
    new Promise<[]>((resolve) => setTimeout(() => resolve([]), 3000).unref()),
  ]);
  for (const { address } of addresses) {
    const problem = addressProblem(address, policy);
    if (problem !== undefined) return `${host} resolves to ${problem}`;
  }
  return undefined;
}

/** The policy from the environment: DR_ALLOW_PRIVATE_ENDPOINTS=true allows private and loopback endpoints. */
export function egressFromEnv(env: NodeJS.ProcessEnv = process.env): EgressPolicy {
  return env.DR_ALLOW_PRIVATE_ENDPOINTS === 'true' ? { allowPrivate: true } : {};
}

/**
 * A connection the egress policy refused when it was about to be made. Its message is ours (the address and
 * the rule), and holds none of the words the SDKs' retry policies take for a transient failure.
 */
export class EgressRefused extends Error {
  readonly code = 'EGRESS_REFUSED';
  constructor(reason: string) {
    super(`refused by the egress policy: ${reason}`);
  }
  override get name(): string {
    return 'EgressRefused';
  }
}

/** The refusal somewhere in an error's chain of causes (an SDK wraps what the socket said), if any. */
export function egressRefusal(error: unknown): EgressRefused | undefined {
  for (let current = error, depth = 0; current instanceof Error && depth < 8; depth++) {
    if (current instanceof EgressRefused) return current;
    current = current.cause;
  }
  // Some SDKs keep only the text of what went wrong
  const message = error instanceof Error ? error.message : '';
  const found = /refused by the egress policy: ([^\n]*)/.exec(message);
  return found ? new EgressRefused(found[1]!) : undefined;
}

/**
 * The address to connect to for `host`, checked when the connection is made: a name that resolved to a
 * public address when the target was saved and resolves to the metadata service now (DNS rebinding) is
 * refused now, and the connection goes to the address that was checked, not to a second answer.
 */
export async function resolveAllowed(host: string, policy: EgressPolicy): Promise<ResolvedAddress> {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (METADATA_NAMES.has(bare)) throw new EgressRefused(`${bare} is the instance-metadata service`);
  if (isIP(bare) !== 0) {
    const problem = addressProblem(bare, policy);
    if (problem !== undefined) throw new EgressRefused(problem);
    return { address: bare, family: isIP(bare) };
  }
  const addresses = await (policy.resolve ?? systemResolve)(bare);
  if (addresses.length === 0)
    throw Object.assign(new Error(`${bare} does not resolve`), { code: 'ENOTFOUND' });
  for (const { address } of addresses) {
    const problem = addressProblem(address, policy);
    if (problem !== undefined) throw new EgressRefused(`${bare} resolves to ${problem}`);
  }
  return addresses[0]!;
}

/**
 * Where an HTTP client may connect: the egress policy, and (when `hosts` is given) only these hosts, as
 * `host` or `host:port` (a port-less entry allows any port; `*.host` its subdomains). Pinning the hosts is
 * what keeps a redirect, or a client that follows one, from carrying a signed request to another server.
 */
export interface EgressGuard {
  readonly policy: EgressPolicy;
  readonly hosts?: readonly string[];
}

export function hostAllowed(guard: EgressGuard, host: string, port: number | string | undefined): boolean {
  if (guard.hosts === undefined) return true;
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  return guard.hosts.some((entry) => {
    const match = /^(.*?)(?::(\d+))?$/.exec(entry.toLowerCase())!;
    const [pattern, pinnedPort] = [match[1]!.replace(/^\[|\]$/g, ''), match[2]];
    if (pinnedPort !== undefined && String(port) !== pinnedPort) return false;
    return pattern.startsWith('*.') ? bare.endsWith(pattern.slice(1)) : bare === pattern;
  });
}

/** A lookup for net.connect that answers only with addresses the policy allows. */
function guardedLookup(policy: EgressPolicy): LookupFunction {
  return (hostname, options, callback) => {
    resolveAllowed(hostname, policy).then(
      ({ address, family }) =>
        options.all ? callback(null, [{ address, family }]) : callback(null, address, family),
      (error: Error) => callback(error as NodeJS.ErrnoException, '', 0),
    );
  };
}

type CreateConnection = (
  options: NetConnectOpts,
  callback: (error: Error | null, socket?: Socket) => void,
) => Socket | undefined;

/** Wraps an agent's connections in the guard: hosts pinned, names resolved through the policy, literals checked. */
function guarded<T extends HttpAgent>(agent: T, guards: () => readonly EgressGuard[]): T {
  const create = (agent.createConnection as unknown as CreateConnection).bind(agent);
  const lookups = new WeakMap<EgressPolicy, LookupFunction>();
  (agent as unknown as { createConnection: CreateConnection }).createConnection = (options, callback) => {
    const { host = 'localhost', port } = options as { host?: string; port?: number };
    const guard = guards().find((candidate) => hostAllowed(candidate, host, port));
    const problem =
      guard === undefined
        ? `${host}:${String(port)} is not this target's endpoint (redirects are not followed)`
        : addressProblem(host, guard.policy); // a literal address; names are checked by the lookup
    if (guard === undefined || problem !== undefined) {
      process.nextTick(() => callback(new EgressRefused(problem ?? host)));
      return undefined;
    }
    let lookupFor = lookups.get(guard.policy);
    if (!lookupFor) lookups.set(guard.policy, (lookupFor = guardedLookup(guard.policy)));
    return create({ ...options, lookup: lookupFor }, callback);
  };
  return agent;
}

/** An http and an https agent whose every connection the guard checks (keep-alive, as the SDKs' own are). */
export function guardedAgents(
  guard: EgressGuard | (() => readonly EgressGuard[]),
  options: AgentOptions = { keepAlive: true },
): { http: HttpAgent; https: HttpsAgent } {
  const guards = typeof guard === 'function' ? guard : () => [guard];
  return { http: guarded(new HttpAgent(options), guards), https: guarded(new HttpsAgent(options), guards) };
}

/**
 * The guard for a client of `endpoint`: its host and port and their subdomains (virtual-hosted buckets), plus
 * `extra` hosts. Without an endpoint (the provider's own hosts) only the addresses are checked.
 */
export function endpointGuard(
  policy: EgressPolicy,
  endpoint: string | undefined,
  extra: readonly string[] = [],
): EgressGuard {
  if (endpoint === undefined) return { policy };
  const url = new URL(endpoint);
  const port = url.port || (url.protocol === 'http:' ? '80' : '443');
  return { policy, hosts: [`${url.hostname}:${port}`, `*.${url.hostname}:${port}`, ...extra] };
}
