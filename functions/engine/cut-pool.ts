import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { chunkStream, makeCutter, type ChunkerParams, type Cutter } from './chunker.ts';

/**
 * Cuts the streams of a backup into chunks and names them (chunk id = HMAC-SHA256 under the id key), with
 * each stream's size, SHA-256 and (for COPY text) row count. In this thread, or on worker threads — one per
 * stream read at once — so that the thread reading the database only reads it (issue 20: cutting and hashing
 * there kept a FULL at jobs 2 as slow as at jobs 1 once the sealing had moved to threads).
 *
 * The threads run `cutThread` below with `makeCutter` (chunker.ts) as its argument, both started from their
 * source (`eval`, as seal-pool.ts does): the cuts, the ids and the digests are the ones this thread makes.
 */
export interface StreamSummary {
  readonly size: number;
  readonly sha256: string;
  /** Lines of the stream (rows of COPY text), when asked for. */
  readonly rows: number;
}

export interface CutOptions {
  /** Called with the size of each piece as it is read. */
  readonly onBytes?: (size: number) => void;
  /** Count the stream's lines (COPY text: one per row). */
  readonly rows?: boolean;
}

/**
 * Hands each chunk of `stream`, in order, to `onChunk` (awaited: the stream is read no faster than the chunks
 * are taken), with its id when a thread computed it. `onChunk` takes the chunk over.
 */
export type ChunkTaker = (data: Buffer, id?: string) => Promise<unknown>;

export interface StreamCutter {
  cut(
    stream: AsyncIterable<Buffer | Uint8Array | string>,
    onChunk: ChunkTaker,
    options?: CutOptions,
  ): Promise<StreamSummary>;
  /** Stops the threads; a stream being cut fails. */
  close(): Promise<void>;
}

export interface CutterKeys {
  readonly gear: Int32Array;
  readonly params: ChunkerParams;
  readonly idKey: Buffer;
}

/** Lines in `data`: rows of COPY text (each ends with a newline; a newline inside a value is escaped as `\n`). */
export function countLines(data: Uint8Array): number {
  let lines = 0;
  for (let index = data.indexOf(10); index !== -1; index = data.indexOf(10, index + 1)) lines++;
  return lines;
}

/** In this thread: for small runs, one core, and streams that are made here anyway. */
export function inThreadCutter(keys: CutterKeys): StreamCutter {
  return {
    cut: async (stream, onChunk, options = {}) => {
      const hash = createHash('sha256');
      let size = 0;
      let rows = 0;
      const tee = async function* (): AsyncGenerator<Buffer | Uint8Array | string> {
        for await (const piece of stream) {
          const data = typeof piece === 'string' ? Buffer.from(piece) : piece;
          hash.update(data);
          size += data.length;
          if (options.rows) rows += countLines(data);
          options.onBytes?.(data.length);
          yield data;
        }
      };
      for await (const chunk of chunkStream(tee(), keys.gear, keys.params)) await onChunk(chunk);
      return { size, sha256: hash.digest('hex'), rows };
    },
    close: () => Promise.resolve(),
  };
}

type Request = { readonly data: Uint8Array; readonly rows: boolean } | { readonly end: true };

type Reply =
  | { readonly chunk: Uint8Array; readonly id: string }
  | { readonly block: Uint8Array }
  | { readonly done: StreamSummary }
  | { readonly error: string };

/**
 * The thread's body: one stream at a time, its pieces in order, then `end`. Self-contained (its source is
 * what the thread runs): what it needs comes from `process.getBuiltinModule` and its arguments.
 */
function cutThread(
  cutterOf: (gear: Int32Array, params: ChunkerParams) => Cutter,
  linesOf: (data: Uint8Array) => number,
): void {
  const threads = process.getBuiltinModule('node:worker_threads');
  const { createHash, createHmac, createSecretKey } = process.getBuiltinModule('node:crypto');
  const parentPort = threads.parentPort!;
  const keys = threads.workerData as { gear: Int32Array; params: ChunkerParams; idKey: Uint8Array };
  const idKey = createSecretKey(Buffer.from(keys.idKey));
  const cutter = cutterOf(keys.gear, keys.params);
  let hash = createHash('sha256');
  let size = 0;
  let rows = 0;
  const emit = (chunk: Buffer) => {
    const id = createHmac('sha256', idKey).update(chunk).digest('hex');
    // The cutter's chunks own their memory: moved to the reading thread, not copied
    parentPort.postMessage({ chunk, id } satisfies Reply, [chunk.buffer as ArrayBuffer]);
  };
  parentPort.on('message', (request: Request) => {
    try {
      if ('data' in request) {
        const data = Buffer.from(request.data.buffer, request.data.byteOffset, request.data.byteLength);
        hash.update(data);
        size += data.length;
        if (request.rows) rows += linesOf(data);
        cutter.push(data, emit);
        // Cut (the cutter keeps a copy of what it still holds): the block goes back to be filled again, so
        // that no thread leaves a trail of dead blocks for its garbage collector to find
        parentPort.postMessage({ block: request.data } satisfies Reply, [request.data.buffer as ArrayBuffer]);
      } else if ('end' in request) {
        cutter.finish(emit);
        parentPort.postMessage({ done: { size, sha256: hash.digest('hex'), rows } } satisfies Reply);
        hash = createHash('sha256');
        size = 0;
        rows = 0;
      }
    } catch (error) {
      parentPort.postMessage({ error: (error as Error).message } satisfies Reply);
    }
  });
}

/** Bytes of a stream handed to a thread in one message. */
const BLOCK = 256 * 1024;

/** A thread's pieces and chunks not yet taken, at most (besides the chunk being cut): its memory bound. */
const OUTSTANDING = 2 * 1024 * 1024;

