import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { Validator } from '@seriousme/openapi-schema-validator';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_TABLE_NAME } from '../../functions/local/runtime.ts';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { seedConfig, seedTargets } from '../support/seed-examples.ts';

let api: TestApi;
beforeAll(async () => {
  api = await startTestApi();
});
afterAll(async () => {
  await api.close();
});

async function operations(): Promise<[string, string][]> {
  const document = await api.call('GET', '/api/dr/openapi.json');
  return Object.entries(document.body.paths as Record<string, Record<string, unknown>>).flatMap(
    ([path, methods]) =>
      Object.keys(methods).map((method): [string, string] => [
        method.toUpperCase(),
        path.replace(/\{[^}]+\}/g, 'some-id'),
      ]),
  );
}

describe('authentication', () => {
  it('answers health without a token', async () => {
    const response = await api.call('GET', '/api/dr/health', undefined, { token: null });
    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ status: 'ok', mode: 'local' });
  });

  it('refuses every other route without a token, or with a wrong one, before touching anything', async () => {
    const all = await operations();
    expect(all.length).toBeGreaterThanOrEqual(15);
    for (const [method, path] of all) {
      if (path === '/api/dr/health') continue;
      for (const token of [null, 'wrong-token']) {
        const response = await api.call(
          method,
          path,
          method === 'GET' || method === 'DELETE' ? undefined : {},
          { token },
        );
        expect(response.status, `${method} ${path} with ${String(token)}`).toBe(401);
        expect(response.headers.get('www-authenticate')).toContain('Bearer');
      }
    }
    expect((await api.call('GET', '/api/dr/audit')).body.items).toEqual([]);
  });
});

