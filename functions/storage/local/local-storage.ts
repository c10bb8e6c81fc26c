import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, statfs } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  bytesUnder,
  StorageError,
  type ByteRange,
  type ObjectInfo,
  type PutOptions,
  type DeletingInBatches,
  type Usage,
} from '../storage.ts';
import { rangeError } from '../remote.ts';

const TEMP_SUFFIX = '.partial';

/**
 * A repository on a local (or mounted) filesystem. Writes go to `<key>.<random>.partial`, are fsynced, then
 * renamed over the key, and the directory is fsynced: a crash leaves the old object or the new one, never a
 * torn one under the final name. Leftover `.partial` files are not listed; `gc` removes them.
 */
export class LocalStorage implements DeletingInBatches {
  readonly name: string;
  private readonly root: string;

  constructor(root: string, name = `local:${root}`) {
    this.root = root;
    this.name = name;
  }

  async put(key: string, body: Readable | Buffer, options: PutOptions = {}): Promise<void> {
    const file = this.pathOf(key);
    await mkdir(dirname(file), { recursive: true }).catch((error: unknown) => {
      throw this.wrap(error, key);
    });
    const temporary = `${file}.${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`;
    try {
      const source = Buffer.isBuffer(body) ? Readable.from([body]) : body;
      await pipeline(source, createWriteStream(temporary, { flags: 'wx', mode: 0o600 }), {
        signal: options.signal,
      });
      const handle = await open(temporary, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temporary, file);
      await syncDirectory(dirname(file));
    } catch (error) {
      await rm(temporary, { force: true });
      throw this.wrap(error, key);
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable> {
    const file = this.pathOf(key);
    const info = await this.stat(key);
    if (info === undefined) throw new StorageError('not-found', this.name, key, 'no such object');
    if (range === undefined) return createReadStream(file);
    if (range.offset + range.length > info.size) throw rangeError(this.name, key, range, info.size);
    return createReadStream(file, { start: range.offset, end: range.offset + range.length - 1 });
  }

  /** One open and read (a restore reads packs a range at a time: a stream per range costs more than the read). */
  async readRange(key: string, range: ByteRange): Promise<Buffer> {
    let handle;
    try {
      handle = await open(this.pathOf(key), 'r');
    } catch (error) {
      throw this.wrap(error, key);
    }
    try {
      const body = Buffer.allocUnsafe(range.length);
      let filled = 0;
      while (filled < range.length) {
        const { bytesRead } = await handle.read(body, filled, range.length - filled, range.offset + filled);
        if (bytesRead === 0) throw rangeError(this.name, key, range, (await handle.stat()).size);
        filled += bytesRead;
      }
      return body;
    } catch (error) {
      throw this.wrap(error, key);
    } finally {
      await handle.close();
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    try {
      const info = await stat(this.pathOf(key));
      return info.isFile() ? { key, size: info.size } : undefined;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw this.wrap(error, key);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const normalized = prefix;
    // Walk from the deepest directory the prefix names, then filter by the full prefix.
    const slash = normalized.lastIndexOf('/');
    const base = slash < 0 ? '' : normalized.slice(0, slash);
    const start = base === '' ? this.root : join(this.root, ...base.split('/'));
    let entries;
    try {
      entries = await readdir(start, { withFileTypes: true, recursive: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw this.wrap(error, prefix);
    }
    for (const entry of entries) {
      if (!entry.isFile() || entry.name.endsWith(TEMP_SUFFIX)) continue;
      const key = relative(this.root, join(entry.parentPath, entry.name)).split(sep).join('/');
      if (!key.startsWith(normalized)) continue;
      const info = await this.stat(key);
      if (info) yield info;
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (const key of keys) await rm(this.pathOf(key), { force: true });
  }

  async usage(): Promise<Usage> {
    const bytesStored = await bytesUnder(this);
    try {
      const fs = await statfs(this.root);
      return { bytesStored, bytesFree: fs.bavail * fs.bsize };
    } catch {
      return { bytesStored };
    }
  }

  /** Temporary files of interrupted writes older than `olderThan` (for gc). */
  async removeLeftovers(olderThan: Date): Promise<number> {
    let removed = 0;
    let entries;
    try {
      entries = await readdir(this.root, { withFileTypes: true, recursive: true });
    } catch {
      return 0;
    }
    for (const entry of entries) {
      if (!entry.isFile() || !entry.name.endsWith(TEMP_SUFFIX)) continue;
      const file = join(entry.parentPath, entry.name);
      if ((await stat(file)).mtime < olderThan) {
        await rm(file, { force: true });
        removed++;
      }
    }
    return removed;
  }

  private pathOf(key: string): string {
    return join(this.root, ...key.split('/'));
  }

  private wrap(error: unknown, key: string): StorageError {
    if (error instanceof StorageError) return error;
    const code = (error as NodeJS.ErrnoException).code;
    const kind =
      code === 'ENOENT'
        ? 'not-found'
        : code === 'ENOSPC' || code === 'EDQUOT'
          ? 'space'
          : code === 'EACCES' || code === 'EPERM'
            ? 'permission'
            : 'other';
    // A local filesystem's error names a path on this machine, nothing from elsewhere
    return new StorageError(kind, this.name, key, (error as Error).message, { cause: error, ownWords: true });
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
