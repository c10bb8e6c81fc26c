import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FtpStorage, type FtpStorageOptions } from '../../functions/storage/ftp/ftp-storage.ts';
import { StorageError } from '../../functions/storage/storage.ts';
import { startFtp, type TestFtp } from '../support/ftp-server.ts';
import { storageConformance } from '../support/storage-conformance.ts';
import { engineEndToEnd } from '../support/storage-end-to-end.ts';
import { checked } from '../../functions/storage/facade.ts';

const ftp = (server: TestFtp, path: string, overrides: Partial<FtpStorageOptions> = {}) =>
  new FtpStorage({
    host: server.host,
    port: server.port,
    username: server.username,
    password: server.password,
    path,
    tls: 'required',
    allowSelfSignedCertificate: true,
    ...overrides,
  });

storageConformance(
  'FTP (explicit TLS)',
  async () => {
    const server = await startFtp({ tls: true });
    const storage = ftp(server, '/conformance');
    const wrong = ftp(server, '/conformance', { password: 'wrong-secret' });
    return {
      storage,
      withWrongCredentials: wrong,
      cleanup: async () => {
        await Promise.all([storage.close(), wrong.close()]);
        await server.stop();
      },
    };
  },
  { credentials: true },
);

describe('FTP transport security', () => {
  let plain: TestFtp;
  let secure: TestFtp;
  beforeAll(async () => {
    [plain, secure] = await Promise.all([startFtp(), startFtp({ tls: true })]);
  });
  afterAll(async () => {
    await Promise.all([plain?.stop(), secure?.stop()]);
  });

  it('uses TLS where the server offers it, and records no warning', async () => {
    const storage = ftp(secure, '/auto', { tls: 'auto' });
    await storage.put('a/object', Buffer.from('over TLS'));
    expect((await checked(storage).read('a/object')).toString()).toBe('over TLS');
    expect(storage.warnings).toEqual([]);
    await storage.close();
  });

  it('with tls auto, falls back to clear text on a server without TLS and records a warning', async () => {
    const storage = ftp(plain, '/auto', { tls: 'auto' });
    await storage.put('a/object', Buffer.from('in clear'));
    expect(storage.warnings.join()).toContain('travel in clear');
    await storage.close();
  });

  it('with tls required, refuses a server without TLS before sending the password', async () => {
    const storage = ftp(plain, '/required', { tls: 'required' });
    const error = await checked(storage)
      .read('a/object')
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    expect(error).toMatchObject({ kind: 'authentication' });
    expect((error as Error).message).toContain('explicit TLS failed');
    await storage.close();
  });

  it('refuses a certificate no CA vouches for unless told otherwise', async () => {
    const storage = ftp(secure, '/strict', { allowSelfSignedCertificate: false });
    const error = await checked(storage)
      .read('a/object')
      .catch((caught: unknown) => caught);
    expect(error).toMatchObject({ kind: 'authentication' });
    expect((error as Error).message).toMatch(/certificate/i);
    await storage.close();
  });

  it('reports an unreachable server as a network error', async () => {
    const storage = ftp(plain, '/x', { port: 1, tls: 'off' });
    expect(
      await checked(storage)
        .read('a/object')
        .catch((caught: unknown) => caught),
    ).toMatchObject({
      kind: 'network',
    });
  });

  it('serves many small ranges of one pack from one transfer, and ranges of large objects by REST', async () => {
    const storage = ftp(secure, '/ranges');
    const pack = Buffer.alloc(8 * 1024 * 1024);
    for (let index = 0; index < pack.length; index += 4) pack.writeUInt32LE(index, index);
    await storage.put('packs/p', pack);
    const before = secure.retrievals();
    const reads = await Promise.all(
      Array.from({ length: 64 }, (_, index) =>
        checked(storage).read('packs/p', { offset: index * 131_072 + 3, length: 1000 }),
      ),
    );
    reads.forEach((bytes, index) =>
      expect(bytes.equals(pack.subarray(index * 131_072 + 3, index * 131_072 + 1003))).toBe(true),
    );
    expect(secure.retrievals() - before).toBe(1);
    // A range of a large object is read from its offset (REST) and the transfer cut after its last byte.
    const large = Buffer.alloc(20 * 1024 * 1024, 7);
    large.write('middle', 10 * 1024 * 1024);
    await storage.put('packs/large', large);
    expect(
      (await checked(storage).read('packs/large', { offset: 10 * 1024 * 1024, length: 6 })).toString(),
    ).toBe('middle');
    expect(
      (await checked(storage).read('packs/large', { offset: 0, length: 3 })).equals(Buffer.alloc(3, 7)),
    ).toBe(true);
    // A replaced object is never served from what was fetched before.
    await storage.put('packs/p', Buffer.from('replaced'));
    expect((await checked(storage).read('packs/p', { offset: 0, length: 8 })).toString()).toBe('replaced');
    await storage.close();
  });
});

engineEndToEnd('FTP', async () => {
  const server = await startFtp({ tls: true });
  const opened: FtpStorage[] = [];
  return {
    open: () => {
      const storage = ftp(server, '/event-manager');
      opened.push(storage);
      return storage;
    },
    cleanup: async () => {
      await Promise.all(opened.map((storage) => storage.close()));
      await server.stop();
    },
  };
});
