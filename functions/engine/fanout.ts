import { EngineError } from './errors.ts';
import type { TableRecord } from './manifest.ts';
import type { DatabaseConnection, TableInfo } from './postgres.ts';
import type { ProgressListener } from './progress.ts';
import {
  ChunkSink,
  keys,
  type IndexFile,
  type PartRecord,
  type Repository,
  type WriteStats,
} from './repository.ts';
import { dumpTables } from './table-dump.ts';

/**
 * A FULL fanned out over several workers (docs/architecture.md, "Scale-out"). The backup that runs it (the
 * coordinator) opens the snapshot, stores the schema archives, and holds the snapshot and its shared lock
 * while the parts run; each part, anywhere (another process, another Fargate task), joins the exported
 * snapshot, stores its tables' rows in packs of its own, and writes an index file `index/<id>.part-<n>` that
 * also lists its table records. When every part has, the coordinator reads those index files and writes the
 * manifest, last: a fan-out that stops anywhere leaves no backup, only packs that gc removes.
 */
export interface FanOutPlan {
  readonly backupId: string;
  /** The coordinator's exported snapshot: every part reads in it. */
  readonly snapshotId: string;
  readonly parts: readonly { readonly tables: readonly TableInfo[] }[];
}

export interface FanOut {
  /** At most this many parts (the workers there are). */
  readonly parts: number;
  /** Has every part of the plan backed up (`backupPart`) and resolves when all have; rejects when one failed. */
  run(plan: FanOutPlan): Promise<void>;
}

/** The index file name of a part. */
export const partIndexName = (backupId: string, part: number): string => `${backupId}.part-${part}`;

/**
 * Tables split into at most `parts` groups of about equal size: largest first, each to the lightest group
 * (a table is read by one COPY; splitting a table by key ranges is not done yet).
 */
export function planParts(tables: readonly TableInfo[], parts: number): TableInfo[][] {
  const groups = Array.from({ length: Math.max(1, Math.min(parts, tables.length)) }, () => ({
    bytes: 0,
    tables: [] as TableInfo[],
  }));
  for (const table of [...tables].sort((a, b) => (b.bytes ?? 0) - (a.bytes ?? 0))) {
    const lightest = groups.reduce((least, group) => (group.bytes < least.bytes ? group : least));
    lightest.tables.push(table);
    lightest.bytes += table.bytes ?? 0;
  }
  return groups.map((group) => group.tables);
}

export interface PartOptions {
  readonly connection: DatabaseConnection;
  /** Tables read at once (default 2), and sealing threads. */
  readonly jobs?: number;
  readonly onProgress?: ProgressListener;
  /** How long to wait for an exclusive operation (gc…) to finish before starting (default 10 min). */
  readonly lockWaitMs?: number;
}

/** One part of a fan-out: its tables, read in the plan's snapshot, stored, and its index file written. */
export async function backupPart(
  repository: Repository,
  plan: FanOutPlan,
  part: number,
  options: PartOptions,
): Promise<{ tables: number; bytes: number }> {
  const spec = plan.parts[part];
  if (!spec) throw new EngineError(`backup ${plan.backupId} has no part ${part}`);
  const jobs = options.jobs ?? 2;
  // Its own shared lock too: the coordinator's holds the repository for the whole fan-out, this one says
  // who writes these packs.
  const lock = await repository.lock(`backup ${plan.backupId} part ${part}`, {
    kind: 'shared',
    waitMs: options.lockWaitMs ?? 10 * 60_000,
  });
  try {
    const sink = new ChunkSink(repository, { has: () => false }, { threads: jobs });
    try {
      let bytes = 0;
      const tables = await dumpTables(
        sink,
        repository,
        options.connection,
        plan.snapshotId,
        spec.tables,
        jobs,
        (table) => (size) => {
          bytes += size;
          options.onProgress?.({ phase: 'database', item: `${table.schema}.${table.name}`, bytes });
        },
      );
      const packs = await sink.flush();
      await lock.check();
      const record: PartRecord = { snapshotId: plan.snapshotId, tables, stats: sink.stats };
      await repository.writeIndexFile(partIndexName(plan.backupId, part), { packs, part: record });
      return { tables: tables.length, bytes };
    } finally {
      await sink.close();
    }
  } finally {
    await lock.release().catch(() => undefined);
  }
}

/**
 * The parts' table records (by `schema.name`), their statistics summed, and their packs, from their index
 * files. A part that left none, or one written for another snapshot (an earlier attempt), fails the backup.
 */
export async function collectParts(
  repository: Repository,
  plan: FanOutPlan,
): Promise<{ tables: Map<string, TableRecord>; stats: WriteStats; packs: IndexFile['packs'] }> {
  const tables = new Map<string, TableRecord>();
  const stats: WriteStats = { chunks: 0, newChunks: 0, bytesRead: 0, bytesNew: 0, bytesStored: 0, packs: 0 };
  const packs: IndexFile['packs'][number][] = [];
  for (const [part, spec] of plan.parts.entries()) {
    const name = partIndexName(plan.backupId, part);
    const file = await repository.readIndexFile(keys.index(name)).catch((error: unknown) => {
      throw new EngineError(
        `part ${part} of backup ${plan.backupId} left no readable index (${name}): ${(error as Error).message}`,
      );
    });
    if (file.part?.snapshotId !== plan.snapshotId)
      throw new EngineError(`${name} was written for another snapshot: not part of this backup`);
    for (const table of spec.tables) {
      const record = file.part.tables.find(
        (each) => each.schema === table.schema && each.name === table.name,
      );
      if (!record) throw new EngineError(`${name} does not hold ${table.schema}.${table.name}`);
      tables.set(`${table.schema}.${table.name}`, record);
    }
    for (const key of Object.keys(stats) as (keyof WriteStats)[]) stats[key] += file.part.stats[key];
    packs.push(...file.packs);
  }
  return { tables, stats, packs };
}
