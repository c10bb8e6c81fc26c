import {
  CreateSecretCommand,
  DeleteSecretCommand,
  GetSecretValueCommand,
  PutSecretValueCommand,
  ResourceExistsException,
  ResourceNotFoundException,
  SecretsManagerClient,
} from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import { beforeEach, describe, expect, it } from 'vitest';
import { SecretStoreError } from '../../functions/core/errors.ts';
import { AwsSecretStore } from '../../functions/aws/secret-store.ts';

const sm = mockClient(SecretsManagerClient);
const store = () =>
  new AwsSecretStore({ client: new SecretsManagerClient({ region: 'us-east-1' }), kmsKeyId: 'key-id' });

beforeEach(() => {
  sm.reset();
});

describe('AwsSecretStore', () => {
  it('creates a secret encrypted with the stack key', async () => {
    sm.on(CreateSecretCommand).resolves({});
    await store().put('dr/target/t1/abc', { password: 'p' });
    const [call] = sm.commandCalls(CreateSecretCommand);
    expect(call!.args[0].input).toMatchObject({
      Name: 'dr/target/t1/abc',
      SecretString: '{"password":"p"}',
      KmsKeyId: 'key-id',
    });
  });

  it('puts a new value when the secret exists', async () => {
    sm.on(CreateSecretCommand).rejects(new ResourceExistsException({ message: 'exists', $metadata: {} }));
    sm.on(PutSecretValueCommand).resolves({});
    await store().put('n', { password: 'p2' });
    expect(sm.commandCalls(PutSecretValueCommand)[0]!.args[0].input).toEqual({
      SecretId: 'n',
      SecretString: '{"password":"p2"}',
    });
  });

  it('reads values, and undefined for a missing secret', async () => {
    sm.on(GetSecretValueCommand, { SecretId: 'present' }).resolves({ SecretString: '{"a":"b"}' });
    sm.on(GetSecretValueCommand, { SecretId: 'absent' }).rejects(
      new ResourceNotFoundException({ message: 'no', $metadata: {} }),
    );
    expect(await store().get('present')).toEqual({ a: 'b' });
    expect(await store().get('absent')).toBeUndefined();
  });

  it('deletes with a recovery window, and ignores a missing secret', async () => {
    sm.on(DeleteSecretCommand)
      .rejectsOnce(new ResourceNotFoundException({ message: 'no', $metadata: {} }))
      .resolves({});
    await store().delete('gone');
    await store().delete('there');
    expect(sm.commandCalls(DeleteSecretCommand)[1]!.args[0].input).toEqual({
      SecretId: 'there',
      RecoveryWindowInDays: 7,
    });
  });

  it('wraps other failures without the value', async () => {
    const denied = Object.assign(new Error('User is not authorized'), { name: 'AccessDeniedException' });
    sm.on(CreateSecretCommand).rejects(denied);
    const error = await store()
      .put('n', { password: 'super-secret-value' })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(SecretStoreError);
    expect((error as Error).message).toBe(
      'secret n could not be stored (AccessDeniedException: User is not authorized)',
    );
    expect((error as SecretStoreError).expose).toBe(false);
  });
});
