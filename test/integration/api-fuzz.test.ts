import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApi, type TestApi } from '../support/local-api.ts';
import { seedConfig, seedSchedules, seedTargets } from '../support/seed-examples.ts';

/**
 * Property: whatever a client sends, the API answers with a 2xx or a 4xx in the error shape, never a 5xx.
 * Bodies are arbitrary JSON, and valid seed examples with one field replaced by arbitrary JSON (which reaches
 * much deeper into the validation than random objects do).
 */
let api: TestApi;
let operations: [string, string][];
beforeAll(async () => {
  api = await startTestApi();
  await api.call('POST', '/api/dr/targets', { ...seedTargets.S3, id: 's3-target-id' });
  const document = await api.call('GET', '/api/dr/openapi.json');
  operations = Object.entries(document.body.paths as Record<string, Record<string, unknown>>).flatMap(
    ([path, methods]) => Object.keys(methods).map((method): [string, string] => [method.toUpperCase(), path]),
  );
});
afterAll(async () => {
  await api.close();
});

const examples: object[] = [seedConfig, ...Object.values(seedTargets), ...Object.values(seedSchedules)];

/** A valid example with one (possibly nested) field replaced or added. */
const mutatedExample = fc
  .tuple(
    fc.constantFrom(...examples),
    fc.array(
      fc.constantFrom(
        'config',
        'targets',
        'rto',
        'port',
        'path',
        'cronExpression',
        'targetType',
        'secretAccessKey',
        'notificationEmails',
        'version',
        '__proto__',
        'constructor',
      ),
    ),
    fc.jsonValue(),
  )
  .map(([example, path, value]) => {
    const copy = structuredClone(example) as Record<string, unknown>;
    let cursor: Record<string, unknown> = copy;
    for (const key of path.slice(0, -1)) {
      // Own properties only: walking into `__proto__` would pollute Object.prototype of this very process.
      if (!Object.hasOwn(cursor, key)) break;
      const next = cursor[key];
      if (typeof next !== 'object' || next === null) break;
      cursor = next as Record<string, unknown>;
    }
    Object.defineProperty(cursor, path.at(-1) ?? 'extra', {
      value,
      enumerable: true,
      configurable: true,
      writable: true,
    });
    return copy;
  });

const anyBody = fc.oneof(fc.jsonValue(), fc.object(), mutatedExample);
const anyId = fc.oneof(
  fc.constant('s3-target-id'),
  fc.string({ maxLength: 80 }),
  fc.stringMatching(/^[A-Za-z0-9_-]{1,70}$/),
);

function fill(path: string, id: string): string {
  return path.replace(/\{[^}]+\}/g, encodeURIComponent(id));
}

function expectNo5xx(response: { status: number; body: any }, what: string): void {
  expect(response.status, what).toBeLessThan(500);
  if (response.status >= 400) {
    expect(response.body.error, what).toMatchObject({
      status: response.status,
      code: expect.any(String),
      message: expect.any(String),
    });
  }
}

