import { z } from 'zod';
import { issue, text, type TargetDriver } from '../driver.ts';
import { hostname, port, remotePath, secret } from '../fields.ts';

const sftpConfig = z.strictObject({
  host: hostname,
  port: port.default(22),
  username: z.string().min(1).max(256),
  /** An OpenSSH/PEM private key, or a path to one on the machine that runs backups. */
  privateKey: secret,
  passphrase: secret,
  password: secret,
  path: remotePath,
  /**
   * The server's host key as `ssh-keygen -lf` prints it (SHA256:…), checked on every connection. Without it
   * connections are refused, and the error (and the target check) shows the key the server presented.
   */
  hostKeyFingerprint: z
    .string()
    .regex(/^SHA256:[A-Za-z0-9+/]{43}=?$/, {
      error: "must be a SHA256 fingerprint such as 'SHA256:…' (ssh-keygen -lf)",
    })
    .optional(),
});

/** SFTP (SSH), the server's host key pinned. */
export const sftpDriver = {
  type: 'SFTP',
  config: sftpConfig,
  secretFields: ['privateKey', 'passphrase', 'password'],
  destinationFields: ['host', 'port', 'username', 'hostKeyFingerprint'],
  requirements(_config, secrets) {
    const issues = [];
    if (!secrets.has('privateKey') && !secrets.has('password'))
      issues.push(issue('privateKey', 'one of privateKey or password is required'));
    if (secrets.has('passphrase') && !secrets.has('privateKey'))
      issues.push(issue('passphrase', 'only applies with a privateKey'));
    return issues;
  },
  warnings: (config) =>
    config.hostKeyFingerprint === undefined
      ? [
          'no hostKeyFingerprint: connections are refused until it is set; POST …/check shows the key the server presents',
        ]
      : [],
  async open(spec, secrets, opening) {
    const { SftpStorage } = await import('./sftp-storage.ts');
    const config = spec.config;
    const privateKey = secrets.privateKey ?? text(config.privateKey);
    const passphrase = secrets.passphrase ?? text(config.passphrase);
    const password = secrets.password ?? text(config.password);
    return new SftpStorage({
      host: String(config.host),
      port: Number(config.port ?? 22),
      username: String(config.username),
      path: String(config.path),
      // The key's contents, or the path of a key file on the machine that runs backups.
      ...(privateKey
        ? privateKey.includes('PRIVATE KEY')
          ? { privateKey }
          : { privateKeyFile: privateKey }
        : {}),
      ...(passphrase ? { passphrase } : {}),
      ...(password ? { password } : {}),
      ...(text(config.hostKeyFingerprint) ? { hostKeyFingerprint: text(config.hostKeyFingerprint)! } : {}),
      ...(spec.name ? { name: spec.name } : {}),
      ...(opening.egress ? { egress: opening.egress } : {}),
    });
  },
} satisfies TargetDriver;
