import { createHash, createHmac, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { gearTable, type ChunkerParams } from '../../functions/engine/chunker.ts';
import {
  inThreadCutter,
  threadCutter,
  type CutterKeys,
  type StreamCutter,
} from '../../functions/engine/cut-pool.ts';

const PARAMS: ChunkerParams = { minSize: 4096, avgSize: 16384, maxSize: 65536 };

function keys(): CutterKeys {
  return { gear: gearTable(randomBytes(32)), params: PARAMS, idKey: randomBytes(32) };
}

/** COPY-like text with some repetition, `bytes` long. */
function copyText(bytes: number, seed = 0): Buffer {
  const lines: string[] = [];
  let size = 0;
  for (let n = seed; size < bytes; n++) {
    const line = `${n}\tuser${n % 977}@example.com\t${(n * 7919) % 100000}\t${randomBytes(6).toString('hex')}\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.concat(lines.map((line) => Buffer.from(line)));
}

/** `data` in pieces of irregular sizes, as a socket hands them over. */
async function* pieces(data: Buffer, delayEvery = 0): AsyncGenerator<Buffer> {
  for (let offset = 0, n = 0; offset < data.length; n++) {
    const size = 1 + ((n * 7919) % 70000);
    yield data.subarray(offset, offset + size);
    offset += size;
    if (delayEvery && n % delayEvery === 0) await new Promise((resolve) => setImmediate(resolve));
  }
}

interface Cut {
  chunks: Buffer[];
  ids: (string | undefined)[];
  size: number;
  sha256: string;
  rows: number;
}

async function cutAll(cutter: StreamCutter, source: AsyncIterable<Buffer>, rows = true): Promise<Cut> {
  const chunks: Buffer[] = [];
  const ids: (string | undefined)[] = [];
  const summary = await cutter.cut(
    source,
    async (data, id) => {
      chunks.push(Buffer.from(data));
      ids.push(id);
    },
    { rows },
  );
  return { chunks, ids, ...summary };
}

let pool: StreamCutter | undefined;
afterEach(async () => {
  await pool?.close();
  pool = undefined;
});

describe('cutting threads', () => {
  it('cut, name and digest a stream exactly as this thread does', async () => {
    const k = keys();
    pool = threadCutter(k, 2);
    for (const data of [copyText(1_500_000), randomBytes(700_000), Buffer.alloc(0), copyText(100)]) {
      const threaded = await cutAll(pool, pieces(data));
      const here = await cutAll(inThreadCutter(k), pieces(data));
      expect(threaded.chunks.map((chunk) => chunk.length)).toEqual(here.chunks.map((chunk) => chunk.length));
      expect(Buffer.concat(threaded.chunks).equals(data)).toBe(true);
      // The ids the threads computed are the chunk ids (HMAC-SHA256 under the id key)
      expect(threaded.ids).toEqual(
        threaded.chunks.map((chunk) => createHmac('sha256', k.idKey).update(chunk).digest('hex')),
      );
      expect(here.ids.every((id) => id === undefined)).toBe(true);
      expect(threaded.size).toBe(data.length);
      expect(threaded.sha256).toBe(createHash('sha256').update(data).digest('hex'));
      expect(threaded.sha256).toBe(here.sha256);
      expect(threaded.rows).toBe(data.toString('latin1').split('\n').length - 1);
      expect(threaded.rows).toBe(here.rows);
    }
  });

  it('cut more streams than threads, each whole and in order; a stream waits for a free thread', async () => {
    pool = threadCutter(keys(), 2);
    const inputs = [0, 1, 2, 3, 4].map((seed) => copyText(600_000 + seed * 50_000, seed * 100_000));
    const cuts = await Promise.all(inputs.map((data) => cutAll(pool!, pieces(data, 3))));
    for (const [index, cut] of cuts.entries()) {
      expect(Buffer.concat(cut.chunks).equals(inputs[index]!)).toBe(true);
      expect(cut.sha256).toBe(createHash('sha256').update(inputs[index]!).digest('hex'));
    }
  });

  it('read a stream no further ahead of a slow taker than a few MiB', async () => {
    pool = threadCutter(keys(), 1);
    const data = copyText(8_000_000);
    let read = 0;
    let taken = 0;
    let widest = 0;
    const counted = async function* () {
      for await (const piece of pieces(data)) {
        read += piece.length;
        widest = Math.max(widest, read - taken);
        yield piece;
      }
    };
    const summary = await pool.cut(counted(), async (chunk) => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      taken += chunk.length;
    });
    expect(summary.size).toBe(data.length);
    expect(taken).toBe(data.length);
    // The bound: 2 MiB handed over and not yet taken, a block being filled, the cutter's buffer, a piece
    expect(widest).toBeLessThan(2 * 1024 * 1024 + 256 * 1024 + PARAMS.maxSize + 70_000);
  });

  it('fail a stream whose taker fails, break its source off, and cut the next one on a fresh thread', async () => {
    const k = keys();
    pool = threadCutter(k, 1);
    const source = Readable.from(pieces(copyText(3_000_000)), { objectMode: false });
    let calls = 0;
    await expect(
      pool.cut(source, async () => {
        if (++calls === 3) throw new Error('the target is full');
      }),
    ).rejects.toThrow('the target is full');
    expect(source.destroyed).toBe(true);
    const data = copyText(400_000);
    const next = await cutAll(pool, pieces(data));
    expect(Buffer.concat(next.chunks).equals(data)).toBe(true);
    expect(next.sha256).toBe((await cutAll(inThreadCutter(k), pieces(data))).sha256);
  });

  it('fail a stream whose source fails, and every stream once closed', async () => {
    pool = threadCutter(keys(), 1);
    const broken = async function* () {
      yield copyText(300_000);
      throw new Error('server closed the connection unexpectedly');
    };
    await expect(cutAll(pool, broken())).rejects.toThrow('server closed the connection unexpectedly');
    // A stream being cut when the threads stop fails too (a backup that failed elsewhere closes them)
    const slow = async function* () {
      for (;;) {
        yield copyText(100_000);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    };
    const cutting = cutAll(pool, slow());
    await new Promise((resolve) => setTimeout(resolve, 50));
    await pool.close();
    await expect(cutting).rejects.toThrow(/cutting thread stopped/);
    await expect(cutAll(pool, pieces(copyText(1000)))).rejects.toThrow('the cutting threads are closed');
  });
});
