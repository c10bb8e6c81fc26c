/**
 * Bundles one Lambda entry with esbuild (run as a child process by `DrFunction`: CDK's local bundling is
 * synchronous, esbuild's plugins need its asynchronous API). Usage: `node infra/bundle.ts <entry> <outdir>`.
 *
 * ESM with code splitting, so that what a cold start loads (`index.mjs`) holds only what every request needs;
 * the target adapters (Azure, GCS, SSH, FTP) are chunks loaded when a target of their type is first opened.
 * The AWS SDK is bundled too: the versions tested are the versions deployed. Left out: ssh2's optional native
 * add-ons (cpu-features, sshcrypto.node), whose require() ssh2 wraps in try/catch, falling back to Node's own
 * crypto.
 */
import { build, type Plugin } from 'esbuild';
import { dirname, join, resolve, sep } from 'node:path';

/**
 * zod re-exports its ~50 message locales as a namespace (`export * as locales`), which esbuild cannot
 * tree-shake: a quarter of a megabyte in every bundle, though only English (which zod sets by default) is
 * ever used. Its internal `locales/index.js` is resolved to English alone.
 */
export const zodEnglishOnly: Plugin = {
  name: 'zod-english-only',
  setup(plugin) {
    plugin.onResolve({ filter: /(^|\/)locales\/index\.js$/ }, (args) => {
      if (!args.importer.includes(`${sep}node_modules${sep}zod${sep}`)) return undefined;
      return { path: dirname(resolve(args.resolveDir, args.path)), namespace: 'zod-locales' };
    });
    plugin.onLoad({ filter: /.*/, namespace: 'zod-locales' }, (args) => ({
      contents: `export { default as en } from ${JSON.stringify(join(args.path, 'en.js'))};`,
      resolveDir: args.path,
      loader: 'js',
    }));
  },
};

export async function bundle(entry: string, outdir: string): Promise<void> {
  await build({
    entryPoints: { index: entry },
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node24',
    minify: true,
    sourcemap: true,
    outdir,
    outExtension: { '.js': '.mjs' },
    chunkNames: 'chunks/[name]-[hash]',
    external: ['cpu-features', '*.node'],
    mainFields: ['module', 'main'],
    // CommonJS dependencies inside an ESM bundle still call require().
    banner: {
      js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);",
    },
    plugins: [zodEnglishOnly],
    logLevel: 'error',
  });
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  const [entry, outdir] = process.argv.slice(2);
  if (!entry || !outdir) throw new Error('usage: node infra/bundle.ts <entry> <outdir>');
  await bundle(entry, outdir);
}
