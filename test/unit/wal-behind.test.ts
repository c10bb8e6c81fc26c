import { describe, expect, it } from 'vitest';
import { walBehind } from '../../functions/workflows/failover.ts';

describe('walBehind (the WAL a standby lacks, for the failover rule and its data loss)', () => {
  it('is 0 when the standby is level or ahead', () => {
    expect(walBehind('0/3000148', '0/3000148')).toBe(0);
    expect(walBehind('0/3000148', '0/3000200')).toBe(0);
  });

  it('counts the bytes across the 32-bit halves of a position', () => {
    expect(walBehind('1/00000010', '0/FFFFFFF0')).toBe(0x20);
    expect(walBehind('0/3000148', '0/3000100')).toBe(0x48);
  });

  it('ignores a page header a primary has started and no record yet (24 bytes; 40 at a segment start)', () => {
    expect(walBehind('0/3000028', '0/3000000')).toBe(0);
    expect(walBehind('0/3002018', '0/3002000')).toBe(0);
    // but not a record past the header, nor a gap from a position that is not a page start
    expect(walBehind('0/3000060', '0/3000000')).toBe(0x60);
    expect(walBehind('0/3000128', '0/3000100')).toBe(0x28);
  });
});
