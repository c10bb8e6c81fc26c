import { generateKeyPairSync, verify, type KeyObject } from 'node:crypto';
import nock from 'nock';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GcsStorage } from '../../functions/storage/gcs/gcs-storage.ts';
import { StorageError } from '../../functions/storage/storage.ts';
import { startGcs, type TestGcs } from '../support/gcs-server.ts';
import { checked } from '../../functions/storage/facade.ts';

/**
 * Service-account authentication end to end: the library signs a JWT with the key, exchanges it at Google's
 * token endpoint for an access token, and sends that to the bucket. The token endpoint cannot be run here
 * (the library's URL is fixed to oauth2.googleapis.com and there is no internet), so nock plays it — and
 * checks each JWT's RS256 signature against the public keys of the service accounts it knows, as Google does.
 */
const WRITER_TOKEN = 'ya29.writer-token';
const READER_TOKEN = 'ya29.reader-token';

function serviceAccount(email: string) {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    publicKey,
    json: JSON.stringify({
      type: 'service_account',
      project_id: 'dr-test-project',
      private_key_id: 'key-1',
      private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      client_email: email,
      token_uri: 'https://oauth2.googleapis.com/token',
    }),
  };
}

const writer = serviceAccount('backup-writer@dr-test-project.iam.gserviceaccount.com');
const reader = serviceAccount('auditor@dr-test-project.iam.gserviceaccount.com');
/** The writer's email with a key Google never issued for it. */
const impostor = serviceAccount('backup-writer@dr-test-project.iam.gserviceaccount.com');
const known = new Map<string, { key: KeyObject; token: string }>([
  [JSON.parse(writer.json).client_email as string, { key: writer.publicKey, token: WRITER_TOKEN }],
  [JSON.parse(reader.json).client_email as string, { key: reader.publicKey, token: READER_TOKEN }],
]);

/** Whether `assertion` is a JWT signed by `account`'s key (RS256), naming it as the issuer. */
function signedBy(email: string, key: KeyObject, assertion: unknown): boolean {
  const [header, claims, signature] = (typeof assertion === 'string' ? assertion : '').split('.');
  if (!header || !claims || !signature) return false;
  const issuer = (JSON.parse(Buffer.from(claims, 'base64url').toString()) as { iss?: string }).iss;
  return (
    issuer === email &&
    verify('RSA-SHA256', Buffer.from(`${header}.${claims}`), key, Buffer.from(signature, 'base64url'))
  );
}

describe('GCS service-account authentication', () => {
  let server: TestGcs;
  beforeAll(async () => {
    server = await startGcs(['secured'], { token: WRITER_TOKEN, readOnlyTokens: [READER_TOKEN] });
    nock.disableNetConnect();
    nock.enableNetConnect('127.0.0.1');
    const google = nock('https://oauth2.googleapis.com').persist();
    for (const [email, account] of known)
      google
        .post('/token', (body: { assertion?: unknown }) => signedBy(email, account.key, body.assertion))
        .reply(200, { access_token: account.token, expires_in: 3600, token_type: 'Bearer' });
    google.post('/token').reply(400, { error: 'invalid_grant', error_description: 'Invalid JWT Signature.' });
  });
  afterAll(async () => {
    nock.cleanAll();
    nock.enableNetConnect();
    await server?.stop();
  });

  const open = (keyJson: string) =>
    new GcsStorage({
      projectId: 'dr-test-project',
      bucket: 'secured',
      prefix: 'repo',
      apiEndpoint: server.endpoint,
      keyJson,
    });

  it('writes and reads with a valid service-account key', async () => {
    const storage = open(writer.json);
    await storage.put('a/object', Buffer.from('authenticated'));
    expect((await checked(storage).read('a/object')).toString()).toBe('authenticated');
  });

  it('classifies a key Google does not know as an authentication error, without the key', async () => {
    const error = await checked(open(impostor.json))
      .read('a/object')
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    expect(error).toMatchObject({ kind: 'authentication' });
    const privateKey = JSON.parse(impostor.json).private_key as string;
    expect((error as Error).message).not.toContain(privateKey.split('\n')[1]);
  });

  it('classifies a write the account may not make as a permission error', async () => {
    const storage = open(reader.json);
    expect((await checked(storage).read('a/object')).toString()).toBe('authenticated');
    await expect(storage.put('a/other', Buffer.from('x'))).rejects.toMatchObject({ kind: 'permission' });
  });

  it('refuses a keyFile that is not a service-account key, naming neither field value', () => {
    expect(() => open('{"type":"authorized_user"}')).toThrow(/client_email or private_key/);
    expect(() => open('not json')).toThrow(/not a service-account JSON key/);
  });
});
