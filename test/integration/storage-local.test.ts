import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalStorage } from '../../functions/storage/local/local-storage.ts';
import { storageConformance } from '../support/storage-conformance.ts';

storageConformance('LOCAL', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'dr-conformance-'));
  return { storage: new LocalStorage(dir), cleanup: () => rm(dir, { recursive: true, force: true }) };
});
