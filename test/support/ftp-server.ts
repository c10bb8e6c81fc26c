import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FtpSrv } from 'ftp-srv';
import { freePort } from './ports.ts';

const run = promisify(execFile);

/**
 * A real FTP server (ftp-srv, in this process) on 127.0.0.1 and random ports: one user with a throwaway
 * password, rooted in a temporary directory; with `tls`, explicit TLS (AUTH TLS) with a self-signed
 * certificate made by openssl for the test.
 */
export interface TestFtp {
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly username: string;
  readonly password: string;
  /** Downloads (RETR) the server has served so far. */
  retrievals(): number;
  stop(): Promise<void>;
}

/** ftp-srv logs through bunyan; the tests keep it quiet. */
const quiet: Record<string, unknown> = {};
for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal']) quiet[level] = () => undefined;
quiet.child = () => quiet;

export async function startFtp(options: { tls?: boolean } = {}): Promise<TestFtp> {
  const home = await mkdtemp(join(tmpdir(), 'dr-ftp-'));
  const root = join(home, 'root');
  await mkdir(root);
  let tls: { key: Buffer; cert: Buffer } | false = false;
  if (options.tls) {
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-keyout',
      join(home, 'key.pem'),
      '-out',
      join(home, 'cert.pem'),
    ]);
    tls = { key: await readFile(join(home, 'key.pem')), cert: await readFile(join(home, 'cert.pem')) };
  }
  const port = await freePort();
  const passive = await freePort();
  const username = 'backup';
  const password = `pw-${Math.random().toString(36).slice(2)}`;
  const server = new FtpSrv({
    url: `ftp://127.0.0.1:${port}`,
    pasv_url: '127.0.0.1',
    pasv_min: passive,
    pasv_max: passive + 100,
    anonymous: false,
    tls,
    log: quiet,
    greeting: 'dr-automation test server',
  });
  let retrievals = 0;
  server.on('login', ({ connection, username: user, password: given }, resolve, reject) => {
    connection.on('RETR', () => retrievals++);
    if (user === username && given === password) resolve({ root });
    else reject(new Error('invalid username or password'));
  });
  await server.listen();
  return {
    host: '127.0.0.1',
    port,
    username,
    password,
    retrievals: () => retrievals,
    stop: async () => {
      await server.close();
      await rm(home, { recursive: true, force: true });
    },
  };
}
