/**
 * Runs one engine operation in its own process and prints {seconds, maxRssMB, ...} as JSON, so that peak
 * memory is the operation's alone. Used by bench/run.ts.
 *   node bench/measure.ts backup  <repo> <keyhex> <db-url> <FULL|INCREMENTAL> [changes]
 *   node bench/measure.ts restore <repo> <keyhex> <db-url> <backup-id>
 * JOBS (environment): tables read, or loaded and indexed, at once (default: the engine's, 2).
 */
import { backup } from '../functions/engine/backup.ts';
import { parseMasterKey } from '../functions/engine/crypto.ts';
import type { BackupType } from '../functions/engine/manifest.ts';
import { changeStreamFor, confirmBackup } from '../functions/engine/changes.ts';
import { connectionFrom, databaseName } from '../functions/engine/postgres.ts';
import { Repository } from '../functions/engine/repository.ts';
import { restoreDatabase } from '../functions/engine/restore.ts';
import { LocalStorage } from '../functions/storage/local/local-storage.ts';
import { checked } from '../functions/storage/facade.ts';

const [operation, repo, key, url, arg, mode] = process.argv.slice(2);
const jobs = process.env.JOBS === undefined ? undefined : Number(process.env.JOBS);
const repository = await Repository.open(checked(new LocalStorage(repo!)), parseMasterKey(key!));
const started = performance.now();
let result: Record<string, unknown>;
if (operation === 'backup') {
  const database = connectionFrom(url!);
  const changeStream = mode === 'changes' ? changeStreamFor(databaseName(database)) : undefined;
  const { manifest } = await backup(repository, {
    type: arg as BackupType,
    source: { database },
    ...(changeStream ? { changeStream } : {}),
    ...(jobs === undefined ? {} : { tableConcurrency: jobs }),
  });
  await confirmBackup(database, manifest);
  result = { id: manifest.id, bytesStored: manifest.stats.bytesStored, bytesRead: manifest.stats.bytesRead };
} else {
  const restored = await restoreDatabase(repository, await repository.loadManifest(arg!), {
    target: connectionFrom(url!),
    check: false,
    ...(jobs === undefined ? {} : { jobs }),
  });
  result = {
    rows: restored.rows,
    ...(restored.changes
      ? { transactions: restored.changes.transactions, changes: restored.changes.changes }
      : {}),
  };
}
const seconds = (performance.now() - started) / 1000;
process.stdout.write(
  `${JSON.stringify({ ...result, seconds, maxRssMB: process.resourceUsage().maxRSS / 1024 })}\n`,
);
