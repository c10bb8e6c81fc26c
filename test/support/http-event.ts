import type { HttpEvent } from '../../functions/api/http.ts';

/** An API Gateway HTTP API event (payload 2.0), with the IAM authorizer's identity when a user is given. */
export function httpEvent(method: string, path: string, body?: unknown, userArn?: string): HttpEvent {
  return {
    version: '2.0',
    routeKey: 'ANY /api/dr/{proxy+}',
    rawPath: path,
    rawQueryString: '',
    headers: { 'content-type': 'application/json', 'user-agent': 'aws-cli/2' },
    requestContext: {
      accountId: '111122223333',
      apiId: 'abc123',
      domainName: 'abc123.execute-api.us-east-1.amazonaws.com',
      domainPrefix: 'abc123',
      http: { method, path, protocol: 'HTTP/1.1', sourceIp: '203.0.113.9', userAgent: 'aws-cli/2' },
      requestId: 'req-1',
      routeKey: 'ANY /api/dr/{proxy+}',
      stage: '$default',
      time: '24/Nov/2026:18:00:00 +0000',
      timeEpoch: 1_795_111_200_000,
      ...(userArn ? { authorizer: { iam: { userArn } } } : {}),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    isBase64Encoded: false,
  };
}
