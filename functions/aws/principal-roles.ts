import { IAMClient, ListRoleTagsCommand, ListUserTagsCommand } from '@aws-sdk/client-iam';
import { roleNamed, type DrRole } from '../core/authz.ts';

/** The tag an IAM user or role carries to say what it may do through the API: viewer, operator or admin. */
export const ROLE_TAG = 'dr-automation:role';
const CACHE_MS = 5 * 60_000;

/**
 * The role of an IAM caller (API Gateway's IAM authorizer gives its ARN): the `dr-automation:role` tag of the
 * user, or of the role behind an assumed-role session. Untagged principals are viewers. The account root is
 * an admin (it can change any policy anyway). Answers are cached for five minutes per principal.
 */
export function iamPrincipalRoles(
  iam: IAMClient = new IAMClient({}),
  now: () => number = Date.now,
): (arn: string) => Promise<DrRole | undefined> {
  const cache = new Map<string, { role: DrRole | undefined; at: number }>();
  return async (arn) => {
    const hit = cache.get(arn);
    if (hit && now() - hit.at < CACHE_MS) return hit.role;
    const role = await lookup(iam, arn);
    cache.set(arn, { role, at: now() });
    return role;
  };
}

async function lookup(iam: IAMClient, arn: string): Promise<DrRole | undefined> {
  const resource = /^arn:[\w-]+:(?:iam|sts)::\d{12}:(.+)$/.exec(arn)?.[1];
  if (!resource) return undefined;
  if (resource === 'root') return 'admin';
  const [kind, ...rest] = resource.split('/');
  // assumed-role/<role name>/<session>; user/<path>/<name>; role/<path>/<name>
  const name = kind === 'assumed-role' ? rest[0] : rest.at(-1);
  if (!name) return undefined;
  const tags =
    kind === 'user'
      ? (await iam.send(new ListUserTagsCommand({ UserName: name }))).Tags
      : kind === 'assumed-role' || kind === 'role'
        ? (await iam.send(new ListRoleTagsCommand({ RoleName: name }))).Tags
        : undefined;
  const value = tags?.find((tag) => tag.Key === ROLE_TAG)?.Value;
  return value === undefined ? undefined : roleNamed([value]);
}
