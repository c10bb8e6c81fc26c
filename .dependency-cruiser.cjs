// @ts-check
/**
 * The direction of imports in functions/, checked by `npm run lint` (depcruise). Type-only imports count: a
 * circle of types is still a circle of modules a reader has to hold at once.
 *
 * The layers, lowest first: storage (adapters) < engine (repository format, backup, restore) < core (ports,
 * records, services: no AWS SDK) < aws (their AWS implementations), workflows, worker < api, cli, dispatcher,
 * local.
 */
/**
 * @param {string} name
 * @param {string} target
 * @param {string[]} forbidden
 * @param {string} comment
 * @returns {import('dependency-cruiser').IForbiddenRuleType}
 */
const layer = (name, target, forbidden, comment) => ({
  name,
  comment,
  severity: 'error',
  from: { path: `^functions/${target}/` },
  to: { path: `^functions/(${forbidden.join('|')})/` },
});

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'A module may not reach itself through its imports (type-only imports included).',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    layer(
      'storage-is-lowest',
      'storage',
      ['engine', 'core', 'aws', 'workflows', 'worker', 'api', 'cli', 'dispatcher', 'local'],
      'Storage adapters know nothing above them.',
    ),
    layer(
      'engine-below-control-plane',
      'engine',
      ['core', 'aws', 'workflows', 'worker', 'api', 'cli', 'dispatcher', 'local'],
      'The engine does not know the control plane: it is given what it needs.',
    ),
    layer(
      'core-below-entry-points',
      'core',
      ['aws', 'workflows', 'worker', 'api', 'cli', 'dispatcher', 'local'],
      'core/ holds ports, records and services: implementations and entry points depend on it, not the reverse.',
    ),
    {
      name: 'core-is-not-aws',
      comment:
        'core/ holds ports and services; their AWS implementations (DynamoDB, Secrets Manager, SES, ECS, Step Functions, CloudWatch) live in aws/.',
      severity: 'error',
      from: { path: '^functions/(core|engine)/' },
      to: { path: '(^|node_modules/)(@aws-sdk/|aws-embedded-metrics)' },
    },
    layer(
      'workflows-below-worker',
      'workflows',
      ['worker', 'api', 'cli', 'dispatcher', 'local'],
      'Workflows use core/ and the engine, never the worker or an entry point.',
    ),
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
