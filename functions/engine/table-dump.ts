import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { chunkStream } from './chunker.ts';
import { SourceError } from './errors.ts';
import type { StreamRecord, TableRecord } from './manifest.ts';
import { copyRows, copyTable, type DatabaseConnection, type TableInfo } from './postgres.ts';
import type { ChunkSink, Repository } from './repository.ts';

/** Chunks a stream into the sink; returns its chunk list, size and SHA-256. */
export async function storeStream(
  sink: ChunkSink,
  stream: AsyncIterable<Buffer>,
  repository: Repository,
  onBytes: (size: number) => void,
  tap?: (data: Buffer) => void,
): Promise<StreamRecord> {
  const hash = createHash('sha256');
  let size = 0;
  const tee = async function* (): AsyncGenerator<Buffer> {
    for await (const data of stream) {
      hash.update(data);
      size += data.length;
      tap?.(data);
      onBytes(data.length);
      yield data;
    }
  };
  const chunks: string[] = [];
  for await (const chunk of chunkStream(tee(), repository.gear, repository.config.chunker))
    chunks.push(await sink.add(chunk));
  return { chunks, size, sha256: hash.digest('hex') };
}

/**
 * The rows of `tables`, each read by a COPY in the exported snapshot `snapshotId` (so that all of them are
 * one point in time, whichever connection or process reads them), `jobs` at once, largest first. The first
 * table that fails stops the others: their COPYs are broken off, and the error is the first one.
 * Records come back in the order of `tables`.
 */
export async function dumpTables(
  sink: ChunkSink,
  repository: Repository,
  connection: DatabaseConnection,
  snapshotId: string,
  tables: readonly TableInfo[],
  jobs: number,
  onBytes: (table: TableInfo) => (size: number) => void,
): Promise<TableRecord[]> {
  const records = new Array<TableRecord>(tables.length);
  const order = tables
    .map((_, index) => index)
    .sort((a, b) => (tables[b]!.bytes ?? 0) - (tables[a]!.bytes ?? 0));
  const reading = new Set<Readable>();
  let failure: Error | undefined;
  const worker = async () => {
    for (let index = order.shift(); index !== undefined && !failure; index = order.shift()) {
      const table = tables[index]!;
      let copy: Awaited<ReturnType<typeof copyTable>> | undefined;
      try {
        copy = await copyTable(connection, snapshotId, table);
        reading.add(copy.stream);
        // The stream's SHA-256 is the table's checksum: the restore check compares it.
        let rows = 0;
        const record = await storeStream(sink, copy.stream, repository, onBytes(table), (data) => {
          rows += copyRows(data);
        });
        records[index] = {
          ...record,
          schema: table.schema,
          name: table.name,
          columns: table.columns,
          orderBy: table.orderBy,
          rows,
          indexes: table.indexes,
        };
      } catch (error) {
        const wrapped = new SourceError(
          `reading ${table.schema}.${table.name} failed: ${(error as Error).message}`,
          { cause: error },
        );
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
    Array.from({ length: Math.max(1, Math.min(jobs, tables.length)) }, worker),
  );
  if (failure) throw failure;
  const rejected = outcomes.find((outcome) => outcome.status === 'rejected');
  if (rejected) throw rejected.reason;
  return records;
}
