import { EngineError } from './errors.ts';
import type { PieceRecord } from './manifest.ts';
import type { DatabaseConnection, TableInfo } from './postgres.ts';
import type { ProgressListener } from './progress.ts';
import {
  addStats,
  ChunkSink,
  keys,
  type IndexFile,
  type PartRecord,
  type Repository,
  type WriteStats,
} from './repository.ts';
import { sealingThreads } from './seal-pool.ts';
import { dumpPieces, pieceBytes, piecesOf, tableName, type TablePiece } from './table-dump.ts';

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
  /** What each part reads: tables, or key ranges of a large one. */
  readonly parts: readonly { readonly pieces: readonly TablePiece[] }[];
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
 * The tables' pieces (whole tables, and the key ranges of large ones) split into at most `parts` groups of
 * about equal size: largest first, each to the lightest group.
 */
export function planParts(tables: readonly TableInfo[], parts: number): TablePiece[][] {
  const pieces = piecesOf(tables);
  const groups = Array.from({ length: Math.max(1, Math.min(parts, pieces.length)) }, () => ({
    bytes: 0,
    pieces: [] as TablePiece[],
  }));
  for (const piece of pieces.sort((a, b) => pieceBytes(b) - pieceBytes(a))) {
    const lightest = groups.reduce((least, group) => (group.bytes < least.bytes ? group : least));
    lightest.pieces.push(piece);
    lightest.bytes += pieceBytes(piece);
  }
  return groups.map((group) => group.pieces);
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
): Promise<{ pieces: number; bytes: number }> {
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
    const sink = new ChunkSink(
      repository,
      { has: () => false },
      {
        threads: sealingThreads(jobs),
        cutters: jobs,
      },
    );
    try {
      let bytes = 0;
      const pieces = await dumpPieces(
        sink,
        options.connection,
        plan.snapshotId,
        spec.pieces,
        jobs,
        (table) => (size) => {
          bytes += size;
          options.onProgress?.({ phase: 'database', item: `${table.schema}.${table.name}`, bytes });
        },
      );
      const packs = await sink.flush();
      await lock.check();
      const record: PartRecord = { snapshotId: plan.snapshotId, pieces, stats: sink.stats };
      await repository.writeIndexFile(partIndexName(plan.backupId, part), { packs, part: record });
      return { pieces: pieces.length, bytes };
    } finally {
      await sink.close();
    }
  } finally {
    await lock.release().catch(() => undefined);
  }
}

/**
 * The parts' piece records, their statistics summed, and their packs, from their index files. A part that
 * left none, one written for another snapshot (an earlier attempt), or one without a piece it was given,
 * fails the backup.
 */
export async function collectParts(
  repository: Repository,
  plan: FanOutPlan,
): Promise<{ pieces: PieceRecord[]; stats: WriteStats; packs: IndexFile['packs'] }> {
  const pieces: PieceRecord[] = [];
  let stats: WriteStats = { chunks: 0, newChunks: 0, bytesRead: 0, bytesNew: 0, bytesStored: 0, packs: 0 };
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
    for (const piece of spec.pieces) {
      const record = file.part.pieces.find(
        (each) => each.table === tableName(piece.table) && each.range === piece.range,
      );
      if (!record) throw new EngineError(`${name} does not hold ${tableName(piece.table)}`);
      pieces.push(record);
    }
    stats = addStats(stats, file.part.stats);
    packs.push(...file.packs);
  }
  return { pieces, stats, packs };
}
