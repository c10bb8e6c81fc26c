import { describe, expect, it } from 'vitest';
import { progressOf, progressWriter } from '../../functions/core/progress.ts';
import type { RunProgress } from '../../functions/core/records.ts';

describe('progress of a run', () => {
  it('gives the rate since the start, and the share done and time left where the total is known', () => {
    const known = progressOf({ phase: 'restore', item: 'public.users', bytes: 40, totalBytes: 100 }, 0, 2000);
    expect(known).toMatchObject({
      phase: 'restore',
      item: 'public.users',
      bytes: 40,
      totalBytes: 100,
      estimated: false,
      percent: 40,
      bytesPerSecond: 20,
      etaSeconds: 3,
    });
    // Estimated from an earlier run: said so; past the estimate, 100% and nothing left (never negative)
    expect(progressOf({ phase: 'database', bytes: 150 }, 0, 1000, 100)).toMatchObject({
      totalBytes: 100,
      estimated: true,
      percent: 100,
      etaSeconds: 0,
    });
    // Unknown total: bytes and rate only
    const unknown = progressOf({ phase: 'database', bytes: 10 }, 0, 1000);
    expect(unknown.percent).toBeUndefined();
    expect(unknown.etaSeconds).toBeUndefined();
    expect(unknown.bytesPerSecond).toBe(10);
  });

  it('is written at most every interval, one write at a time, and ends with the newest', async () => {
    const writes: number[] = [];
    let release: (() => void) | undefined;
    const writer = progressWriter(
      (progress) => {
        writes.push(progress.bytes);
        return new Promise<void>((resolve) => (release = resolve));
      },
      () => undefined,
      60_000,
    );
    const at = (bytes: number): RunProgress => ({
      phase: 'restore',
      bytes,
      bytesPerSecond: 1,
      updatedAt: '',
    });
    writer.report(at(1));
    writer.report(at(2)); // within the interval and while the first write is under way: not written
    writer.report(at(3));
    expect(writes).toEqual([1]);
    const flushed = writer.flush();
    release!();
    await new Promise((resolve) => setImmediate(resolve));
    release!();
    await flushed;
    expect(writes).toEqual([1, 3]);
    // A failed write is reported, not thrown
    const errors: unknown[] = [];
    const failing = progressWriter(
      () => Promise.reject(new Error('store busy')),
      (error) => errors.push(error),
    );
    failing.report(at(1));
    await failing.flush();
    expect(errors).toHaveLength(1);
  });
});
