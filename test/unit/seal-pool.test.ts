import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { constants, createZstdCompress, zstdCompressSync } from 'node:zlib';
import { decodeChunk, unseal, zstdContentSize } from '../../functions/engine/crypto.ts';
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
      // A zstd frame states its content's size: a restore decompresses each chunk into one buffer of it
      const encoded = unseal(key, threaded, `chunk:${id}`, id);
      if (encoded[0] === 1) expect(zstdContentSize(encoded.subarray(1))).toBe(data.length);
    }
  });

  it('open chunks whose zstd frame does not state its size (a stream compressed without being told it)', async () => {
    const data = copyText(300_000);
    const stream = createZstdCompress();
    const done = new Promise<Buffer>((resolve, reject) => {
      const parts: Buffer[] = [];
      stream.on('data', (part: Buffer) => parts.push(part));
      stream.on('end', () => resolve(Buffer.concat(parts)));
      stream.on('error', reject);
    });
    for (let at = 0; at < data.length; at += 65536) stream.write(data.subarray(at, at + 65536));
    stream.end();
    const frame = await done;
    expect(zstdContentSize(frame)).toBeUndefined();
    expect(decodeChunk(Buffer.concat([Buffer.of(1), frame]), 'x').equals(data)).toBe(true);
    // and one that does (a sealing thread's: zstd told the size)
    const stated = zstdCompressSync(data, { params: { [constants.ZSTD_c_compressionLevel]: 3 } });
    expect(zstdContentSize(stated)).toBe(data.length);
    expect(decodeChunk(Buffer.concat([Buffer.of(1), stated]), 'x').equals(data)).toBe(true);
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
