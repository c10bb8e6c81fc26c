import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SftpStorage, type SftpStorageOptions } from '../../functions/storage/sftp/sftp-storage.ts';
import { StorageError } from '../../functions/storage/storage.ts';
import { startSftp, type TestSftp } from '../support/sftp-server.ts';
import { storageConformance } from '../support/storage-conformance.ts';
import { engineEndToEnd } from '../support/storage-end-to-end.ts';
import { checked } from '../../functions/storage/facade.ts';

const sftp = (server: TestSftp, path: string, overrides: Partial<SftpStorageOptions> = {}) =>
  new SftpStorage({
    host: server.host,
    port: server.port,
    username: server.username,
    privateKey: server.privateKey,
    passphrase: server.passphrase,
    hostKeyFingerprint: server.hostKeyFingerprint,
    path: `${server.directory}/${path}`,
    ...overrides,
  });

storageConformance(
  'SFTP',
  async () => {
    const server = await startSftp();
    const storage = sftp(server, 'conformance');
    // A key the server does not know, offered with a passphrase the test could leak.
    const stranger = sftp(server, 'conformance', {
      privateKey: server.strangerKey,
      passphrase: 'wrong-secret',
    });
    return {
      storage,
      withWrongCredentials: stranger,
      cleanup: async () => {
        await Promise.all([storage.close(), stranger.close()]);
        await server.stop();
      },
    };
  },
  { credentials: true },
);

describe('SFTP host keys and credentials', () => {
  let server: TestSftp;
  beforeAll(async () => {
    server = await startSftp();
  });
  afterAll(async () => {
    await server?.stop();
  });

  async function failure(storage: SftpStorage): Promise<StorageError> {
    const error = await checked(storage)
      .read('any/key')
      .catch((caught: unknown) => caught);
    await storage.close();
    expect(error).toBeInstanceOf(StorageError);
    return error as StorageError;
  }

  it('refuses a server whose host key changed, naming both fingerprints', async () => {
    const error = await failure(sftp(server, 'keys', { hostKeyFingerprint: server.otherFingerprint }));
    expect(error.kind).toBe('authentication');
    expect(error.message).toContain('host key changed');
    expect(error.message).toContain(server.hostKeyFingerprint);
    expect(error.message).toContain(server.otherFingerprint);
  });

  it('refuses an unknown host key, showing it so that it can be confirmed and pinned', async () => {
    const { hostKeyFingerprint: _, ...unpinned } = {
      host: server.host,
      port: server.port,
      username: server.username,
      privateKey: server.privateKey,
      passphrase: server.passphrase,
      hostKeyFingerprint: undefined,
      path: `${server.directory}/keys`,
    };
    const error = await failure(new SftpStorage(unpinned));
    expect(error.kind).toBe('authentication');
    expect(error.message).toContain(`the server's host key is ${server.hostKeyFingerprint}`);
    expect(error.message).toContain('hostKeyFingerprint');
  });

  it('reports a wrong key passphrase as an authentication error without the passphrase', async () => {
    const error = await failure(sftp(server, 'keys', { passphrase: 'wrong-secret-passphrase' }));
    expect(error.kind).toBe('authentication');
    expect(error.message).not.toContain('wrong-secret-passphrase');
    expect(error.message).not.toContain('PRIVATE KEY');
  });

  it('reports an unreachable server as a network error', async () => {
    const error = await failure(sftp(server, 'keys', { port: 1, connectTimeoutMs: 2000 }));
    expect(error.kind).toBe('network');
  });

  it('reconnects after the connection drops', async () => {
    const storage = sftp(server, 'reconnect');
    await storage.put('a/object', Buffer.from('before'));
    await storage.close();
    expect((await checked(storage).read('a/object')).toString()).toBe('before');
    expect((await storage.usage()).bytesFree).toBeGreaterThan(0);
    await storage.close();
  });
});

engineEndToEnd('SFTP', async () => {
  const server = await startSftp();
  const opened: SftpStorage[] = [];
  return {
    open: () => {
      const storage = sftp(server, 'event-manager');
      opened.push(storage);
      return storage;
    },
    cleanup: async () => {
      await Promise.all(opened.map((storage) => storage.close()));
      await server.stop();
    },
  };
});
