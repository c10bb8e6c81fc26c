import { join, resolve } from 'node:path';
import { optionalEnv, portEnv } from '../core/env.ts';
import { createLogger, parseLevel } from '../core/log.ts';
import { buildDashboard } from '../../dashboard/build.ts';
import { startLocalRuntime } from './runtime.ts';

/**
 * `npm start`: the local runtime. Settings (environment):
 *   PORT          HTTP port (default 3000)
 *   DR_HOST       address to listen on (default 127.0.0.1: loopback only)
 *   DR_DATA_DIR   where state persists (default ./.dr)
 *   DR_API_TOKEN  bearer token for the API (an admin); generated on first start and kept in DR_DATA_DIR when unset
 *   DR_OPERATOR_TOKEN, DR_VIEWER_TOKEN
 *                 tokens for callers who may run backups, restores into STAGING and tests, or only read
 *   DR_SECRET_KEY base64 key for the local secret store; generated into DR_DATA_DIR when unset
 *   DR_MASTER_KEY the backup repositories' master key (64 hex); generated into DR_DATA_DIR/master.key when unset
 *   DR_SCRATCH_DIR where a recovery-time test restores its scratch files (default: the temporary directory)
 *   DR_HOOKS_DIR   where command hooks' executables live (unset: command hooks are refused)
 *   LOG_LEVEL     debug | info | warn | error (default info)
 */
const logger = createLogger(parseLevel(optionalEnv('LOG_LEVEL')));
const dataDir = resolve(optionalEnv('DR_DATA_DIR') ?? '.dr');

// The dashboard is built from its sources at start (esbuild, a second or less)
const dashboard = await buildDashboard();
const runtime = await startLocalRuntime({
  dashboard,
  dataDir,
  port: portEnv('PORT', 3000),
  host: optionalEnv('DR_HOST') ?? '127.0.0.1',
  token: optionalEnv('DR_API_TOKEN'),
  ...(optionalEnv('DR_SCRATCH_DIR') ? { scratchDir: optionalEnv('DR_SCRATCH_DIR')! } : {}),
  ...(optionalEnv('DR_HOOKS_DIR') ? { hooksDir: optionalEnv('DR_HOOKS_DIR')! } : {}),
  roleTokens: (['operator', 'viewer'] as const).flatMap((role) => {
    const token = optionalEnv(`DR_${role.toUpperCase()}_TOKEN`);
    return token ? [{ token, role }] : [];
  }),
  secretKey: optionalEnv('DR_SECRET_KEY'),
  masterKey: optionalEnv('DR_MASTER_KEY'),
  logger,
});

console.log(`DR Automation (local) listening on ${runtime.url}/api/dr — data in ${dataDir}`);
console.log(`Dashboard: ${runtime.url}/ (sign in with the API token)`);
// The token itself is never printed (output ends up in logs): only where it is.
if (runtime.tokenGenerated) {
  console.log(`API token: generated on first start into ${join(dataDir, 'api-token')} (mode 0600)`);
} else if (optionalEnv('DR_API_TOKEN') === undefined) {
  console.log(`API token: in ${join(dataDir, 'api-token')}`);
}
console.log(
  `Try: curl -H "Authorization: Bearer $(cat ${join(dataDir, 'api-token')})" ${runtime.url}/api/dr/config`,
);

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    logger.info('shutting down', { signal });
    runtime.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
