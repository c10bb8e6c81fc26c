import { IAMClient, ListRoleTagsCommand, ListUserTagsCommand } from '@aws-sdk/client-iam';
import { mockClient } from 'aws-sdk-client-mock';
import { describe, expect, it } from 'vitest';
import { roleOf, type HttpEvent } from '../../functions/api/http.ts';
import { iamPrincipalRoles } from '../../functions/aws/principal-roles.ts';

const event = (authorizer: HttpEvent['requestContext']['authorizer']) =>
  ({ requestContext: { authorizer, http: { method: 'GET' } } }) as unknown as HttpEvent;

describe("a caller's role", () => {
  it('comes from JWT groups or scopes, the highest named; none makes a viewer', async () => {
    // API Gateway passes array claims as "[a b]"
    expect(
      await roleOf(event({ jwt: { claims: { sub: 'u', 'cognito:groups': '[dr-operator other]' } } })),
    ).toBe('operator');
    expect(await roleOf(event({ jwt: { claims: { sub: 'u', scope: 'openid dr:admin dr:viewer' } } }))).toBe(
      'admin',
    );
    expect(await roleOf(event({ jwt: { claims: { sub: 'u', groups: ['dr:viewer'] } } }))).toBe('viewer');
    expect(await roleOf(event({ jwt: { claims: { sub: 'u', scope: 'openid administrator' } } }))).toBe(
      'viewer',
    );
  });

  it("comes from the IAM principal's dr-automation:role tag (user, role, assumed role), cached", async () => {
    const iam = mockClient(IAMClient);
    iam.on(ListRoleTagsCommand, { RoleName: 'DrOperators' }).resolves({
      Tags: [{ Key: 'dr-automation:role', Value: 'operator' }],
    });
    iam.on(ListRoleTagsCommand, { RoleName: 'Untagged' }).resolves({ Tags: [] });
    iam.on(ListUserTagsCommand, { UserName: 'alice' }).resolves({
      Tags: [{ Key: 'dr-automation:role', Value: 'admin' }],
    });
    const roles = iamPrincipalRoles(iam as never);
    const principal = (arn: string) => roleOf(event({ iam: { userArn: arn } }), roles);
    expect(await principal('arn:aws:sts::123456789012:assumed-role/DrOperators/session-1')).toBe('operator');
    expect(await principal('arn:aws:iam::123456789012:role/team/DrOperators')).toBe('operator');
    expect(await principal('arn:aws:iam::123456789012:user/ops/alice')).toBe('admin');
    expect(await principal('arn:aws:sts::123456789012:assumed-role/Untagged/x')).toBe('viewer');
    expect(await principal('arn:aws:iam::123456789012:root')).toBe('admin');
    expect(await principal('not-an-arn')).toBe('viewer');
    await principal('arn:aws:sts::123456789012:assumed-role/DrOperators/session-1');
    expect(iam.commandCalls(ListRoleTagsCommand, { RoleName: 'DrOperators' })).toHaveLength(2); // two ARNs, each once
  });
});
