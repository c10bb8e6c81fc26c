/**
 * Builds the dashboard (Preact, Chart.js, Pico CSS) with esbuild into static files: index.html, app.js and
 * app.css. The local runtime serves them from memory (built at start); the CDK app writes them to a directory
 * for the S3 bucket behind CloudFront, with the config.json each deployment adds.
 */
import { copyFileSync, mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, buildSync, type BuildOptions } from 'esbuild';

export interface StaticFile {
  readonly body: Buffer;
  readonly contentType: string;
}

const here = dirname(fileURLToPath(import.meta.url));

const options: BuildOptions = {
  entryPoints: { app: join(here, 'src', 'main.tsx') },
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  loader: { '.css': 'css' },
  logLevel: 'silent',
  legalComments: 'none',
};

/** The files in memory (the local runtime). */
export async function buildDashboard(): Promise<Map<string, StaticFile>> {
  const result = await build({ ...options, outdir: '/dashboard', write: false });
  const files = new Map<string, StaticFile>();
  files.set('/index.html', {
    body: await readFile(join(here, 'index.html')),
    contentType: 'text/html; charset=utf-8',
  });
  for (const output of result.outputFiles) {
    const name = `/${output.path.split('/').at(-1)!}`;
    files.set(name, {
      body: Buffer.from(output.contents),
      contentType: name.endsWith('.css') ? 'text/css; charset=utf-8' : 'text/javascript; charset=utf-8',
    });
  }
  return files;
}

/** The files written into `dir` (the CDK app, at synth: a directory asset for the bucket). */
export function buildDashboardInto(dir: string): void {
  mkdirSync(dir, { recursive: true });
  buildSync({ ...options, outdir: dir, write: true });
  copyFileSync(join(here, 'index.html'), join(dir, 'index.html'));
}
