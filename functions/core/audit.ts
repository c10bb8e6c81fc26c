import type { DrRole } from './authz.ts';
import { createHash } from 'node:crypto';
import type { Logger } from './log.ts';
import { ConflictError } from './errors.ts';
import { Partition, type DrTable, type Page } from './store/table.ts';

/** Who made a change, and from where. */
export interface Actor {
  readonly principal: string;
  /** What the caller may do (absent: a process acting on its own, such as the dispatcher). */
  readonly role?: DrRole;
  readonly sourceIp?: string | undefined;
  readonly userAgent?: string | undefined;
}

export interface AuditEvent {
  /** What happened, as `<resource kind>.<verb>`: `target.create`, `config.replace`, `backup.download`… */
  readonly action: string;
  /** What it happened to: `target/<id>`, `config`, `schedule/<id>`. */
  readonly resource: string;
  /** A summary that never holds a secret value (field names only for secrets). */
  readonly details?: Readonly<Record<string, unknown>>;
}

export interface AuditEntry extends AuditEvent {
  readonly seq: number;
  readonly at: string;
  readonly actor: Actor;
  readonly prevHash: string;
  readonly hash: string;
}

export interface ChainCheck {
  readonly valid: boolean;
  readonly entries: number;
  readonly headHash: string;
  /** The first entry that does not fit the chain, when `valid` is false. */
  readonly firstInvalidSeq?: number;
  readonly reason?: string;
}

export const GENESIS_HASH = '0'.repeat(64);
const SEQ_DIGITS = 12;
const MAX_APPEND_ATTEMPTS = 8;

/**
 * An append-only, tamper-evident audit log in the table's AUDIT partition.
 *
 * Each entry carries the hash of the one before it, and its own hash covers its content and that link
 * (SHA-256 over canonical JSON), so changing, removing or reordering any entry breaks every later link;
 * `verify` walks the chain. Entries are appended with a conditional put on the next sequence number, so
 * concurrent writers never fork the chain: the loser re-reads the head and tries again. Each append also
 * logs the new head hash, which anchors the chain outside the table (CloudWatch Logs on AWS): truncating
 * the tail can be caught by comparing the logged head with the stored one.
 */
export class AuditLog {
  private readonly table: DrTable;
  private readonly now: () => Date;
  private readonly logger: Logger;

  constructor(table: DrTable, now: () => Date, logger: Logger) {
    this.table = table;
    this.now = now;
    this.logger = logger;
  }

  async append(actor: Actor, event: AuditEvent): Promise<AuditEntry> {
    for (let attempt = 1; attempt <= MAX_APPEND_ATTEMPTS; attempt++) {
      const head = await this.head();
      const body = {
        seq: (head?.seq ?? 0) + 1,
        at: this.now().toISOString(),
        actor: compact(actor),
        action: event.action,
        resource: event.resource,
        ...(event.details === undefined ? {} : { details: event.details }),
        prevHash: head?.hash ?? GENESIS_HASH,
      };
      const entry: AuditEntry = { ...body, hash: hashEntry(body) };
      if (await this.table.putIfAbsent({ pk: Partition.audit, sk: seqKey(entry.seq), ...entry })) {
        this.logger.info('audit appended', {
          seq: entry.seq,
          action: entry.action,
          resource: entry.resource,
          hash: entry.hash,
        });
        return entry;
      }
      // Another writer took this sequence number: back off a little and build on its entry.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 20 * attempt));
    }
    throw new ConflictError('the audit log is busy; retry the request');
  }

  /** Newest first. */
  async list(options: { limit: number; nextToken?: string | undefined }): Promise<Page<AuditEntry>> {
    const page = await this.table.query<AuditEntry & { pk?: string; sk?: string }>(Partition.audit, {
      limit: options.limit,
      nextToken: options.nextToken,
      descending: true,
    });
    return { ...page, items: page.items.map(stripKeys) };
  }

  /** Walks the whole chain, oldest first, a page at a time. */
  async verify(): Promise<ChainCheck> {
    let expectedSeq = 1;
    let prevHash = GENESIS_HASH;
    let nextToken: string | undefined;
    do {
      const page = await this.table.query<AuditEntry & { pk?: string; sk?: string }>(Partition.audit, {
        limit: 500,
        nextToken,
      });
      for (const stored of page.items) {
        const { hash, ...body } = stripKeys(stored);
        const broken = (reason: string): ChainCheck => ({
          valid: false,
          entries: expectedSeq - 1,
          headHash: prevHash,
          firstInvalidSeq: expectedSeq,
          reason,
        });
        if (body.seq !== expectedSeq) return broken(`entry ${expectedSeq} is missing (found ${body.seq})`);
        if (body.prevHash !== prevHash)
          return broken(`entry ${expectedSeq} does not link to entry ${expectedSeq - 1}`);
        if (hashEntry(body) !== hash)
          return broken(`entry ${expectedSeq} was altered (its hash does not match)`);
        prevHash = hash;
        expectedSeq++;
      }
      nextToken = page.nextToken;
    } while (nextToken !== undefined);
    return { valid: true, entries: expectedSeq - 1, headHash: prevHash };
  }

  private async head(): Promise<AuditEntry | undefined> {
    const page = await this.table.query<AuditEntry>(Partition.audit, { limit: 1, descending: true });
    return page.items[0];
  }
}

function seqKey(seq: number): string {
  return String(seq).padStart(SEQ_DIGITS, '0');
}

function stripKeys<T extends { pk?: string; sk?: string }>(item: T): Omit<T, 'pk' | 'sk'> {
  const { pk: _pk, sk: _sk, ...rest } = item;
  return rest;
}

function compact(actor: Actor): Actor {
  return JSON.parse(JSON.stringify(actor)) as Actor;
}

export function hashEntry(body: object): string {
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

/** JSON with object keys sorted at every level, so equal values always hash alike. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
