// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';

/** Runtime code (handlers, domain, local runtime) must never depend on the CDK app or the CDK libraries. */
const noInfraInRuntime = {
  patterns: [
    { group: ['**/infra/**'], message: 'Runtime code must not import infra/ (layers point one way).' },
    {
      group: ['aws-cdk-lib', 'aws-cdk-lib/*', 'constructs', 'cdk-nag'],
      message: 'CDK belongs to infra/ only.',
    },
  ],
};

/** Domain code knows nothing about Lambda events, HTTP, middy or the local runtime. */
const domainOnly = {
  patterns: [
    ...noInfraInRuntime.patterns,
    {
      // The local *runtime* (functions/local), not the LOCAL storage adapter (functions/storage/local).
      group: ['**/api/**', '../local/**', '../../local/**'],
      message: 'Domain code must not import the API or local runtime layers.',
    },
    { group: ['@middy/*', 'aws-lambda'], message: 'Domain code must not know about Lambda or middy.' },
  ],
};

export default tseslint.config(
  { ignores: ['node_modules/', 'cdk.out/', '.dr/', 'coverage/', 'test-results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ['*.js', '.dependency-cruiser.cjs'] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-floating-promises': 'error',
      'no-console': 'off',
    },
  },
  { files: ['**/*.cjs'], languageOptions: { sourceType: 'commonjs', globals: { module: 'writable' } } },
  { files: ['functions/**/*.ts'], rules: { 'no-restricted-imports': ['error', noInfraInRuntime] } },
  { files: ['functions/core/**/*.ts'], rules: { 'no-restricted-imports': ['error', domainOnly] } },
  {
    files: ['functions/engine/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            ...domainOnly.patterns,
            { group: ['**/cli/**'], message: 'The engine must not import the CLI.' },
          ],
        },
      ],
    },
  },
  {
    files: ['functions/storage/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            ...domainOnly.patterns,
            { group: ['**/engine/**'], message: 'Storage adapters never import the engine.' },
          ],
        },
      ],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // vitest's expect(...).rejects and mocks trip this rule without adding safety in tests.
      '@typescript-eslint/unbound-method': 'off',
      // Tests read API responses as untyped JSON on purpose: the assertions are what check their shape.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      // Fakes implement Promise-returning interfaces with async functions that need no await.
      '@typescript-eslint/require-await': 'off',
    },
  },
  prettier,
);
