import { randomBytes } from 'node:crypto';
import { expect, it } from 'vitest';
import { signDownload, verifyDownload } from '../../functions/worker/download.ts';

const secret = randomBytes(32);
const now = new Date('2026-11-25T03:00:00Z');
const later = new Date(now.getTime() + 15 * 60_000);

it('accepts the link it signed until it expires', () => {
  const token = signDownload(secret, '20261125T020000000Z-abcdef', 'database', later);
  expect(verifyDownload(secret, token, now)).toEqual({
    backupId: '20261125T020000000Z-abcdef',
    artifact: 'database',
  });
  expect(verifyDownload(secret, token, new Date(later.getTime() + 1))).toBeUndefined();
});

it('refuses every changed last character, including spellings of the same signature bytes', () => {
  // A 32-byte HMAC is 43 base64url characters: the last one carries 2 unused bits, so 4 characters decode
  // to the same bytes. Each of the 63 others must be refused.
  const token = signDownload(secret, '20261125T020000000Z-abcdef', 'database', later);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const accepted = [...alphabet].filter(
    (c) => verifyDownload(secret, token.slice(0, -1) + c, now) !== undefined,
  );
  expect(accepted).toEqual([token.at(-1)]);
  expect(verifyDownload(randomBytes(32), token, now)).toBeUndefined();
});
