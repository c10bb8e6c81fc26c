import { createReadStream } from 'node:fs';
import { lstat, mkdir, open, readdir, readlink, symlink, utimes, chmod, rm } from 'node:fs/promises';
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
      yield { ...common, type: 'file', size: info.size };
    } else if (info.isSymbolicLink()) {
      yield { ...common, type: 'symlink', size: 0, target: await readlink(absolute) };
    }
  }
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

/** Writes one file from its chunks, then its mode; mtimes are set after the whole tree is written. */
export async function writeFile(
  destination: string,
  entry: FileEntry,
  chunks: AsyncIterable<Buffer>,
): Promise<void> {
  const target = safeJoin(destination, entry.path);
  await mkdir(dirname(target), { recursive: true });
  await rm(target, { force: true });
  const handle = await open(target, 'wx', 0o600);
  try {
    for await (const chunk of chunks) await handle.write(chunk);
  } finally {
    await handle.close();
  }
  await chmod(target, entry.mode);
}

export async function makeEntry(destination: string, entry: FileEntry): Promise<void> {
  const target = safeJoin(destination, entry.path);
  if (entry.type === 'dir') {
    await mkdir(target, { recursive: true });
  } else if (entry.type === 'symlink' && entry.target !== undefined) {
    await mkdir(dirname(target), { recursive: true });
    await rm(target, { force: true });
    await symlink(entry.target, target);
  }
}

/** Sets modes and mtimes, deepest first, so that writing into a directory does not move its mtime again. */
export async function finishEntries(destination: string, entries: readonly FileEntry[]): Promise<void> {
  for (const entry of [...entries].reverse()) {
    if (entry.type === 'symlink') continue;
    const target = safeJoin(destination, entry.path);
    if (entry.type === 'dir') await chmod(target, entry.mode);
    // In seconds, not as a Date: a Date keeps whole milliseconds and would drop the microseconds.
    const time = entry.mtimeMs / 1000;
    await utimes(target, time, time);
  }
}
