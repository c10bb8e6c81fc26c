import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { nightlySchedule } from './catalog.ts';
import { createEventManager } from './event-manager.ts';
import type { TestApi } from './local-api.ts';
import type { TestPostgres } from './postgres.ts';

/**
 * What most workflow tests start from, through the API as an operator would: an Event Manager database `app`
 * (PRODUCTION) and an empty `staging` server database, the DR config naming both (and a files tree, if
 * given), a LOCAL target `primary`, the `nightly` schedule, and one backup taken. Returns that backup's id.
 */
export async function deployWithOneBackup(
  api: TestApi,
  pg: TestPostgres,
  options: { files?: string } = {},
): Promise<string> {
  await pg.createDatabase('app');
  await pg.createDatabase('staging');
  await createEventManager(pg, 'app');
  const work = await mkdtemp(join(tmpdir(), 'dr-deployment-'));
  const setup: [string, unknown][] = [
    [
      '/api/dr/config',
      {
        rto: 4,
        rpo: 1,
        notificationEmails: ['ops@example.com'],
        source: {
          database: { url: pg.url('app') },
          ...(options.files ? { files: { type: 'directory', path: options.files } } : {}),
        },
        environments: { STAGING: { database: { url: pg.url('staging') } } },
      },
    ],
    ['/api/dr/targets', { id: 'primary', targetType: 'LOCAL', config: { path: join(work, 'repo') } }],
    ['/api/dr/schedules', nightlySchedule(['primary'])],
  ];
  for (const [path, body] of setup) expect((await api.call('POST', path, body)).status).toBe(201);
  const started = await api.call('POST', '/api/dr/schedules/nightly/execute');
  expect(started.status).toBe(202);
  await api.runtime.idle();
  expect((await api.call('GET', `/api/dr/backups/${started.body.id}`)).body.status).toBe('SUCCESS');
  return started.body.id as string;
}
