import { realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Which directories a files source may read and a file restore may write. An API token must not be a key to
 * the machine: without this, a files source pointed at the data directory backed up the master key, the
 * secret store and the API token, and a download handed them out.
 */
export interface PathPolicy {
  /** The directories files may be read from and restored into (DR_FILES_ROOTS); none configured: none. */
  readonly roots: readonly string[];
  /** Never read or written, even under a root: the data directory, the program's own files. */
  readonly forbidden: readonly string[];
}

/** This program's own files (functions/ and everything beside it). */
export const PROGRAM_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** DR_FILES_ROOTS: absolute directories separated by ':'. */
export function pathPolicyFromEnv(
  forbidden: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): PathPolicy {
  const roots = (env.DR_FILES_ROOTS ?? '')
    .split(':')
    .map((root) => root.trim())
    .filter((root) => root !== '');
  for (const root of roots)
    if (!isAbsolute(root)) throw new Error(`DR_FILES_ROOTS: ${root} is not an absolute path`);
  return { roots, forbidden: [...forbidden, PROGRAM_DIR] };
}

const within = (path: string, parent: string) =>
  path === parent || path.startsWith(parent.endsWith(sep) ? parent : parent + sep);

/** The real path of the deepest existing ancestor, with the rest appended (for a directory still to be made). */
async function realOrPlanned(path: string): Promise<string> {
  let existing = path;
  const rest: string[] = [];
  for (;;) {
    try {
      return join(await realpath(existing), ...rest.reverse());
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      const parent = dirname(existing);
      if (parent === existing) return path;
      rest.push(existing.slice(parent.length).replace(/^\//, ''));
      existing = parent;
    }
  }
}

/**
 * Why `path` may not be used as a files source or restore destination under `policy`, or undefined when it
 * may: it must be absolute, without `..`, reached through no symbolic link, under a configured root, and
 * neither inside nor around a forbidden directory.
 */
export async function pathProblem(
  path: string,
  policy: PathPolicy = { roots: [], forbidden: [PROGRAM_DIR] },
): Promise<string | undefined> {
  if (!isAbsolute(path)) return 'must be an absolute path';
  if (path.split('/').includes('..')) return "must not contain a '..' segment";
  const normal = resolve(path);
  const real = await realOrPlanned(normal);
  if (real !== normal) return `goes through a symbolic link (it is really ${real})`;
  for (const forbidden of policy.forbidden) {
    const guarded = await realOrPlanned(resolve(forbidden));
    if (within(real, guarded)) return `is inside ${guarded}, which holds this program's own files or keys`;
    if (within(guarded, real)) return `contains ${guarded}, which holds this program's own files or keys`;
  }
  if (policy.roots.length === 0)
    return 'is not under a files root: set DR_FILES_ROOTS to the directories files may be backed up from and restored into';
  for (const root of policy.roots) if (within(real, await realOrPlanned(resolve(root)))) return undefined;
  return `is not under a files root (${policy.roots.join(', ')}); DR_FILES_ROOTS sets them`;
}

/** Why a command hook's script cannot be run here, or its real path. */
export async function hookScript(
  cp: { readonly hooksDir?: string | undefined },
  script: string,
): Promise<string> {
  if (!cp.hooksDir) throw new Error('command hooks run only in the local runtime with DR_HOOKS_DIR set');
  const root = await realpath(cp.hooksDir);
  const file = await realpath(join(root, script)).catch(() => {
    throw new Error(`${script} is not in DR_HOOKS_DIR`);
  });
  if (!file.startsWith(root + sep)) throw new Error(`${script} leads out of DR_HOOKS_DIR`);
  const info = await stat(file);
  if (!info.isFile() || (info.mode & 0o111) === 0) throw new Error(`${script} is not an executable file`);
  return file;
}
