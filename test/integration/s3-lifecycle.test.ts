import {
  GetBucketLifecycleConfigurationCommand,
  PutBucketLifecycleConfigurationCommand,
  S3Client,
  type LifecycleRule,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';
import { startS3, type TestS3 } from '../support/s3-server.ts';

/**
 * Lifecycle rules on S3 targets, through the API against a real S3-compatible server: the target's rule is
 * put on its bucket for its prefix when the target is saved, changed and removed with it, and every other
 * rule of the bucket is kept; rules unsafe for a deduplicating repository are refused.
 */
let api: TestApi;
let s3: TestS3;
let client: S3Client;
const foreign: LifecycleRule = {
  ID: 'logs-expire',
  Status: 'Enabled',
  Filter: { Prefix: 'logs/' },
  Expiration: { Days: 30 },
};

beforeAll(async () => {
  [api, s3] = await Promise.all([startTestApi(), startS3('backups')]);
  client = new S3Client({
    region: 'us-east-1',
    endpoint: s3.endpoint,
    credentials: { ...s3.credentials }, // a copy: the SDK marks the object it is given
    forcePathStyle: true,
  });
  await client.send(
    new PutBucketLifecycleConfigurationCommand({
      Bucket: 'backups',
      LifecycleConfiguration: { Rules: [foreign] },
    }),
  );
});
afterAll(async () => {
  await Promise.all([api?.close(), s3?.stop()]);
});

const target = (config: Record<string, unknown>) => ({
  id: 'archive',
  name: 'S3 archive',
  targetType: 'S3',
  config: {
    bucket: 'backups',
    prefix: 'event-manager',
    region: 'us-east-1',
    endpoint: s3.endpoint,
    forcePathStyle: true,
    ...s3.credentials,
    ...config,
  },
});

async function rules(): Promise<LifecycleRule[]> {
  const result = await client.send(new GetBucketLifecycleConfigurationCommand({ Bucket: 'backups' }));
  return result.Rules ?? [];
}

const ours = (rulesNow: LifecycleRule[]) => rulesNow.find((rule) => rule.ID?.startsWith('dr-automation:'));

it('puts the target rule on its bucket for its prefix, keeps the bucket other rules, changes and removes it with the target', async () => {
  const created = await api.call(
    'POST',
    '/api/dr/targets',
    target({
      lifecycle: {
        transitions: [
          { days: 30, storageClass: 'STANDARD_IA' },
          { days: 90, storageClass: 'GLACIER_IR' },
        ],
        noncurrentVersionExpirationDays: 60,
      },
    }),
  );
  expect(created.status).toBe(201);
  expect(created.body.config.lifecycle.transitions).toHaveLength(2);
  let now = await rules();
  expect(now.find((rule) => rule.ID === 'logs-expire')).toMatchObject({ Expiration: { Days: 30 } });
  expect(ours(now)).toMatchObject({
    ID: 'dr-automation:backups/event-manager/',
    Status: 'Enabled',
    Filter: { Prefix: 'event-manager/' },
    Transitions: [
      { Days: 30, StorageClass: 'STANDARD_IA' },
      { Days: 90, StorageClass: 'GLACIER_IR' },
    ],
    AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 },
    NoncurrentVersionExpiration: { NoncurrentDays: 60 },
  });
  expect(ours(now)?.Expiration).toBeUndefined();

  const changed = await api.call(
    'PUT',
    '/api/dr/targets/archive',
    target({
      lifecycle: {
        transitions: [{ days: 0, storageClass: 'INTELLIGENT_TIERING' }],
        abortIncompleteUploadsAfterDays: 2,
      },
    }),
  );
  expect(changed.status).toBe(200);
  now = await rules();
  expect(now).toHaveLength(2);
  expect(ours(now)).toMatchObject({
    Transitions: [{ Days: 0, StorageClass: 'INTELLIGENT_TIERING' }],
    AbortIncompleteMultipartUpload: { DaysAfterInitiation: 2 },
  });
  expect(ours(now)?.NoncurrentVersionExpiration).toBeUndefined();

  expect((await api.call('PUT', '/api/dr/targets/archive', target({}))).status).toBe(200);
  expect(await rules()).toEqual([expect.objectContaining({ ID: 'logs-expire' })]);

  expect(
    (
      await api.call(
        'PUT',
        '/api/dr/targets/archive',
        target({ lifecycle: { transitions: [{ days: 0, storageClass: 'GLACIER_IR' }] } }),
      )
    ).status,
  ).toBe(200);
  expect(ours(await rules())?.Transitions).toEqual([
    expect.objectContaining({ Days: 0, StorageClass: 'GLACIER_IR' }),
  ]);
  expect((await api.call('DELETE', '/api/dr/targets/archive')).status).toBe(204);
  expect(await rules()).toEqual([expect.objectContaining({ ID: 'logs-expire' })]);
});

it('refuses rules that would break a deduplicating repository, or that S3 would refuse, naming the field', async () => {
  const refused = async (lifecycle: unknown) => {
    const response = await api.call('POST', '/api/dr/targets', target({ lifecycle }));
    expect(response.status).toBe(400);
    return { fields: fieldsOf(response), text: response.text };
  };
  const expiry = await refused({ expirationDays: 365 });
  expect(expiry.fields).toEqual(['config.lifecycle.expirationDays']);
  expect(expiry.text).toMatch(/retention deletes what no kept backup needs/);
  const glacier = await refused({ transitions: [{ days: 30, storageClass: 'GLACIER' }] });
  expect(glacier.fields).toEqual(['config.lifecycle.transitions[0].storageClass']);
  expect(glacier.text).toMatch(/need a restore/);
  expect((await refused({ transitions: [{ days: 7, storageClass: 'STANDARD_IA' }] })).fields).toEqual([
    'config.lifecycle.transitions[0].days',
  ]);
  expect(
    (
      await refused({
        transitions: [
          { days: 90, storageClass: 'STANDARD_IA' },
          { days: 30, storageClass: 'GLACIER_IR' },
        ],
      })
    ).fields,
  ).toEqual(['config.lifecycle.transitions']);
  expect(await rules()).toEqual([expect.objectContaining({ ID: 'logs-expire' })]);
});

it('saves nothing when the rule cannot be applied, and says why', async () => {
  const response = await api.call(
    'POST',
    '/api/dr/targets',
    target({
      bucket: 'no-such-bucket',
      lifecycle: { transitions: [{ days: 0, storageClass: 'GLACIER_IR' }] },
    }),
  );
  expect(response.status).toBe(502);
  expect(response.body.error.message).toMatch(
    /^the lifecycle rule of target archive could not be applied to bucket no-such-bucket: not-found: /,
  );
  expect(response.text).not.toContain(s3.credentials.secretAccessKey);
  expect((await api.call('GET', '/api/dr/targets/archive')).status).toBe(404);
});
