import { z } from 'zod';
import { issue, text, type TargetDriver } from '../driver.ts';
import { httpUrl, objectPrefix, secret } from '../fields.ts';

const azureConfig = z.strictObject({
  accountName: z.string().regex(/^[a-z0-9]{3,24}$/, { error: 'must be 3-24 lowercase letters and digits' }),
  accountKey: secret,
  sasToken: secret,
  connectionString: secret,
  containerName: z.string().regex(/^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/, {
    error:
      'must be 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit',
  }),
  region: z
    .string()
    .regex(/^[a-z0-9]{2,40}$/, { error: 'must be an Azure region such as eastus' })
    .optional(),
  prefix: objectPrefix.optional(),
  accessTier: z.enum(['Hot', 'Cool', 'Cold', 'Archive']).optional(),
  /** For Azurite or sovereign clouds; defaults to https://<accountName>.blob.core.windows.net. */
  endpoint: httpUrl.optional(),
});

/** Azure Blob Storage. */
export const azureDriver = {
  type: 'AZURE',
  config: azureConfig,
  secretFields: ['accountKey', 'sasToken', 'connectionString'],
  destinationFields: ['accountName', 'containerName', 'endpoint'],
  requirements(_config, secrets) {
    return ['accountKey', 'sasToken', 'connectionString'].some((field) => secrets.has(field))
      ? []
      : [issue('accountKey', 'one of accountKey, sasToken or connectionString is required')];
  },
  async open(spec, secrets, opening) {
    const { AzureStorage } = await import('./azure-storage.ts');
    const config = spec.config;
    const accountKey = secrets.accountKey ?? text(config.accountKey);
    const sasToken = secrets.sasToken ?? text(config.sasToken);
    const connectionString = secrets.connectionString ?? text(config.connectionString);
    return new AzureStorage({
      accountName: String(config.accountName),
      containerName: String(config.containerName),
      ...(accountKey ? { accountKey } : {}),
      ...(sasToken ? { sasToken } : {}),
      ...(connectionString ? { connectionString } : {}),
      ...(text(config.endpoint) ? { endpoint: text(config.endpoint)! } : {}),
      ...(text(config.prefix) ? { prefix: text(config.prefix)! } : {}),
      ...(text(config.accessTier) ? { accessTier: text(config.accessTier) as 'Hot' } : {}),
      ...(spec.name ? { name: spec.name } : {}),
      ...(opening.egress ? { egress: opening.egress } : {}),
    });
  },
} satisfies TargetDriver;
