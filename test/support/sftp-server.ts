import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, stopChild, waitForPort } from './ports.ts';

const run = promisify(execFile);
const SSHD = '/usr/sbin/sshd';

/**
 * A real OpenSSH server (Debian's openssh-server, installed by .ci/run) on 127.0.0.1 and a random port, with
 * a throwaway host key, a client key protected by a passphrase, and a directory for repositories. sshd runs as
 * root (the tests do), lets the current user in by key only, and serves SFTP with OpenSSH's internal-sftp.
 */
export interface TestSftp {
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly username: string;
  /** The client's private key (OpenSSH format, encrypted with `passphrase`). */
  readonly privateKey: string;
  readonly passphrase: string;
  /** A valid key the server does not accept. */
  readonly strangerKey: string;
  /** The host key's fingerprint, as `ssh-keygen -lf` prints it. */
  readonly hostKeyFingerprint: string;
  /** A fingerprint of another host key (what a replaced or impostor server shows). */
  readonly otherFingerprint: string;
  /** An empty directory on the server for the test's repositories. */
  readonly directory: string;
  stop(): Promise<void>;
}

async function keygen(file: string, passphrase = ''): Promise<void> {
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', passphrase, '-C', 'dr-test', '-f', file]);
}

async function fingerprint(publicKey: string): Promise<string> {
  const { stdout } = await run('ssh-keygen', ['-l', '-E', 'sha256', '-f', publicKey]);
  return stdout.split(' ')[1]!;
}

export async function startSftp(): Promise<TestSftp> {
  if (!existsSync(SSHD))
    throw new Error(`${SSHD} is missing: .ci/run installs it (apt-get install openssh-server)`);
  const home = await mkdtemp(join(tmpdir(), 'dr-sshd-'));
  const passphrase = `pass-${Math.random().toString(36).slice(2)}`;
  await Promise.all([
    keygen(join(home, 'host')),
    keygen(join(home, 'other-host')),
    keygen(join(home, 'client'), passphrase),
    keygen(join(home, 'stranger')),
  ]);
  await writeFile(join(home, 'authorized_keys'), await readFile(join(home, 'client.pub')));
  const directory = join(home, 'data');
  await mkdir(directory);
  // The privilege-separation directory sshd insists on.
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
  const port = await freePort();
  await writeFile(
    join(home, 'sshd_config'),
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(home, 'host')}`,
      `PidFile ${join(home, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(home, 'authorized_keys')}`,
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'PermitRootLogin prohibit-password',
      'StrictModes no',
      'MaxStartups 100',
      'MaxSessions 100',
      'Subsystem sftp internal-sftp',
      '',
    ].join('\n'),
  );
  const child = spawn(SSHD, ['-D', '-e', '-f', join(home, 'sshd_config')], { stdio: 'ignore' });
  child.on('error', () => undefined);
  await waitForPort(port, child, 'sshd');
  return {
    host: '127.0.0.1',
    port,
    username: userInfo().username,
    privateKey: await readFile(join(home, 'client'), 'utf8'),
    passphrase,
    strangerKey: await readFile(join(home, 'stranger'), 'utf8'),
    hostKeyFingerprint: await fingerprint(join(home, 'host.pub')),
    otherFingerprint: await fingerprint(join(home, 'other-host.pub')),
    directory,
    stop: async () => {
      await stopChild(child);
      await rm(home, { recursive: true, force: true });
    },
  };
}
