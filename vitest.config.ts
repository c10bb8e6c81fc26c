import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests start real servers; CDK tests bundle with esbuild. Both need more than the default 5 s.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // A focused or skipped test must never pass CI silently.
    allowOnly: false,
  },
});
