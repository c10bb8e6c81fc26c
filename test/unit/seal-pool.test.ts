import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { decodeChunk, unseal } from '../../functions/engine/crypto.ts';
import { inThreadSealer, threadSealer, type ChunkSealer } from '../../functions/engine/seal-pool.ts';

/** COPY-like text: compressible, as table data is. */
function copyText(bytes: number): Buffer {
  const lines: string[] = [];
  let size = 0;
  for (let n = 0; size < bytes; n++) {
    const line = `${n}\tuser${n % 977}@example.com\t${(n * 7919) % 100000}\t2026-11-${1 + (n % 28)} 10:00:00+00\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

const open = (key: Buffer, id: string, sealed: Buffer) =>
  decodeChunk(unseal(key, sealed, `chunk:${id}`, id), id);

let pool: ChunkSealer | undefined;
afterEach(async () => {
  await pool?.close();
  pool = undefined;
});

describe('sealing threads', () => {
  it('seal exactly what the reading thread would: the same encodings, the same sizes', async () => {
    const key = randomBytes(32);
    pool = threadSealer(key, 2);
    const here = inThreadSealer(key);
    // Compressible text of the chunker's sizes (64 KiB to 512 KiB: zstd picks other parameters around 128 KiB
    // when told the size), and random bytes, which stay raw
    const chunks = [
      ...[65536, 131073, 200000, 400000].map((size) => copyText(size)),
      randomBytes(100_000),
      copyText(100).subarray(0, 100),
    ];
    for (const [n, data] of chunks.entries()) {
      const id = `c${n}`;
      const threaded = await pool.seal(id, Buffer.from(data));
      const local = await here.seal(id, Buffer.from(data));
      expect(open(key, id, threaded)).toEqual(data);
      // Same encoding byte (raw or zstd) and the same compressed size within a few bytes
      expect(unseal(key, threaded, `chunk:${id}`, id)[0]).toBe(unseal(key, local, `chunk:${id}`, id)[0]);
      expect(Math.abs(threaded.length - local.length)).toBeLessThan(64);
    }
  });

  it('are bound to the chunk id, and stop cleanly', async () => {
    const key = randomBytes(32);
    pool = threadSealer(key, 1);
    const sealed = await pool.seal('a', copyText(70000));
    expect(() => unseal(key, sealed, 'chunk:b', 'b')).toThrow('failed authentication');
    const many = await Promise.all(
      Array.from({ length: 20 }, (_, n) => pool!.seal(`m${n}`, copyText(70000 + n))),
    );
    for (const [n, each] of many.entries()) expect(open(key, `m${n}`, each).length).toBe(70000 + n);
    await pool.close();
    await expect(pool.seal('late', copyText(10))).rejects.toThrow('closed');
  });
});
