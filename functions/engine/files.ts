import { createReadStream } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, readlink, rm, symlink, utimes } from 'node:fs/promises';
import { dirname, join, relative, resolve, sep } from 'node:path';
import picomatch from 'picomatch';
import { RestoreError, SourceError } from './errors.ts';
import type { FileEntry } from './manifest.ts';

/** A filesystem entry found by `walk`, before its contents are read. */
export interface FoundEntry {
  readonly path: string;
  readonly absolute: string;
  readonly type: FileEntry['type'];
  readonly mode: number;
  readonly mtimeMs: number;
  readonly size: number;
  readonly target?: string;
  /** A regular file with more than one name (a hard link): `device:inode`, to tell where its other names are. */
  readonly linked?: string;
}

/**
 * Every directory, regular file and symlink under `root`, depth first in byte order of names (a stable order
 * keeps the manifest, and so deduplication of the file list, stable). Sockets, FIFOs and devices are skipped.
 */
export async function* walk(root: string): AsyncGenerator<FoundEntry> {
  let rootInfo;
  try {
    rootInfo = await lstat(root);
  } catch (error) {
    throw new SourceError(`cannot read the files root ${root}: ${(error as Error).message}`);
  }
  if (!rootInfo.isDirectory()) throw new SourceError(`the files root ${root} is not a directory`);
  yield* walkDir(root, root);
}

