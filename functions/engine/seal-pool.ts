import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { encodeChunk, seal } from './crypto.ts';

/**
 * Compresses and seals a backup's new chunks on worker threads, so that the thread reading the database
 * only chunks and hashes (issue 20: a single stream left the other cores idle). Each thread holds the
 * repository's encryption key and answers, for a chunk, exactly what `encodeChunk` then `seal` make in this
 * thread (docs/repository-format.md, "Chunks"): the format does not depend on where a chunk was sealed.
 *
 * zstd runs synchronously in the thread, with no per-chunk hop to libuv's pool: measured on a 2-core machine,
 * a third less CPU per byte than zlib's asynchronous API, whose callbacks also land on the reading thread.
 *
 * The threads run `sealThread` below, started from its source (`eval`): it uses only Node's built-in
 * modules, so the same code runs from the TypeScript sources and from the bundles (Lambda, container),
 * which then need no second entry file.
 */
export interface ChunkSealer {
  /** The chunk compressed (or kept raw when that is not smaller) and sealed under `chunk:<id>`. */
  seal(id: string, data: Buffer): Promise<Buffer>;
  /** Stops the threads; pending chunks fail. */
  close(): Promise<void>;
}

/**
 * Sealing threads for `jobs` tables read at once: one per table, leaving a core to the reading thread (and
 * the server, when it shares the machine). Measured on 2 cores: one thread is as fast as two, with 30 MB less
 * peak memory.
 */
export function sealingThreads(jobs: number): number {
  return Math.max(1, Math.min(jobs, availableParallelism() - 1));
}

/** In this thread, on zlib's pool: for small runs and for one core. */
export function inThreadSealer(key: Buffer): ChunkSealer {
  return {
    seal: async (id, data) => seal(key, await encodeChunk(data), `chunk:${id}`),
    close: () => Promise.resolve(),
  };
}

interface Request {
  readonly n: number;
  readonly id: string;
  readonly data: Uint8Array;
}

type Reply =
  { readonly n: number; readonly sealed: Uint8Array } | { readonly n: number; readonly error: string };

/**
 * The thread's body. Self-contained (its source is what the thread runs): what it needs comes from
 * `process.getBuiltinModule`, and it must match `encodeChunk` and `seal` in crypto.ts byte for byte.
 */
function sealThread(): void {
  const threads = process.getBuiltinModule('node:worker_threads');
  const parentPort = threads.parentPort!;
  const workerData = threads.workerData as { key: Uint8Array };
  const { createCipheriv, randomBytes } = process.getBuiltinModule('node:crypto');
  const { zstdCompressSync, constants } = process.getBuiltinModule('node:zlib');
  const key = Buffer.from(workerData.key);
  // Level 3 with the parameters zstd picks when it does not know the input's size, as zlib's asynchronous
  // API makes it: told the size (as one synchronous call does), zstd switches chunks of 128 to 256 KiB to
  // its small-input table, measured 6% larger on COPY text.
  const level = {
    params: {
      [constants.ZSTD_c_compressionLevel]: 3,
      [constants.ZSTD_c_windowLog]: 21,
      [constants.ZSTD_c_hashLog]: 17,
      [constants.ZSTD_c_chainLog]: 16,
      [constants.ZSTD_c_searchLog]: 1,
      [constants.ZSTD_c_minMatch]: 5,
      [constants.ZSTD_c_strategy]: constants.ZSTD_dfast,
    },
  };
  parentPort.on('message', ({ n, id, data }: Request) => {
    try {
      const plain = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      const packed = zstdCompressSync(plain, level);
      const encoded =
        packed.length + 1 < plain.length
          ? Buffer.concat([Buffer.of(1), packed])
          : Buffer.concat([Buffer.of(0), plain]);
      const nonce = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', key, nonce);
      cipher.setAAD(Buffer.from(`chunk:${id}`, 'utf8'));
      const body = Buffer.concat([cipher.update(encoded), cipher.final()]);
      const sealed = Buffer.concat([nonce, body, cipher.getAuthTag()]);
      // Buffer.concat of this size owns its memory: handed over, not copied
      const owned = sealed.byteOffset === 0 && sealed.byteLength === sealed.buffer.byteLength;
      parentPort.postMessage({ n, sealed } satisfies Reply, owned ? [sealed.buffer] : []);
    } catch (error) {
      parentPort.postMessage({ n, error: (error as Error).message } satisfies Reply);
    }
  });
}

/**
 * `threads` worker threads; a chunk goes to the thread with the fewest pending. A thread that dies fails its
 * pending chunks and every later one (the backup fails: nothing half-sealed is ever stored).
 */
export function threadSealer(key: Buffer, threads: number): ChunkSealer {
  const workers = Array.from({ length: threads }, () => {
    const worker = new Worker(`(${sealThread.toString()})()`, {
      eval: true,
      workerData: { key: new Uint8Array(key) },
      // Little heap: a thread holds a chunk or two at a time
      resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 8 },
    });
    const pending = new Map<number, { resolve: (sealed: Buffer) => void; reject: (error: Error) => void }>();
    const state = { worker, pending, failure: undefined as Error | undefined };
    const failAll = (error: Error) => {
      state.failure ??= error;
      for (const waiting of pending.values()) waiting.reject(state.failure);
      pending.clear();
    };
    worker.on('message', (reply: Reply) => {
      const waiting = pending.get(reply.n);
      if (!waiting) return;
      pending.delete(reply.n);
      if ('error' in reply) waiting.reject(new Error(`sealing a chunk failed: ${reply.error}`));
      else
        waiting.resolve(Buffer.from(reply.sealed.buffer, reply.sealed.byteOffset, reply.sealed.byteLength));
    });
    worker.on('error', (error: Error) => failAll(error));
    worker.on('exit', (code) => failAll(new Error(`a sealing thread stopped (exit code ${code})`)));
    return state;
  });
  let next = 0;
  let closed = false;
  return {
    seal: (id, data) => {
      if (closed) return Promise.reject(new Error('the sealing threads are closed'));
      const state = workers.reduce((least, candidate) =>
        candidate.pending.size < least.pending.size ? candidate : least,
      );
      if (state.failure) return Promise.reject(state.failure);
      const n = next++;
      return new Promise<Buffer>((resolve, reject) => {
        state.pending.set(n, { resolve, reject });
        // The chunker's chunks own their memory: moved to the thread, not copied
        const owned = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
        state.worker.postMessage(
          { n, id, data } satisfies Request,
          owned ? [data.buffer as ArrayBuffer] : [],
        );
      });
    },
    close: async () => {
      closed = true;
      await Promise.all(workers.map(({ worker }) => worker.terminate()));
    },
  };
}
