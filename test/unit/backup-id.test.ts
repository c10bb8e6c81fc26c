import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isBackupId, newBackupId } from '../../functions/engine/manifest.ts';

describe('newBackupId', () => {
  it('has the documented shape', () => {
    expect(newBackupId(new Date('2026-11-24T18:15:00.123Z'))).toMatch(/^20261124T181500123Z-[0-9a-f]{6}$/);
  });

  it('sorts in time order whenever the times differ, even within one second', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 4e12 }), fc.integer({ min: 1, max: 5000 }), (base, gap) => {
        expect(newBackupId(new Date(base)) < newBackupId(new Date(base + gap))).toBe(true);
      }),
    );
  });

  it('is recognized by isBackupId, and nothing else is', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 4e12 }), (time) => isBackupId(newBackupId(new Date(time)))),
    );
    for (const other of ['', 'latest', '20261124T181500123Z', '20261124T181500123Z-ABCDEF', '../x'])
      expect(isBackupId(other)).toBe(false);
  });
});
