import type { ControlPlane } from '../context.ts';
import { NotFoundError } from '../errors.ts';
import { getBackup } from './backup-service.ts';
import { findStoredTarget, openStoredTarget } from './target-service.ts';
import type { MasterKey } from '../../engine/crypto.ts';
import type { Manifest } from '../../engine/manifest.ts';
import { Repository } from '../../engine/repository.ts';

/**
 * Runs `use` with the repository of a target that holds the backup and the backup's manifest: the given
 * target, or each target the catalog says holds it until one works. The target is closed afterwards.
 */
export async function withBackup<T>(
  cp: ControlPlane,
  backupId: string,
  masterKey: () => Promise<MasterKey>,
  use: (repository: Repository, manifest: Manifest, targetId: string) => Promise<T>,
  onlyTarget?: string,
): Promise<T> {
  const record = await getBackup(cp, backupId);
  const holders = record.targets.filter(
    (target) => target.status === 'SUCCESS' && (onlyTarget === undefined || target.targetId === onlyTarget),
  );
  let lastError: Error = new NotFoundError(
    `no target${onlyTarget === undefined ? '' : ` ${onlyTarget}`} holds backup ${backupId}`,
  );
  for (const holder of holders) {
    const target = await findStoredTarget(cp, holder.targetId);
    if (!target) continue;
    const storage = await openStoredTarget(cp, target);
    let opened = false;
    try {
      const repository = await Repository.open(storage, await masterKey());
      const manifest = await repository.loadManifest(backupId);
      opened = true;
      return await use(repository, manifest, holder.targetId);
    } catch (error) {
      // A target that cannot serve the backup: try the next. A failure of `use` itself is the answer.
      if (opened) throw error;
      lastError = error as Error;
    } finally {
      await storage.close?.().catch(() => undefined);
    }
  }
  throw lastError;
}