async function* walkDir(root: string, dir: string): AsyncGenerator<FoundEntry> {
  const names = (await readdir(dir)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  for (const name of names) {
    const absolute = join(dir, name);
    const info = await lstat(absolute);
    const path = relative(root, absolute).split(sep).join('/');
    const common = { path, absolute, mode: info.mode & 0o7777, mtimeMs: info.mtimeMs };
    if (info.isDirectory()) {
      yield { ...common, type: 'dir', size: 0 };
      yield* walkDir(root, absolute);
    } else if (info.isFile()) {
      yield {
        ...common,
        type: 'file',
        size: info.size,
        ...(info.nlink > 1 ? { linked: `${info.dev}:${info.ino}` } : {}),
      };
    } else if (info.isSymbolicLink()) {
      yield { ...common, type: 'symlink', size: 0, target: await readlink(absolute) };
    }
  }
}

/**
 * A guard against hard links: a file of the source that is another name of a file in one of `directories`
 * (the data directory: keys, the API token, the secret store) is refused, as a symbolic link there would be.
 * The directories are looked at only when the source has a hard link at all, and then once.
 */
export function hardLinkGuard(directories: readonly string[]): (entry: FoundEntry) => Promise<void> {
  let guarded: Promise<Map<string, string>> | undefined;
  const collect = async () => {
    const found = new Map<string, string>();
    for (const directory of directories) {
      try {
        for await (const entry of walk(directory))
          if (entry.linked !== undefined) found.set(entry.linked, entry.absolute);
      } catch (error) {
        if (!(error instanceof SourceError)) throw error; // a directory that does not exist guards nothing
      }
    }
    return found;
  };
  return async (entry) => {
    if (entry.linked === undefined) return;
    guarded ??= collect();
    const other = (await guarded).get(entry.linked);
    if (other !== undefined)
      throw new SourceError(
        `${entry.absolute} is a hard link to ${other}, which holds this program's keys: refusing to back it up`,
      );
  };
}

export function readFileStream(entry: FoundEntry): AsyncIterable<Buffer> {
  return createReadStream(entry.absolute, { highWaterMark: 256 * 1024 });
}

export function globFilter(patterns: readonly string[] | undefined): (path: string) => boolean {
  if (!patterns || patterns.length === 0) return () => true;
  const matchers = patterns.map((pattern) => picomatch(pattern, { dot: true }));
  return (path) => matchers.some((match) => match(path));
}

/** Resolves an entry's path under `destination`, refusing anything that would land outside it. */
export function safeJoin(destination: string, path: string): string {
  const target = resolve(destination, ...path.split('/'));
  const base = resolve(destination);
  if (target !== base && !target.startsWith(base + sep))
    throw new RestoreError(`refusing to restore ${JSON.stringify(path)} outside ${destination}`);
  return target;
}

/** How extraction treats modes. */
export interface ExtractOptions {
  /** Keep setuid and setgid bits (default: cleared, since the restored files belong to this process's user). */
  readonly preserveSpecialBits?: boolean;
  /**
   * The directories this extraction already made or checked (pass one set for a whole restore): each is
   * looked at once, not again for every file under it.
   */
  readonly checked?: Set<string>;
}

function modeOf(entry: FileEntry, options: ExtractOptions): number {
  return options.preserveSpecialBits ? entry.mode : entry.mode & ~0o6000;
}

/**
 * Makes the directory `path` (inside `destination`) and the ones above it, one level at a time, never through
 * a symbolic link: a link already in the destination (or one a crafted backup made earlier in the same
 * restore) would otherwise carry the files written under it anywhere on the machine.
 */
async function ensureDirectory(
  destination: string,
  path: string,
  checked = new Set<string>(),
): Promise<void> {
  if (checked.has(path)) return;
  const base = resolve(destination);
  // The destination itself is the operator's choice (checked by the caller); below it, nothing is followed
  if (!checked.has(base)) {
    await mkdir(base, { recursive: true });
    checked.add(base);
  }
  const parts = relative(base, path)
    .split(sep)
    .filter((part) => part !== '');
  let current = base;
  for (const part of parts) {
    current = join(current, part);
    if (checked.has(current)) continue;
    const info = await lstat(current).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    if (info === undefined) await mkdir(current);
    else if (info.isSymbolicLink())
      throw new RestoreError(
        `refusing to restore through the symbolic link ${current} (it leads out of ${destination})`,
      );
    else if (!info.isDirectory())
      throw new RestoreError(`refusing to restore into ${current}: it exists and is not a directory`);
    checked.add(current);
  }
}

/** Writes one file from its chunks, then its mode; mtimes are set after the whole tree is written. */
export async function writeFile(
  destination: string,
  entry: FileEntry,
  chunks: AsyncIterable<Buffer>,
  options: ExtractOptions = {},
): Promise<void> {
  const target = safeJoin(destination, entry.path);
  await ensureDirectory(destination, dirname(target), options.checked);
  // A link (or a hard link to a file elsewhere) at the name is replaced, never written through
  await rm(target, { force: true });
  const handle = await open(target, 'wx', 0o600);
  try {
    for await (const chunk of chunks) await handle.write(chunk);
    await handle.chmod(modeOf(entry, options));
  } finally {
    await handle.close();
  }
}

export async function makeEntry(
  destination: string,
  entry: FileEntry,
  options: ExtractOptions = {},
): Promise<void> {
  const target = safeJoin(destination, entry.path);
  if (entry.type === 'dir') {
    await ensureDirectory(destination, target, options.checked);
  } else if (entry.type === 'symlink' && entry.target !== undefined) {
    await ensureDirectory(destination, dirname(target), options.checked);
    await rm(target, { force: true });
    await symlink(entry.target, target);
    // A link now: nothing is ever written through it
    options.checked?.delete(target);
  }
}

/** Sets modes and mtimes, deepest first, so that writing into a directory does not move its mtime again. */
export async function finishEntries(
  destination: string,
  entries: readonly FileEntry[],
  options: ExtractOptions = {},
): Promise<void> {
  for (const entry of [...entries].reverse()) {
    if (entry.type === 'symlink') continue;
    const target = safeJoin(destination, entry.path);
    // Never through a link: what is there now must be what this restore made
    const info = await lstat(target);
    if (info.isSymbolicLink() || (entry.type === 'dir') !== info.isDirectory()) continue;
    if (entry.type === 'dir') await chmod(target, modeOf(entry, options));
    // In seconds, not as a Date: a Date keeps whole milliseconds and would drop the microseconds.
    const time = entry.mtimeMs / 1000;
    await utimes(target, time, time);
  }
}
