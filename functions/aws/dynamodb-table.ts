import {
  ConditionalCheckFailedException,
  DynamoDBClient,
  type DynamoDBClientConfig,
} from '@aws-sdk/client-dynamodb';
import {
  DeleteCommand,
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  type NativeAttributeValue,
} from '@aws-sdk/lib-dynamodb';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { ConflictError, ValidationError } from '../core/errors.ts';
import {
  Partition,
  type DrTable,
  type Page,
  type PartitionKey,
  type QueryOptions,
  type StoredItem,
} from '../core/store/table.ts';

export interface TableOptions {
  readonly tableName: string;
  /** Replaces the document client (tests, the local runtime). */
  readonly client?: DynamoDBDocumentClient;
  readonly clientConfig?: DynamoDBClientConfig;
}

export function createDocumentClient(config: DynamoDBClientConfig = {}): DynamoDBDocumentClient {
  return DynamoDBDocumentClient.from(new DynamoDBClient(config), {
    marshallOptions: { removeUndefinedValues: true, convertClassInstanceToMap: false },
  });
}

/** The control plane's table on DynamoDB (on AWS) or a DynamoDB-compatible local store. */
export class DynamoTable implements DrTable {
  readonly tableName: string;
  private readonly client: DynamoDBDocumentClient;

  constructor(options: TableOptions) {
    this.tableName = options.tableName;
    this.client = options.client ?? createDocumentClient(options.clientConfig);
  }

  async get<T>(pk: PartitionKey, sk: string): Promise<StoredItem<T> | undefined> {
    const result = await this.client.send(
      new GetCommand({ TableName: this.tableName, Key: { pk, sk }, ConsistentRead: true }),
    );
    return result.Item as StoredItem<T> | undefined;
  }

  /**
   * Creates an item that must not exist yet.
   * @throws ConflictError when an item with this key exists.
   */
  async create<T>(
    pk: PartitionKey,
    sk: string,
    data: T,
    now: Date,
    conflictMessage: string,
  ): Promise<StoredItem<T>> {
    const at = now.toISOString();
    const item: StoredItem<T> = { pk, sk, version: 1, createdAt: at, updatedAt: at, data };
    await this.conditional(
      new PutCommand({
        TableName: this.tableName,
        Item: item,
        ConditionExpression: 'attribute_not_exists(pk)',
      }),
      conflictMessage,
    );
    return item;
  }

  /**
   * Replaces an item's data if its stored version is still `expectedVersion` (optimistic concurrency).
   * @throws ConflictError when the item changed (or vanished) since it was read.
   */
  async replace<T>(current: StoredItem<unknown>, data: T, now: Date): Promise<StoredItem<T>> {
    const item: StoredItem<T> = {
      pk: current.pk,
      sk: current.sk,
      version: current.version + 1,
      createdAt: current.createdAt,
      updatedAt: now.toISOString(),
      data,
    };
    await this.conditional(
      new PutCommand({
        TableName: this.tableName,
        Item: item,
        ConditionExpression: 'version = :expected',
        ExpressionAttributeValues: { ':expected': current.version },
      }),
      `${current.sk} was changed by another request; read it again and retry`,
    );
    return item;
  }