describe('fuzzing every route', () => {
  it('never answers 5xx to arbitrary JSON bodies', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(), anyBody, anyId, async (pick, body, id) => {
        const [method, path] = operations[pick % operations.length]!;
        const target = fill(path, id);
        const response = await api.call(method, target, method === 'GET' ? undefined : body);
        expectNo5xx(response, `${method} ${target} ${JSON.stringify(body).slice(0, 200)}`);
      }),
      { numRuns: 600 },
    );
  });

  it('never answers 5xx to arbitrary raw bodies, content types and query strings', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.string({ maxLength: 300 }),
        fc.constantFrom(
          'application/json',
          'application/json; charset=utf-8',
          'text/plain',
          'application/vnd.api+json',
          '',
        ),
        fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }), fc.string({ maxLength: 40 }), {
          maxKeys: 3,
        }),
        async (pick, raw, contentType, query) => {
          const [method, path] = operations[pick % operations.length]!;
          const search = new URLSearchParams(query).toString();
          const target = `${fill(path, 's3-target-id')}${search === '' ? '' : `?${search}`}`;
          const response = await api.call(method, target, undefined, {
            ...(method === 'GET' ? {} : { rawBody: raw }),
            headers: contentType === '' ? {} : { 'content-type': contentType },
          });
          expectNo5xx(response, `${method} ${target} ${contentType} ${raw.slice(0, 100)}`);
        },
      ),
      { numRuns: 400 },
    );
  });

  it('never answers 5xx to forged, altered or foreign pagination tokens', async () => {
    for (let i = 0; i < 3; i++)
      await api.call('POST', '/api/dr/targets', { ...seedTargets.LOCAL, id: `paged-${i}` });
    const real = (await api.call('GET', '/api/dr/targets?limit=1')).body.nextToken as string;
    expect(real).toMatch(/^[A-Za-z0-9_-]{20,}/);
    const lists = [
      '/api/dr/targets',
      '/api/dr/schedules',
      '/api/dr/audit',
      '/api/dr/backups',
      '/api/dr/test',
    ];
    const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
    // The crafted tokens that used to reach DynamoDB: an empty sort key, another partition, another list's
    const crafted = [
      encode({ pk: 'TARGET', sk: '' }),
      `${encode({ pk: 'TARGET', sk: '' })}.${real.split('.')[1]}`,
      `${encode({ pk: 'SCHEDULE', sk: 'x' })}.${real.split('.')[1]}`,
      `${real}x`,
      real.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')),
      real,
    ];
    for (const list of lists)
      for (const token of crafted) {
        const response = await api.call('GET', `${list}?nextToken=${encodeURIComponent(token)}`);
        if (list === '/api/dr/targets' && token === real) expect(response.status).toBe(200);
        else {
          expect(response.status, `${list} ${token}`).toBe(400);
          expect(response.body.error.details[0].field).toBe('nextToken');
        }
      }
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...lists),
        fc.oneof(
          fc.string({ maxLength: 200 }),
          fc.jsonValue().map(encode),
          fc
            .tuple(fc.jsonValue(), fc.string({ maxLength: 40 }))
            .map(([value, mac]) => `${encode(value)}.${mac}`),
        ),
        async (list, token) => {
          const response = await api.call('GET', `${list}?nextToken=${encodeURIComponent(token)}`);
          expectNo5xx(response, `${list} ${token}`);
          expect(response.status).toBe(400);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('never answers 5xx to arbitrary endpoints and paths', async () => {
    const host = fc.oneof(
      fc.ipV4(),
      fc.ipV6().map((ip) => `[${ip}]`),
      fc.domain(),
      fc.constantFrom('localhost', 'metadata.google.internal', '169.254.169.254', '[::ffff:127.0.0.1]'),
    );
    const endpoint = fc.oneof(
      fc
        .tuple(fc.constantFrom('http', 'https', 'ftp', 'file'), host, fc.option(fc.nat(70000)))
        .map(([scheme, name, port]) => `${scheme}://${name}${port === null ? '' : `:${port}`}/`),
      fc.webUrl(),
      fc.string({ maxLength: 80 }),
    );
    const path = fc.oneof(
      fc.string({ maxLength: 80 }),
      fc
        .array(fc.constantFrom('..', '.', 'tmp', 'etc', '', 'a b', '%2e%2e', '\u0000'), { maxLength: 6 })
        .map((parts) => `/${parts.join('/')}`),
    );
    await fc.assert(
      fc.asyncProperty(endpoint, path, async (url, dir) => {
        const target = await api.call('POST', '/api/dr/targets', {
          ...seedTargets.S3,
          config: { ...seedTargets.S3.config, endpoint: url },
        });
        expectNo5xx(target, `endpoint ${url}`);
        const config = await api.call('POST', '/api/dr/config', {
          source: { files: { type: 'directory', path: dir } },
        });
        expectNo5xx(config, `path ${dir}`);
        const restore = await api.call('POST', '/api/dr/restore', {
          backupId: '20261101T000000000Z-abcdef',
          scope: { database: false, files: true },
          destination: { filesTo: dir },
        });
        expectNo5xx(restore, `filesTo ${dir}`);
      }),
      { numRuns: 200 },
    );
  });
});
