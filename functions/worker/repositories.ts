import type { MasterKey } from '../engine/crypto.ts';
import { keys, listKeys, Repository } from '../engine/repository.ts';
import type { MirrorMember } from '../storage/mirror.ts';
import { isNotFound, StorageError } from '../storage/storage.ts';

/**
 * Makes every target of a run hold the same repository (same id, keys and chunking), so that one read of the
 * source can be written to all of them:
 * - no target has one yet: a new repository is created on all of them;
 * - some have it: its `config` and key files are copied to the ones that do not (a target added later);
 * - a target that holds another repository, or cannot be read, is left out of the run, with the reason.
 * Returns the targets left out.
 */
export async function prepareRepositories(
  members: readonly MirrorMember[],
  master: MasterKey,
): Promise<Map<string, StorageError>> {
  const excluded = new Map<string, StorageError>();
  const configs = new Map<string, Buffer | undefined>();
  await Promise.all(
    members.map(async (member) => {
      try {
        configs.set(member.id, await member.storage.read(keys.config));
      } catch (error) {
        if (isNotFound(error)) configs.set(member.id, undefined);
        else excluded.set(member.id, asStorageError(member, error));
      }
    }),
  );
  const reachable = members.filter((member) => !excluded.has(member.id));
  const holder = reachable.find((member) => configs.get(member.id) !== undefined);
  if (!holder) {
    if (reachable.length > 0) {
      // One repository, created once and copied: the same id and keys everywhere.
      const [first, ...others] = reachable;
      await Repository.init(first!.storage, master);
      await copyRepository(first!, others, excluded);
    }
    return excluded;
  }
  const reference = configs.get(holder.id)!;
  const missing: MirrorMember[] = [];
  for (const member of reachable) {
    const config = configs.get(member.id);
    if (config === undefined) missing.push(member);
    else if (!config.equals(reference))
      excluded.set(
        member.id,
        new StorageError(
          'other',
          member.storage.name,
          keys.config,
          `holds another repository (id ${repositoryId(config)}, not ${repositoryId(reference)}); left out of this run`,
        ),
      );
  }
  await copyRepository(holder, missing, excluded);
  return excluded;
}

async function copyRepository(
  from: MirrorMember,
  to: readonly MirrorMember[],
  excluded: Map<string, StorageError>,
): Promise<void> {
  if (to.length === 0) return;
  const keyFiles = await listKeys(from.storage, 'keys/');
  const objects = await Promise.all(
    [...keyFiles, keys.config].map(async (key) => ({ key, body: await from.storage.read(key) })),
  );
  await Promise.all(
    to.map(async (member) => {
      try {
        // The config last: a target holds a repository once its config is there.
        for (const { key, body } of objects) await member.storage.put(key, body);
      } catch (error) {
        excluded.set(member.id, asStorageError(member, error));
      }
    }),
  );
}

function repositoryId(config: Buffer): string {
  try {
    return String((JSON.parse(config.toString('utf8')) as { id?: unknown }).id);
  } catch {
    return 'unreadable';
  }
}

function asStorageError(member: MirrorMember, error: unknown): StorageError {
  return error instanceof StorageError
    ? error
    : new StorageError('other', member.storage.name, undefined, (error as Error).message, { cause: error });
}
