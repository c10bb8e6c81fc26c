import {
  CreateSecretCommand,
  DeleteSecretCommand,
  GetSecretValueCommand,
  PutSecretValueCommand,
  ResourceExistsException,
  ResourceNotFoundException,
  SecretsManagerClient,
} from '@aws-sdk/client-secrets-manager';
import { SecretStoreError } from '../core/errors.ts';
import type { SecretStore } from '../core/secrets/secret-store.ts';

export interface AwsSecretStoreOptions {
  /** Customer-managed KMS key that encrypts the secrets (the stack's key). */
  readonly kmsKeyId?: string | undefined;
  /** Days a deleted secret can still be recovered (7-30). */
  readonly recoveryWindowDays?: number;
  readonly client?: SecretsManagerClient;
}

/**
 * Secrets Manager: one secret per owner (a target, the DR config), holding its secret fields as a JSON map.
 * Names are `<prefix>/<kind>/<id>`, which the API function's IAM policy is scoped to.
 */
export class AwsSecretStore implements SecretStore {
  private readonly client: SecretsManagerClient;
  private readonly kmsKeyId: string | undefined;
  private readonly recoveryWindowDays: number;

  constructor(options: AwsSecretStoreOptions = {}) {
    this.client = options.client ?? new SecretsManagerClient({});
    this.kmsKeyId = options.kmsKeyId;
    this.recoveryWindowDays = options.recoveryWindowDays ?? 7;
  }

  async put(name: string, values: Readonly<Record<string, string>>): Promise<void> {
    const SecretString = JSON.stringify(values);
    try {
      await this.client.send(
        new CreateSecretCommand({
          Name: name,
          SecretString,
          KmsKeyId: this.kmsKeyId,
          Description: 'DR Automation credential (managed by the /api/dr API)',
          Tags: [{ Key: 'managed-by', Value: 'dr-automation' }],
        }),
      );
    } catch (error) {
      if (!(error instanceof ResourceExistsException)) throw wrap('stored', name, error);
      try {
        await this.client.send(new PutSecretValueCommand({ SecretId: name, SecretString }));
      } catch (putError) {
        throw wrap('stored', name, putError);
      }
    }
  }

  async get(name: string): Promise<Record<string, string> | undefined> {
    try {
      const result = await this.client.send(new GetSecretValueCommand({ SecretId: name }));
      return result.SecretString === undefined
        ? undefined
        : (JSON.parse(result.SecretString) as Record<string, string>);
    } catch (error) {
      if (error instanceof ResourceNotFoundException) return undefined;
      throw wrap('read', name, error);
    }
  }

  async delete(name: string): Promise<void> {
    try {
      await this.client.send(
        new DeleteSecretCommand({ SecretId: name, RecoveryWindowInDays: this.recoveryWindowDays }),
      );
    } catch (error) {
      if (error instanceof ResourceNotFoundException) return;
      throw wrap('deleted', name, error);
    }
  }
}

/** Keeps the SDK error's name and message (they never carry the value) and drops the request. */
function wrap(verb: string, name: string, error: unknown): SecretStoreError {
  const detail = error instanceof Error ? `${error.name}: ${error.message}` : 'unknown error';
  return new SecretStoreError(`secret ${name} could not be ${verb} (${detail})`);
}
