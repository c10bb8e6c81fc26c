import { createHash, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { chunkStream, gearTable, type ChunkerParams } from '../../functions/engine/chunker.ts';

const SMALL: ChunkerParams = { minSize: 2048, avgSize: 8192, maxSize: 32768 };

/** Deterministic input anyone can regenerate: SHA-256("dr-chunker-vector-<i>") for i = 0, 1, 2… */
function vectorInput(size: number): Buffer {
  const out = Buffer.alloc(size);
  for (let offset = 0, i = 0; offset < size; offset += 32, i++)
    createHash('sha256').update(`dr-chunker-vector-${i}`).digest().copy(out, offset);
  return out;
}

async function sizesOf(data: Buffer, gear: Int32Array, params = SMALL, piece = 65536): Promise<number[]> {
  const pieces = function* () {
    for (let i = 0; i < data.length; i += piece) yield data.subarray(i, i + piece);
  };
  const sizes: number[] = [];
  for await (const chunk of chunkStream(pieces(), gear, params)) sizes.push(chunk.length);
  return sizes;
}

describe('gearTable', () => {
  it('matches the documented derivation (HMAC-SHA256(key, "dr-gear-<i>"), first 4 bytes, little-endian signed; checked in Python)', () => {
    expect(Array.from(gearTable(Buffer.alloc(32, 0x42)).slice(0, 4))).toEqual([
      1947918488, 92417506, 1062676422, 96895119,
    ]);
  });
});

describe('chunkStream', () => {
  it('cuts the golden vector at the recorded places (a change here is a repository format change)', async () => {
    const sizes = await sizesOf(vectorInput(1 << 20), gearTable(Buffer.alloc(32, 0x42)));
    expect(sizes.slice(0, 12)).toEqual([
      13033, 8303, 9628, 2455, 8226, 4045, 6615, 9087, 8342, 8477, 9426, 9377,
    ]);
    expect(sizes).toHaveLength(121);
    expect(sizes.at(-1)).toBe(2630);
  });

  it('keeps every chunk within bounds (the last may be short) and loses no byte, whatever the input pieces', async () => {
    const gear = gearTable(randomBytes(32));
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 300_000 }),
        fc.integer({ min: 1, max: 70_000 }),
        async (size, piece) => {
          const data = randomBytes(size);
          const sizes = await sizesOf(data, gear, SMALL, piece);
          expect(sizes.reduce((sum, n) => sum + n, 0)).toBe(size);
          sizes.slice(0, -1).forEach((n) => expect(n).toBeGreaterThanOrEqual(SMALL.minSize));
          sizes.forEach((n) => expect(n).toBeLessThanOrEqual(SMALL.maxSize));
          expect(await sizesOf(data, gear, SMALL, 4096)).toEqual(sizes);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('moves only the boundaries near an insertion', async () => {
    const gear = gearTable(randomBytes(32));
    const data = randomBytes(2 << 20);
    const hashes = async (buffer: Buffer) => {
      const all: string[] = [];
      for await (const chunk of chunkStream([buffer], gear, SMALL))
        all.push(createHash('sha256').update(chunk).digest('hex'));
      return all;
    };
    const before = new Set(await hashes(data));
    const after = await hashes(
      Buffer.concat([data.subarray(0, 1 << 20), Buffer.from('inserted'), data.subarray(1 << 20)]),
    );
    const reused = after.filter((hash) => before.has(hash)).length;
    expect(after.length - reused).toBeLessThanOrEqual(3);
  });

  it('depends on the key: another repository cuts elsewhere', async () => {
    const data = vectorInput(1 << 20);
    expect(await sizesOf(data, gearTable(Buffer.alloc(32, 1)))).not.toEqual(
      await sizesOf(data, gearTable(Buffer.alloc(32, 2))),
    );
  });
});
