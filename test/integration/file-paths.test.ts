import { chmod, link, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../functions/engine/backup.ts';
import { RestoreError } from '../../functions/engine/errors.ts';
import { restoreFiles } from '../../functions/engine/restore.ts';
import { newRepository } from '../support/engine.ts';
import { fieldsOf, startTestApi, type TestApi } from '../support/local-api.ts';

/**
 * Files sources and restore destinations confined to the operator's roots (the test runtime's root is the
 * temporary directory), never the data directory; extraction that never follows a link it did not make and
 * never hands out setuid bits.
 */
let api: TestApi;
let work: string;
beforeAll(async () => {
  api = await startTestApi();
  work = await mkdtemp(join(tmpdir(), 'dr-paths-'));
});
afterAll(async () => {
  await api?.close();
});

const filesAt = (path: string) => ({ source: { files: { type: 'directory', path } } });

/** A files source with one file, a LOCAL target and a FULL schedule on it (returns the schedule's id). */
async function scheduleFor(uploads: string, name: string): Promise<string> {
  await mkdir(uploads);
  await writeFile(join(uploads, 'a.txt'), 'a');
  expect((await api.call('POST', '/api/dr/config', filesAt(uploads))).status).toBeLessThan(300);
  const target = { id: `${name}-local`, targetType: 'LOCAL', config: { path: join(work, `${name}-repo`) } };
  expect((await api.call('POST', '/api/dr/targets', target)).status).toBe(201);
  const schedule = {
    id: `${name}-full`,
    name: 'full',
    scheduleType: 'FULL',
    cronExpression: '0 2 * * *',
    targets: [target.id],
  };
  expect((await api.call('POST', '/api/dr/schedules', schedule)).status).toBe(201);
  return schedule.id;
}

/** Runs the schedule now and answers its catalog entry, and what reached the target's backups/. */
async function runNow(schedule: string, name: string): Promise<{ run: any; stored: string[] }> {
  const started = await api.call('POST', `/api/dr/schedules/${schedule}/execute`);
  expect(started.status).toBe(202);
  await api.runtime.idle();
  const run = (await api.call('GET', `/api/dr/backups/${started.body.id}`)).body;
  const listed = await readdir(join(work, `${name}-repo`), { recursive: true }).catch(() => []);
  return { run, stored: listed.map(String).filter((entry) => entry.startsWith('backups/')) };
}

describe('path policy', () => {
  it('refuses a files source in, around or outside the roots, or through a link', async () => {
    const link = join(work, 'looks-innocent');
    await symlink(api.dataDir, link);
    for (const [path, reason] of [
      [api.dataDir, 'is inside'],
      [join(api.dataDir, 'secrets'), 'is inside'],
      ['/', 'contains'],
      ['/etc', 'is not under a files root'],
      [link, 'goes through a symbolic link'],
      [join(link, 'secrets'), 'goes through a symbolic link'],
    ] as const) {
      const response = await api.call('POST', '/api/dr/config', filesAt(path));
      expect(response.status, path).toBe(400);
      expect(fieldsOf(response)).toEqual(['source.files.path']);
      expect(response.body.error.details[0].message).toContain(reason);
    }
    const uploads = join(work, 'uploads');
    await mkdir(uploads);
    expect((await api.call('POST', '/api/dr/config', filesAt(uploads))).status).toBe(201);
  });

  it('fails a run whose files source became a link to the data directory after it was saved', async () => {
    const uploads = join(work, 'swapped');
    const schedule = await scheduleFor(uploads, 'paths');
    await rm(uploads, { recursive: true });
    await symlink(api.dataDir, uploads);
    const { run, stored } = await runNow(schedule, 'paths');
    expect(run.status).toBe('FAILED');
    expect(run.error).toContain('goes through a symbolic link');
    // Nothing of the data directory reached the target
    expect(stored).toEqual([]);
  });

  it('fails a run whose files source holds a hard link to a key in the data directory, and stores none of it', async () => {
    const uploads = join(work, 'hard-linked');
    const schedule = await scheduleFor(uploads, 'paths-hard');
    // Another name for the secret store's key, made inside an allowed root after the config was saved
    await link(join(api.dataDir, 'secret.key'), join(uploads, 'innocent.txt'));
    const { run, stored } = await runNow(schedule, 'paths-hard');
    expect(run.status).toBe('FAILED');
    expect(run.error).toContain('is a hard link to');
    expect(run.error).toContain('refusing to back it up');
    expect(stored).toEqual([]);

    // Hard links among the source's own files (or to files outside the data directory) are backed up
    await rm(join(uploads, 'innocent.txt'));
    await link(join(uploads, 'a.txt'), join(uploads, 'b.txt'));
    const again = await runNow(schedule, 'paths-hard');
    expect(again.run.status, again.run.error).toBe('SUCCESS');
    expect(again.stored.length).toBeGreaterThan(0);
  });

  it('refuses a restore destination with .., through a link, or in the data directory', async () => {
    const link = join(work, 'restore-link');
    await symlink('/etc', link);
    for (const [filesTo, reason] of [
      [`${work}/a/../../../etc`, "'..'"],
      [link, 'symbolic link'],
      [join(api.dataDir, 'restored'), 'is inside'],
      ['/root/restored', 'not under a files root'],
    ] as const) {
      const response = await api.call('POST', '/api/dr/restore', {
        backupId: '20261101T000000000Z-abcdef',
        scope: { database: false, files: true },
        destination: { environment: 'STAGING', filesTo },
      });
      expect(response.status, filesTo).toBe(400);
      expect(fieldsOf(response)).toEqual(['destination.filesTo']);
      expect(response.body.error.details[0].message).toContain(reason);
    }
  });
});

describe('file extraction', () => {
  it('never writes through a link already in the destination', async () => {
    const source = await mkdtemp(join(tmpdir(), 'dr-src-'));
    await mkdir(join(source, 'uploads'));
    await writeFile(join(source, 'uploads', 'note.txt'), 'planted?');
    const { repository } = await newRepository();
    const { manifest } = await backup(repository, { type: 'FULL', source: { files: source } });
    const destination = await mkdtemp(join(tmpdir(), 'dr-dest-'));
    const outside = await mkdtemp(join(tmpdir(), 'dr-outside-'));
    await symlink(outside, join(destination, 'uploads'));
    await expect(restoreFiles(repository, manifest, { destination })).rejects.toBeInstanceOf(RestoreError);
    expect(await readdir(outside)).toEqual([]);
  });

  it('clears setuid and setgid bits unless asked to keep them', async () => {
    const source = await mkdtemp(join(tmpdir(), 'dr-suid-'));
    await writeFile(join(source, 'tool'), '#!/bin/sh\n');
    await chmod(join(source, 'tool'), 0o6755);
    const { repository } = await newRepository();
    const { manifest } = await backup(repository, { type: 'FULL', source: { files: source } });
    const plain = await mkdtemp(join(tmpdir(), 'dr-plain-'));
    await restoreFiles(repository, manifest, { destination: plain });
    expect((await stat(join(plain, 'tool'))).mode & 0o7777).toBe(0o755);
    const kept = await mkdtemp(join(tmpdir(), 'dr-kept-'));
    await restoreFiles(repository, manifest, { destination: kept, preserveSpecialBits: true });
    expect((await stat(join(kept, 'tool'))).mode & 0o7777).toBe(0o6755);
  });
});
