import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

/**
 * The import rules `npm run lint` checks (.dependency-cruiser.cjs), run on small trees made for them: a
 * cycle of type-only imports and a layer crossed each fail it; a tree that keeps the rules passes.
 */
const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '..', '..');
const DEPCRUISE = join(ROOT, 'node_modules', '.bin', 'depcruise');

async function tree(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'dr-structure-'));
  await writeFile(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { allowImportingTsExtensions: true, noEmit: true, module: 'nodenext' },
    }),
  );
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), text);
  }
  return dir;
}

async function lint(dir: string): Promise<{ code: number; output: string }> {
  try {
    const { stdout } = await run(
      DEPCRUISE,
      ['functions', '--config', join(ROOT, '.dependency-cruiser.cjs')],
      {
        cwd: dir,
      },
    );
    return { code: 0, output: stdout };
  } catch (error) {
    const failure = error as { code: number; stdout: string; stderr: string };
    return { code: failure.code, output: failure.stdout + failure.stderr };
  }
}

describe('import rules', () => {
  it('fail on a cycle, even one of type-only imports', async () => {
    const dir = await tree({
      'functions/core/context.ts':
        "import type { Record } from './services/a.ts';\nexport type Context = { r?: Record };\n",
      'functions/core/services/a.ts':
        "import type { Context } from '../context.ts';\nexport type Record = { c?: Context };\n",
    });
    const { code, output } = await lint(dir);
    expect(code).not.toBe(0);
    expect(output).toContain('no-circular');
    expect(output).toContain('functions/core/context.ts');
  });

  it('fail when a lower layer imports a higher one (the engine importing core/)', async () => {
    const dir = await tree({
      'functions/core/errors.ts': 'export class NotFoundError extends Error {}\n',
      'functions/engine/restore.ts':
        "import { NotFoundError } from '../core/errors.ts';\nexport const e = NotFoundError;\n",
      'functions/storage/s3.ts': "import { e } from '../engine/restore.ts';\nexport const s = e;\n",
    });
    const { code, output } = await lint(dir);
    expect(code).not.toBe(0);
    expect(output).toContain('engine-below-control-plane');
    expect(output).toContain('storage-is-lowest');
  });

  it('fail when core/ uses an AWS SDK (its AWS implementations belong in aws/)', async () => {
    const dir = await tree({
      'functions/core/store/table.ts':
        "import { DynamoDBClient } from '@aws-sdk/client-dynamodb';\nexport const client = new DynamoDBClient({});\n",
    });
    const { code, output } = await lint(dir);
    expect(code).not.toBe(0);
    expect(output).toContain('core-is-not-aws');
  });

  it('pass a tree whose imports point down', async () => {
    const dir = await tree({
      'functions/storage/storage.ts': 'export interface Storage { name: string }\n',
      'functions/engine/backup.ts':
        "import type { Storage } from '../storage/storage.ts';\nexport const f = (s: Storage) => s.name;\n",
      'functions/core/services/backup-service.ts':
        "import { f } from '../../engine/backup.ts';\nexport const g = f;\n",
    });
    const { code, output } = await lint(dir);
    expect(output).toContain('no dependency violations');
    expect(code).toBe(0);
  });
});
