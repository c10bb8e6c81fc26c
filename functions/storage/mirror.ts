import type { Readable } from 'node:stream';
import {
  collect,
  publicReason,
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type Storage,
  type Usage,
} from './storage.ts';

/**
 * One repository written to several targets at once: the backup reads its source once and every object it
 * writes goes to every member. Each member has its own queue, worked in order, so
 *
 * - a slow member does not hold the others back until its queue holds `queueBytes` (then the writer waits:
 *   memory stays bounded — an object is held once, however many members still have to write it);
 * - a member that fails is dropped with its reason and the others go on; only when every member has failed
 *   does a write fail;
 * - objects reach each member in the order they were written, so a member that received the manifest
 *   (written last) holds everything the manifest needs.
 *
 * Writes resolve once queued; `flush()` waits for every member and reports each one. Reads go to the first
 * member still working, after its queue has drained (a writer reads its own writes).
 */
export interface MirrorMember {
  readonly id: string;
  readonly storage: Storage;
}

export interface MirrorMemberResult {
  readonly id: string;
  readonly ok: boolean;
  /** Bytes this member wrote. */
  readonly bytesWritten: number;
  /** When its queue last drained (the member's end of the backup). */
  readonly finishedAt?: Date;
  /** What an API answer may say of its failure (a kind and a short reason, never the remote side's words). */
  readonly error?: { readonly kind: string; readonly message: string };
  /** The failure itself, for the log. */
  readonly failure?: StorageError;
}

export interface MirrorOptions {
  /** Bytes queued per member before writers wait (default 64 MiB). */
  readonly queueBytes?: number;
  readonly now?: () => Date;
}

class Member {
  readonly id: string;
  readonly storage: Storage;
  failure: StorageError | undefined;
  bytesWritten = 0;
  finishedAt: Date | undefined;
  private queuedBytes = 0;
  private tail: Promise<void> = Promise.resolve();
  private waiters: (() => void)[] = [];

  constructor(member: MirrorMember) {
    this.id = member.id;
    this.storage = member.storage;
  }

  /** Waits until `size` more bytes fit (an empty queue always takes one object). */
  async admit(size: number, limit: number): Promise<void> {
    while (!this.failure && this.queuedBytes > 0 && this.queuedBytes + size > limit)
      await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** Runs `job` after everything queued before it; resolves when it ran (never rejects: failures mark the member). */
  enqueue(size: number, job: () => Promise<void>, now: () => Date): Promise<void> {
    this.queuedBytes += size;
    const run = this.tail.then(async () => {
      if (!this.failure) {
        try {
          await job();
          this.bytesWritten += size;
        } catch (error) {
          this.failure =
            error instanceof StorageError
              ? error
              : new StorageError('other', this.storage.name, undefined, (error as Error).message, {
                  cause: error,
                });
        }
      }
      this.queuedBytes -= size;
      if (this.queuedBytes === 0) this.finishedAt = now();
      for (const wake of this.waiters.splice(0)) wake();
    });
    this.tail = run;
    return run;
  }

  idle(): Promise<void> {
    return this.tail;
  }
}

export class MirrorStorage implements Storage {
  readonly name: string;
  private readonly members: Member[];
  private readonly queueBytes: number;
  private readonly now: () => Date;

  constructor(members: readonly MirrorMember[], options: MirrorOptions = {}) {
    if (members.length === 0) throw new Error('a mirror needs at least one member');
    this.members = members.map((member) => new Member(member));
    this.name =
      members.length === 1 ? members[0]!.storage.name : `mirror(${members.map((m) => m.id).join(', ')})`;
    this.queueBytes = options.queueBytes ?? 64 * 1024 * 1024;
    this.now = options.now ?? (() => new Date());
  }

  /** Marks a member failed before or during a run (it holds another repository, say). */
  exclude(id: string, error: StorageError): void {
    const member = this.members.find((candidate) => candidate.id === id);
    if (member && !member.failure) member.failure = error;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    // Held once, shared by every member's queue: the engine writes packs (8 MiB) and small objects.
    const data = Buffer.isBuffer(body) ? body : await collect(body);
    const live = this.live(key);
    await Promise.all(live.map((member) => member.admit(data.length, this.queueBytes)));
    for (const member of this.live(key))
      void member.enqueue(data.length, () => member.storage.put(key, data, options), this.now);
  }

  async delete(keys: readonly string[]): Promise<void> {
    await Promise.all(
      this.live(keys[0]).map((member) => member.enqueue(0, () => member.storage.delete(keys), this.now)),
    );
    this.live(keys[0]); // throws when the delete failed everywhere
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    return (await this.reader(key)).get(key, range);
  }

  async read(key: string, range?: ByteRange): Promise<Buffer> {
    return (await this.reader(key)).read(key, range);
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    return (await this.reader(key)).stat(key);
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    yield* (await this.reader(prefix)).list(prefix);
  }

  async usage(): Promise<Usage> {
    return (await this.reader(undefined)).usage();
  }

  /** Waits for every member's queue and reports each: written completely, or failed and why. */
  async flush(): Promise<MirrorMemberResult[]> {
    await Promise.all(this.members.map((member) => member.idle()));
    return this.members.map((member) => ({
      id: member.id,
      ok: member.failure === undefined,
      bytesWritten: member.bytesWritten,
      ...(member.finishedAt ? { finishedAt: member.finishedAt } : {}),
      ...(member.failure ? { error: publicReason(member.failure), failure: member.failure } : {}),
    }));
  }

  async close(): Promise<void> {
    await Promise.all(
      this.members.map(async (member) => {
        await member.storage.close?.().catch(() => undefined);
      }),
    );
  }

  private live(key: string | undefined): Member[] {
    const live = this.members.filter((member) => !member.failure);
    if (live.length === 0) {
      const reasons = this.members.map((member) => `${member.id}: ${member.failure?.message ?? 'failed'}`);
      throw new StorageError('other', this.name, key, `every target failed (${reasons.join('; ')})`);
    }
    return live;
  }

  private async reader(key: string | undefined): Promise<Storage> {
    for (;;) {
      const first = this.live(key)[0]!;
      await first.idle();
      if (!first.failure) return first.storage;
    }
  }
}
