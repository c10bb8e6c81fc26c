import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson, GENESIS_HASH, hashEntry } from '../../functions/core/audit.ts';

describe('canonicalJson', () => {
  it.each([
    [
      'sorts keys at every level',
      { b: 1, a: { d: [1, { z: 0, y: 1 }], c: null } },
      '{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}',
    ],
    ['drops undefined like JSON does', { a: undefined, b: 'x' }, '{"b":"x"}'],
    ['keeps strings exact', { s: 'quote " and \\u00e9' }, '{"s":"quote \\" and \\\\u00e9"}'],
  ])('%s', (_case, value, expected) => {
    expect(canonicalJson(value)).toBe(expected);
  });

  it('is independent of key order and round-trips through JSON', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const reordered = JSON.parse(JSON.stringify(value, (_key, v: unknown) => reorder(v))) as unknown;
        expect(canonicalJson(reordered)).toBe(canonicalJson(value));
        expect(JSON.parse(canonicalJson(value))).toEqual(JSON.parse(JSON.stringify(value)));
      }),
    );
  });
});

describe('hashEntry', () => {
  it('matches a golden vector computed independently (Python: json.dumps(sort_keys=True), sha256)', () => {
    const body = {
      seq: 1,
      at: '2026-01-01T00:00:00.000Z',
      actor: { principal: 'p' },
      action: 'config.create',
      resource: 'config',
      prevHash: GENESIS_HASH,
    };
    expect(canonicalJson(body)).toBe(
      '{"action":"config.create","actor":{"principal":"p"},"at":"2026-01-01T00:00:00.000Z","prevHash":"0000000000000000000000000000000000000000000000000000000000000000","resource":"config","seq":1}',
    );
    expect(hashEntry(body)).toBe('783fcfa84adb462dea2c6091f02a2c4802273b9d7549d07c7407a874f3dc04e4');
    expect(hashEntry({ ...body, resource: 'target/x' })).not.toBe(hashEntry(body));
  });
});

function reorder(value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  return Object.fromEntries(Object.entries(value).reverse());
}