  /** Writes an item whatever is there (for items that have no concurrent writers). */
  async putIfAbsent(item: Record<string, NativeAttributeValue>): Promise<boolean> {
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.tableName,
          Item: item,
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      );
      return true;
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException) return false;
      throw error;
    }
  }

  /** Deletes an item if its version is still the one that was read. */
  async delete(current: StoredItem<unknown>): Promise<void> {
    await this.conditional(
      new DeleteCommand({
        TableName: this.tableName,
        Key: { pk: current.pk, sk: current.sk },
        ConditionExpression: 'version = :expected',
        ExpressionAttributeValues: { ':expected': current.version },
      }),
      `${current.sk} was changed by another request; read it again and retry`,
    );
  }

  /** One page of a partition, in sort-key order (or reversed), with a signed token for the next one. */
  async query<T>(pk: PartitionKey, options: QueryOptions = {}): Promise<Page<T>> {
    const { nextToken, ...rest } = options;
    const after = nextToken === undefined ? options.after : decodeKey(await this.openToken(nextToken), pk).sk;
    const page = await this.page<T>(pk, { ...rest, ...(after === undefined ? {} : { after }) });
    return page.last === undefined
      ? { items: page.items }
      : { items: page.items, nextToken: await this.sealToken(JSON.stringify({ pk, sk: page.last })) };
  }

  /** One page and the sort key it ends at (for loops inside the service: no token to sign and check). */
  private async page<T>(
    pk: PartitionKey,
    options: { limit?: number; descending?: boolean; after?: string; prefix?: string },
  ): Promise<{ items: T[]; last?: string }> {
    const result = await this.client.send(
      new QueryCommand({
        TableName: this.tableName,
        KeyConditionExpression:
          options.prefix === undefined ? 'pk = :pk' : 'pk = :pk AND begins_with(sk, :prefix)',
        ExpressionAttributeValues: {
          ':pk': pk,
          ...(options.prefix === undefined ? {} : { ':prefix': options.prefix }),
        },
        ScanIndexForward: !options.descending,
        Limit: options.limit,
        ExclusiveStartKey: options.after === undefined ? undefined : { pk, sk: options.after },
        ConsistentRead: true,
      }),
    );
    const items = (result.Items ?? []) as T[];
    const last = result.LastEvaluatedKey?.sk as string | undefined;
    return last === undefined ? { items } : { items, last };
  }

  /** Every item of a partition (for small collections: targets, schedules). */
  async queryAll<T>(pk: PartitionKey): Promise<T[]> {
    const all: T[] = [];
    let after: string | undefined;
    do {
      const page = await this.page<T>(pk, after === undefined ? {} : { after });
      all.push(...page.items);
      after = page.last;
    } while (after !== undefined);
    return all;
  }

  /**
   * A pagination token for `payload`: the payload and an HMAC of it under the table's token key, so that a
   * token a client sends back can be checked before it reaches a query (a forged one is a 400, never a 500).
   */
  async sealToken(payload: string): Promise<string> {
    const key = await this.tokenKey();
    return `${Buffer.from(payload, 'utf8').toString('base64url')}.${tokenMac(key, payload)}`;
  }

  /** The payload of a token this table sealed; anything else is a 400 naming `field`. */
  async openToken(token: string, field = 'nextToken'): Promise<string> {
    const invalid = () => ValidationError.forField(field, 'is not a token this API returned');
    const [body, mac, extra] = token.split('.');
    if (body === undefined || mac === undefined || extra !== undefined || token.length > 4096)
      throw invalid();
    const payload = Buffer.from(body, 'base64url').toString('utf8');
    const expected = Buffer.from(tokenMac(await this.tokenKey(), payload));
    const given = Buffer.from(mac);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid();
    return payload;
  }

  private tokenKeyLoad: Promise<Buffer> | undefined;

  /** The table's token key: made once (first writer wins), read once per process. */
  private tokenKey(): Promise<Buffer> {
    this.tokenKeyLoad ??= (async () => {
      const read = async () => (await this.get<{ key: string }>(Partition.meta, TOKEN_KEY))?.data.key;
      let key = await read();
      if (key === undefined) {
        const at = new Date().toISOString();
        await this.putIfAbsent({
          pk: Partition.meta,
          sk: TOKEN_KEY,
          version: 1,
          createdAt: at,
          updatedAt: at,
          data: { key: randomBytes(32).toString('base64') },
        });
        key = await read();
      }
      return Buffer.from(key!, 'base64');
    })().catch((error: unknown) => {
      this.tokenKeyLoad = undefined;
      throw error;
    });
    return this.tokenKeyLoad;
  }

  private async conditional(command: PutCommand | DeleteCommand, conflictMessage: string): Promise<void> {
    try {
      if (command instanceof PutCommand) await this.client.send(command);
      else await this.client.send(command);
    } catch (error) {
      if (error instanceof ConditionalCheckFailedException)
        throw new ConflictError(conflictMessage, { cause: error });
      throw error;
    }
  }
}

const TOKEN_KEY = 'page-token-key';

function tokenMac(key: Buffer, payload: string): string {
  return createHmac('sha256', key).update(payload).digest('base64url').slice(0, 32);
}

/** The start key inside a token: it must be of this partition (a token of another list is refused). */
function decodeKey(payload: string, pk: string): Record<string, string> {
  const invalid = () => ValidationError.forField('nextToken', 'is not a token of this list');
  let parsed: unknown;
  try {
    parsed = JSON.parse(payload);
  } catch {
    throw invalid();
  }
  if (typeof parsed !== 'object' || parsed === null) throw invalid();
  const { pk: tokenPk, sk, ...rest } = parsed as Record<string, unknown>;
  if (tokenPk !== pk || typeof sk !== 'string' || sk === '' || Object.keys(rest).length > 0) throw invalid();
  return { pk: tokenPk, sk };
}