describe('errors', () => {
  it('answers 404 for an unknown route and 405 with Allow for a wrong method', async () => {
    const unknown = await api.call('GET', '/api/dr/nothing-here');
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toMatchObject({ status: 404, code: 'NotFound' });
    const wrong = await api.call('DELETE', '/api/dr/config');
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get('allow')).toBe('GET, POST, PATCH');
  });

  it('answers 400 for malformed JSON, 415 for another media type, 413 for an oversized body', async () => {
    const malformed = await api.call('POST', '/api/dr/config', undefined, {
      rawBody: '{"rto": 4,',
      headers: { 'content-type': 'application/json' },
    });
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe('MalformedJson');

    const form = await api.call('POST', '/api/dr/config', undefined, {
      rawBody: 'rto=4',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(form.status).toBe(415);

    const huge = await api.call('POST', '/api/dr/config', undefined, {
      rawBody: JSON.stringify({ notificationEmails: ['a'.repeat(2 * 1024 * 1024)] }),
      headers: { 'content-type': 'application/json' },
    });
    expect(huge.status).toBe(413);
  });

  it('answers 400 naming the body when a body is missing or not an object', async () => {
    for (const body of [undefined, [], 'text', 42, null]) {
      const response = await api.call('POST', '/api/dr/targets', body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(response.body.error.details[0].field).toBe('body');
    }
  });

  it('refuses unknown query parameters and bodies on operations that take none', async () => {
    const query = await api.call('GET', '/api/dr/targets?sort=name');
    expect(query.status).toBe(400);
    expect(query.body.error.details[0].field).toBe('sort');
    const body = await api
      .call('GET', '/api/dr/health', undefined, {
        rawBody: '{}',
        headers: { 'content-type': 'application/json' },
      })
      .catch(() => undefined);
    // fetch refuses GET bodies; DELETE shows the rule instead.
    expect(body).toBeUndefined();
    const withBody = await api.call('DELETE', '/api/dr/targets/some-id', { force: true });
    expect(withBody.status).toBe(400);
    expect(withBody.body.error.details[0].field).toBe('body');
  });

  it('answers 400 naming the id for an id that cannot exist', async () => {
    const response = await api.call('GET', `/api/dr/targets/${encodeURIComponent('a b!')}`);
    expect(response.status).toBe(400);
    expect(response.body.error.details[0].field).toBe('id');
  });
});

describe('OpenAPI', () => {
  it('is a valid OpenAPI 3.1 document (checked against the specification schema)', async () => {
    const response = await api.call('GET', '/api/dr/openapi.json');
    const result = await new Validator().validate(response.body);
    expect(result.errors).toBeUndefined();
    expect(result.valid).toBe(true);
  });

  it('documents every operation with the schemas that validate requests', async () => {
    const response = await api.call('GET', '/api/dr/openapi.json');
    expect(response.status).toBe(200);
    const document = response.body;
    expect(document.openapi).toBe('3.1.0');
    expect(document.paths['/api/dr/health'].get.security).toEqual([]);
    const createTarget = document.paths['/api/dr/targets'].post;
    const variants = createTarget.requestBody.content['application/json'].schema.oneOf as {
      properties: { targetType: { const: string } };
    }[];
    expect(variants.map((variant) => variant.properties.targetType.const)).toEqual([
      'LOCAL',
      'S3',
      'AZURE',
      'GCP',
      'FTP',
      'SFTP',
    ]);
    const config = document.paths['/api/dr/config'].post.requestBody.content['application/json'].schema;
    expect(config.properties.rto).toMatchObject({ minimum: 0.5, maximum: 72, default: 4 });
    expect(config.properties.rpo).toMatchObject({ minimum: 0.25, maximum: 24, default: 1 });
    expect(config.additionalProperties).toBe(false);
    expect(document.paths['/api/dr/targets/{id}'].get.parameters[0]).toMatchObject({
      name: 'id',
      in: 'path',
      required: true,
    });
  });
});

describe('audit log', () => {
  it('records who changed what, from where, in a hash chain that verifies', async () => {
    expect((await api.call('POST', '/api/dr/config', seedConfig)).status).toBe(201);
    const target = await api.call('POST', '/api/dr/targets', seedTargets.FTP, {
      headers: { 'user-agent': 'ops-script/1.0' },
    });
    expect((await api.call('DELETE', `/api/dr/targets/${target.body.id}`)).status).toBe(204);

    const log = await api.call('GET', '/api/dr/audit');
    expect(log.status).toBe(200);
    const [deleted, created, config] = log.body.items;
    expect(deleted).toMatchObject({ action: 'target.delete', resource: `target/${target.body.id}` });
    expect(created).toMatchObject({
      action: 'target.create',
      actor: { principal: 'local-operator', userAgent: 'ops-script/1.0' },
      details: { targetType: 'FTP', secretsChanged: ['password'] },
    });
    expect(created.actor.sourceIp).toMatch(/127\.0\.0\.1/);
    expect(config).toMatchObject({ action: 'config.create', seq: 1 });
    expect(created.prevHash).toBe(config.hash);
    expect(log.text).not.toContain('secure-password');

    const verified = await api.call('GET', '/api/dr/audit/verify');
    expect(verified.body).toMatchObject({ valid: true, entries: 3, headHash: deleted.hash });
  });

  it('detects an entry altered in the table', async () => {
    const client = DynamoDBDocumentClient.from(
      new DynamoDBClient({
        endpoint: api.runtime.storeEndpoint,
        region: 'local',
        credentials: { accessKeyId: 'x', secretAccessKey: 'x' },
      }),
    );
    await client.send(
      new UpdateCommand({
        TableName: LOCAL_TABLE_NAME,
        Key: { pk: 'AUDIT', sk: '000000000002' },
        UpdateExpression: 'SET actor.principal = :someoneElse',
        ExpressionAttributeValues: { ':someoneElse': 'innocent-bystander' },
      }),
    );
    const verified = await api.call('GET', '/api/dr/audit/verify');
    expect(verified.body).toMatchObject({ valid: false, firstInvalidSeq: 2, entries: 1 });
    expect(verified.body.reason).toContain('altered');
  });
});

describe('persistence', () => {
  it('keeps config, targets and the token across a restart', async () => {
    const target = await api.call('POST', '/api/dr/targets', seedTargets.S3);
    const token = api.runtime.token;
    expect(api.runtime.tokenGenerated).toBe(true);
    api = await api.restart();
    expect(api.runtime.token).toBe(token);
    expect(api.runtime.tokenGenerated).toBe(false);
    const read = await api.call('GET', `/api/dr/targets/${target.body.id}`);
    expect(read.status).toBe(200);
    expect(read.body.secretsSet).toEqual(['secretAccessKey']);
    expect((await api.call('GET', '/api/dr/config')).body).toMatchObject(seedConfig);
  });
});