/** One cutting thread, and who listens to it now. */
class CutThread {
  readonly worker: Worker;
  listener: ((reply: Reply) => void) | undefined;
  failure: Error | undefined;

  constructor(keys: CutterKeys) {
    this.worker = new Worker(
      `(${cutThread.toString()})(${makeCutter.toString()}, ${countLines.toString()})`,
      {
        eval: true,
        workerData: {
          gear: new Int32Array(keys.gear),
          params: keys.params,
          idKey: new Uint8Array(keys.idKey),
        },
        // Little heap: a thread holds its cutter's buffer and a few pieces
        resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 4 },
      },
    );
    this.worker.on('message', (reply: Reply) => this.listener?.(reply));
    const fail = (error: Error) => {
      this.failure ??= error;
      this.listener?.({ error: error.message });
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`a cutting thread stopped (exit code ${code})`)));
  }
}

/**
 * Up to `threads` cutting threads, started as streams come and kept for the next ones; a stream waits for a
 * free thread. A stream that fails (its source, its taker, the thread) takes its thread down with it: the
 * next stream starts on a new one, never on a thread left mid-stream.
 */
export function threadCutter(keys: CutterKeys, threads: number): StreamCutter {
  const idle: CutThread[] = [];
  const all = new Set<CutThread>();
  const waiting: ((thread: CutThread) => void)[] = [];
  let closed = false;

  const acquire = async (): Promise<CutThread> => {
    if (closed) throw new Error('the cutting threads are closed');
    const free = idle.pop();
    if (free) return free;
    if (all.size < threads) {
      const thread = new CutThread(keys);
      all.add(thread);
      return thread;
    }
    return new Promise((resolve) => waiting.push(resolve));
  };
  const release = (thread: CutThread, healthy: boolean) => {
    thread.listener = undefined;
    if (!healthy || closed) {
      all.delete(thread);
      void thread.worker.terminate();
      // A waiting stream gets a new thread in its place
      const next = waiting.shift();
      if (next && !closed) {
        const fresh = new CutThread(keys);
        all.add(fresh);
        next(fresh);
      }
      return;
    }
    const next = waiting.shift();
    if (next) next(thread);
    else idle.push(thread);
  };

  const cut = async (
    stream: AsyncIterable<Buffer | Uint8Array | string>,
    onChunk: ChunkTaker,
    options: CutOptions = {},
  ): Promise<StreamSummary> => {
    const thread = await acquire();
    // Blocks the thread has cut and sent back
    const spare: Buffer[] = [];
    const chunks: { chunk: Buffer; id: string }[] = [];
    let summary: StreamSummary | undefined;
    let failure: Error | undefined = thread.failure;
    let outstanding = 0;
    // Both loops below may wait at once: each wakes on any change
    let waiters: (() => void)[] = [];
    const changed = () => {
      const woken = waiters;
      waiters = [];
      for (const wake of woken) wake();
    };
    const next = () => new Promise<void>((resolve) => waiters.push(resolve));
    const fail = (error: unknown) => {
      failure ??= error instanceof Error ? error : new Error(String(error));
      changed();
    };
    thread.listener = (reply) => {
      if ('block' in reply) spare.push(Buffer.from(reply.block.buffer, 0, reply.block.buffer.byteLength));
      else if ('chunk' in reply)
        chunks.push({
          chunk: Buffer.from(reply.chunk.buffer, reply.chunk.byteOffset, reply.chunk.byteLength),
          id: reply.id,
        });
      else if ('done' in reply) summary = reply.done;
      else failure ??= new Error(`cutting a stream failed: ${reply.error}`);
      changed();
    };

    // The chunks, in order, to the taker; `done` comes after the stream's last chunk
    const take = async (): Promise<void> => {
      for (;;) {
        while (chunks.length === 0 && !summary && !failure) await next();
        if (failure) return;
        const ready = chunks.shift();
        if (!ready) return;
        const size = ready.chunk.length;
        await onChunk(ready.chunk, ready.id);
        outstanding -= size;
        changed();
      }
    };
    // The stream, in blocks, to the thread; no further ahead of the taker than OUTSTANDING
    const feed = async (): Promise<void> => {
      const fresh = () => spare.pop() ?? Buffer.allocUnsafeSlow(BLOCK);
      let block = fresh();
      let filled = 0;
      const send = () => {
        const data = block.subarray(0, filled);
        thread.worker.postMessage({ data, rows: options.rows ?? false } satisfies Request, [
          block.buffer as ArrayBuffer,
        ]);
        outstanding += filled;
        block = fresh();
        filled = 0;
      };
      for await (const piece of stream) {
        if (failure) return;
        const data = typeof piece === 'string' ? Buffer.from(piece) : piece;
        options.onBytes?.(data.length);
        for (let offset = 0; offset < data.length;) {
          const take = Math.min(BLOCK - filled, data.length - offset);
          block.set(data.subarray(offset, offset + take), filled);
          filled += take;
          offset += take;
          if (filled === BLOCK) send();
        }
        while (outstanding > OUTSTANDING && !failure) await next();
      }
      if (failure) return;
      if (filled > 0) send();
      thread.worker.postMessage({ end: true } satisfies Request);
    };

    await Promise.all([feed().catch(fail), take().catch(fail)]);
    release(thread, !failure);
    if (failure) {
      // Not read to its end: broken off, as a failed read is
      if ('destroy' in stream && typeof stream.destroy === 'function') (stream as Readable).destroy(failure);
      throw failure;
    }
    return summary!;
  };

  return {
    cut,
    close: async () => {
      closed = true;
      idle.length = 0;
      await Promise.all([...all].map((thread) => thread.worker.terminate()));
      all.clear();
    },
  };
}
