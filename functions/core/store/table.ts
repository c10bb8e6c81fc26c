/**
 * The single table that holds the control plane's state (DynamoDB on AWS, a local DynamoDB-compatible store
 * on one machine: aws/dynamodb-table.ts implements it for both). The key design and every access pattern
 * are documented in docs/store.md; `TABLE_KEYS` is shared with the CDK stack and the local runtime so the
 * three cannot drift apart.
 */
export const TABLE_KEYS = { partitionKey: 'pk', sortKey: 'sk' } as const;

/** Partition keys: one partition per entity collection (small collections, listed whole). */
export const Partition = {
  /** The table's own settings: the key that signs pagination tokens (sort key `page-token-key`). */
  meta: 'META',
  config: 'CONFIG',
  target: 'TARGET',
  schedule: 'SCHEDULE',
  audit: 'AUDIT',
  /** The backup catalog: one item per backup, sort key = backup id (time-ordered). */
  backup: 'BACKUP',
  /** The run in progress of each schedule (sort key = schedule id): at most one, with its heartbeat. */
  run: 'RUN',
  /** Claimed, missed and skipped firings of schedules (sort key = <schedule id>#<firing time>). */
  firing: 'FIRING',
  /** How far the dispatcher has evaluated each schedule (sort key = schedule id). */
  cursor: 'CURSOR',
  /** Download exports under way or failed on AWS (sort key = backup id). */
  export: 'EXPORT',
  /** Restores (sort key = restore id, time-ordered). */
  restore: 'RESTORE',
  /** DR tests (sort key = test id, time-ordered). */
  drTest: 'DRTEST',
  /** Failovers of the primary (sort key = failover id, time-ordered). */
  failover: 'FAILOVER',
  /** Alert episodes (sort key = the condition's key): whether one is open, since when. */
  alert: 'ALERT',
  /**
   * A workflow step handed to a Fargate task (sort key = a random id): the execution's state it runs on,
   * then its output or error, until the step after it collects them.
   */
  step: 'STEP',
} as const;
export type PartitionKey = (typeof Partition)[keyof typeof Partition];

/** A stored entity: its public body under `data`, plus bookkeeping. */
export interface StoredItem<T> {
  readonly pk: string;
  readonly sk: string;
  readonly version: number;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly data: T;
}

export interface Page<T> {
  readonly items: T[];
  readonly nextToken?: string;
}

export interface QueryOptions {
  readonly limit?: number;
  readonly nextToken?: string | undefined;
  readonly descending?: boolean;
  /** Start after this sort key (instead of a token). */
  readonly after?: string;
  /** Only sort keys that begin with this. */
  readonly prefix?: string;
}

/** What the services need of the table: versioned items, pages, signed pagination tokens. */
export interface DrTable {
  readonly tableName: string;
  get<T>(pk: PartitionKey, sk: string): Promise<StoredItem<T> | undefined>;
  /**
   * Creates an item that must not exist yet.
   * @throws ConflictError when an item with this key exists.
   */
  create<T>(
    pk: PartitionKey,
    sk: string,
    data: T,
    now: Date,
    conflictMessage: string,
  ): Promise<StoredItem<T>>;
  /**
   * Replaces an item's data if its stored version is still the one read (optimistic concurrency).
   * @throws ConflictError when the item changed (or vanished) since it was read.
   */
  replace<T>(current: StoredItem<unknown>, data: T, now: Date): Promise<StoredItem<T>>;
  /** Writes a raw item unless one with its key exists; whether it was written. */
  putIfAbsent(item: Record<string, unknown>): Promise<boolean>;
  /** Deletes an item if its version is still the one that was read. */
  delete(current: StoredItem<unknown>): Promise<void>;
  /** One page of a partition, in sort-key order (or reversed), with a signed token for the next one. */
  query<T>(pk: PartitionKey, options?: QueryOptions): Promise<Page<T>>;
  /** Every item of a partition (for small collections: targets, schedules). */
  queryAll<T>(pk: PartitionKey): Promise<T[]>;
  /** A pagination token for `payload`, signed so that a forged one is a 400, never a 500. */
  sealToken(payload: string): Promise<string>;
  /** The payload of a token this table sealed; anything else is a 400 naming `field`. */
  openToken(token: string, field?: string): Promise<string>;
}
