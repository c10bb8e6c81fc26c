import { z } from 'zod';
import type { TargetDriver } from '../driver.ts';
import { absolutePath } from '../fields.ts';

const localConfig = z.strictObject({
  path: absolutePath,
});

/** LOCAL: a directory on the machine that runs backups (a mounted volume, a NAS). */
export const localDriver = {
  type: 'LOCAL',
  config: localConfig,
  secretFields: [],
  destinationFields: [],
  async open(spec) {
    const { LocalStorage } = await import('./local-storage.ts');
    const path = String(spec.config.path);
    return new LocalStorage(path, spec.name ?? `local:${path}`);
  },
} satisfies TargetDriver;
