import { z } from 'zod';
import { issue, text, type TargetDriver } from '../driver.ts';
import { hostname, port, remotePath, secret } from '../fields.ts';

const ftpConfig = z.strictObject({
  host: hostname,
  port: port.default(21),
  username: z.string().min(1).max(256),
  password: secret,
  path: remotePath,
  /**
   * `auto` (default) upgrades to explicit TLS when the server offers it; `required` refuses a server that
   * does not; `off` sends credentials in clear and is flagged with a warning.
   */
  tls: z.enum(['auto', 'required', 'off']).default('auto'),
  /** Accept a self-signed server certificate (test servers only). */
  allowSelfSignedCertificate: z.boolean().default(false),
});

/** FTP, with explicit TLS when the server offers it. */
export const ftpDriver = {
  type: 'FTP',
  config: ftpConfig,
  secretFields: ['password'],
  destinationFields: ['host', 'port', 'username', 'tls', 'allowSelfSignedCertificate'],
  requirements: (_config, secrets) => (secrets.has('password') ? [] : [issue('password', 'is required')]),
  warnings: (config) =>
    config.tls === 'off'
      ? [
          'FTP without TLS sends the password and the backup data in clear; prefer tls "auto" or "required", or SFTP',
        ]
      : [],
  async open(spec, secrets, opening) {
    const { FtpStorage } = await import('./ftp-storage.ts');
    const config = spec.config;
    const password = secrets.password ?? text(config.password) ?? '';
    const tls = config.tls === 'off' || config.tls === 'required' ? config.tls : 'auto';
    return new FtpStorage({
      host: String(config.host),
      port: Number(config.port ?? 21),
      username: String(config.username),
      password,
      path: String(config.path),
      tls,
      ...(config.allowSelfSignedCertificate === true ? { allowSelfSignedCertificate: true } : {}),
      ...(spec.name ? { name: spec.name } : {}),
      ...(opening.egress ? { egress: opening.egress } : {}),
    });
  },
} satisfies TargetDriver;
