import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SecretStoreError } from '../../functions/core/errors.ts';
import { LocalSecretStore } from '../../functions/core/secrets/local-secret-store.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dr-secrets-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('LocalSecretStore', () => {
  it('round-trips values, sealed on disk, under a hashed file name', async () => {
    // Prepare
    const store = await LocalSecretStore.open(join(dir, 's'), join(dir, 'key'));
    // Act
    await store.put('dr/target/abc/1', { password: 'hunter2-very-secret' });
    // Assess
    expect(await store.get('dr/target/abc/1')).toEqual({ password: 'hunter2-very-secret' });
    const files = await readdir(join(dir, 's'));
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^[0-9a-f]{64}\.json$/);
    expect(await readFile(join(dir, 's', files[0]!), 'utf8')).not.toContain('hunter2');
    expect((await readFile(join(dir, 'key'), 'utf8')).trim()).toHaveLength(44);
  });

  it('answers undefined for an unknown name and deletes idempotently', async () => {
    const store = await LocalSecretStore.open(join(dir, 's'), join(dir, 'key'));
    expect(await store.get('nope')).toBeUndefined();
    await store.put('a', { x: '1' });
    await store.delete('a');
    await store.delete('a');
    expect(await store.get('a')).toBeUndefined();
  });

  it('reuses the generated key on the next start', async () => {
    const first = await LocalSecretStore.open(join(dir, 's'), join(dir, 'key'));
    await first.put('a', { x: '1' });
    const second = await LocalSecretStore.open(join(dir, 's'), join(dir, 'key'));
    expect(await second.get('a')).toEqual({ x: '1' });
  });

  it('refuses with a clear error, and no value, under the wrong key', async () => {
    const right = await LocalSecretStore.open(join(dir, 's'), join(dir, 'key'));
    await right.put('a', { password: 'hunter2' });
    const wrong = await LocalSecretStore.open(
      join(dir, 's'),
      join(dir, 'other'),
      randomBytes(32).toString('base64'),
    );
    const error = await wrong.get('a').catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(SecretStoreError);
    expect((error as Error).message).toContain('wrong key');
    expect(JSON.stringify(error)).not.toContain('hunter2');
  });

  it('binds each file to its secret name: a file moved to another name does not decrypt', async () => {
    const store = await LocalSecretStore.open(join(dir, 's'), join(dir, 'key'));
    await store.put('a', { x: '1' });
    await store.put('b', { x: '2' });
    const [fileA] = await readdir(join(dir, 's')).then((files) => files.sort());
    const files = await readdir(join(dir, 's'));
    const other = files.find((file) => file !== fileA)!;
    await rename(join(dir, 's', fileA!), join(dir, 's', other));
    const results = await Promise.allSettled([store.get('a'), store.get('b')]);
    expect(results.some((result) => result.status === 'rejected')).toBe(true);
  });

  it('refuses a key of the wrong size', async () => {
    await expect(
      LocalSecretStore.open(join(dir, 's'), join(dir, 'key'), Buffer.alloc(16).toString('base64')),
    ).rejects.toThrow('32 bytes');
  });
});
