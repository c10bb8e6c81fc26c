import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { SourceError } from './errors.ts';
import type { PieceRecord, RangeRecord, TableRecord } from './manifest.ts';
import { copyTable, type DatabaseConnection, type TableInfo } from './postgres.ts';
import type { ChunkSink } from './repository.ts';

/** What one COPY reads: a table, or one key range of it (`range`: its index in `table.ranges`). */
export interface TablePiece {
  readonly table: TableInfo;
  readonly range?: number;
}

/** A table's pieces: the whole table, or each of its key ranges. */
export function piecesOf(tables: readonly TableInfo[]): TablePiece[] {
  return tables.flatMap((table) =>
    table.ranges ? table.ranges.map((_, range) => ({ table, range })) : [{ table }],
  );
}

/** About how many bytes a piece reads (a range: its share of the table). */
export const pieceBytes = (piece: TablePiece): number =>
  (piece.table.bytes ?? 0) / (piece.table.ranges?.length ?? 1);

export const tableName = (table: { schema: string; name: string }): string => `${table.schema}.${table.name}`;

/**
 * The rows of `pieces`, each read by a COPY in the exported snapshot `snapshotId` (so that all of them are
 * one point in time, whichever connection or process reads them), `jobs` at once, largest first. The first
 * piece that fails stops the others: their COPYs are broken off, and the error is the first one.
 */
export async function dumpPieces(
  sink: ChunkSink,
  connection: DatabaseConnection,
  snapshotId: string,
  pieces: readonly TablePiece[],
  jobs: number,
  onBytes: (table: TableInfo) => (size: number) => void,
): Promise<PieceRecord[]> {
  const records = new Array<PieceRecord>(pieces.length);
  const order = pieces
    .map((_, index) => index)
    .sort((a, b) => pieceBytes(pieces[b]!) - pieceBytes(pieces[a]!));
  const reading = new Set<Readable>();
  let failure: Error | undefined;
  const worker = async () => {
    for (let index = order.shift(); index !== undefined && !failure; index = order.shift()) {
      const { table, range } = pieces[index]!;
      const what = `${tableName(table)}${range === undefined ? '' : ` (key range ${range + 1} of ${table.ranges!.length})`}`;
      let copy: Awaited<ReturnType<typeof copyTable>> | undefined;
      try {
        copy = await copyTable(
          connection,
          snapshotId,
          table,
          range === undefined ? undefined : table.ranges![range],
        );
        reading.add(copy.stream);
        // The stream's SHA-256 is the table's (or range's) checksum: the restore check compares it.
        const { record: stream, rows } = await sink.store(copy.stream, {
          onBytes: onBytes(table),
          rows: true,
        });
        records[index] = { table: tableName(table), ...(range === undefined ? {} : { range }), stream, rows };
      } catch (error) {
        const wrapped = new SourceError(`reading ${what} failed: ${(error as Error).message}`, {
          cause: error,
        });
        if (!failure) {
          failure = wrapped;
          for (const other of reading) if (other !== copy?.stream) other.destroy(wrapped);
        }
        throw wrapped;
      } finally {
        if (copy) {
          reading.delete(copy.stream);
          await copy.done();
        }
      }
    }
  };
  const outcomes = await Promise.allSettled(
    Array.from({ length: Math.max(1, Math.min(jobs, pieces.length)) }, worker),
  );
  if (failure) throw failure;
  const rejected = outcomes.find((outcome) => outcome.status === 'rejected');
  if (rejected) throw rejected.reason;
  return records;
}

/** Each table's record from its pieces' (wherever they were read); a piece missing is an error. */
export function tableRecords(tables: readonly TableInfo[], pieces: readonly PieceRecord[]): TableRecord[] {
  const found = new Map(pieces.map((piece) => [`${piece.table}#${piece.range ?? ''}`, piece]));
  const piece = (table: TableInfo, range?: number) => {
    const record = found.get(`${tableName(table)}#${range ?? ''}`);
    if (!record)
      throw new SourceError(
        `${tableName(table)}${range === undefined ? '' : ` key range ${range + 1}`} was not read`,
      );
    return record;
  };
  return tables.map((table) => {
    const shape = {
      schema: table.schema,
      name: table.name,
      columns: table.columns,
      orderBy: table.orderBy,
      indexes: table.indexes,
    };
    if (!table.ranges) {
      const { stream, rows } = piece(table);
      return { ...stream, ...shape, rows };
    }
    const read = table.ranges.map((_, index) => piece(table, index));
    const ranges: RangeRecord[] = table.ranges.map((range, index) => {
      const { stream, rows } = read[index]!;
      return { ...range, chunkCount: stream.chunks.length, size: stream.size, sha256: stream.sha256, rows };
    });
    return {
      ...shape,
      chunks: read.flatMap((each) => each.stream.chunks),
      size: ranges.reduce((sum, range) => sum + range.size, 0),
      sha256: rangesDigest(ranges),
      rows: ranges.reduce((sum, range) => sum + range.rows, 0),
      ranges,
    };
  });
}

/** A ranged table's `sha256`: of its ranges' SHA-256s (docs/repository-format.md). */
export function rangesDigest(ranges: readonly Pick<RangeRecord, 'sha256'>[]): string {
  return createHash('sha256')
    .update(ranges.map((range) => range.sha256).join(''))
    .digest('hex');
}
