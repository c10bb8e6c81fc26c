import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';

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
}

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
    lookup(host, { all: true }).catch(() => []),
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
