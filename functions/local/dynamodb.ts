import {
  CreateTableCommand,
  DescribeTableCommand,
  DynamoDBClient,
  ResourceNotFoundException,
} from '@aws-sdk/client-dynamodb';
import type { AddressInfo } from 'node:net';
import dynalite from 'dynalite';
import { createDocumentClient } from '../aws/dynamodb-table.ts';
import { TABLE_KEYS } from '../core/store/table.ts';

/**
 * The local runtime's store: dynalite, a DynamoDB-compatible server (conditional writes, queries, indexes)
 * on loopback, persisted in LevelDB under the data directory — or in memory when `path` is omitted.
 */
export interface LocalDynamo {
  readonly endpoint: string;
  readonly documentClient: ReturnType<typeof createDocumentClient>;
  close(): Promise<void>;
}

const LOCAL_CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' };

export async function startLocalDynamo(options: { path?: string; tableName: string }): Promise<LocalDynamo> {
  const server = dynalite({
    ...(options.path === undefined ? {} : { path: options.path }),
    createTableMs: 0,
    deleteTableMs: 0,
    updateTableMs: 0,
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const endpoint = `http://127.0.0.1:${port}`;
  const config = { endpoint, region: 'local', credentials: LOCAL_CREDENTIALS };
  await ensureTable(new DynamoDBClient(config), options.tableName);
  return {
    endpoint,
    documentClient: createDocumentClient(config),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Creates the table with the same key schema as the CDK stack, unless it exists already. */
async function ensureTable(client: DynamoDBClient, tableName: string): Promise<void> {
  try {
    await client.send(new DescribeTableCommand({ TableName: tableName }));
    return;
  } catch (error) {
    if (!(error instanceof ResourceNotFoundException)) throw error;
  }
  await client.send(
    new CreateTableCommand({
      TableName: tableName,
      KeySchema: [
        { AttributeName: TABLE_KEYS.partitionKey, KeyType: 'HASH' },
        { AttributeName: TABLE_KEYS.sortKey, KeyType: 'RANGE' },
      ],
      AttributeDefinitions: [
        { AttributeName: TABLE_KEYS.partitionKey, AttributeType: 'S' },
        { AttributeName: TABLE_KEYS.sortKey, AttributeType: 'S' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
    }),
  );
}
