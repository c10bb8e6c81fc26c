import { AssetHashType, Duration, RemovalPolicy } from 'aws-cdk-lib';
import { PolicyStatement, Role, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { Architecture, Code, Function as LambdaFunction, Runtime, Tracing } from 'aws-cdk-lib/aws-lambda';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface DrFunctionProps {
  /** Entry file, relative to the repository root (for example `functions/api/handler.ts`). */
  readonly entry: string;
  readonly description: string;
  /** @default 512 */
  readonly memorySize?: number;
  /** @default Duration.seconds(29) (API Gateway's integration limit) */
  readonly timeout?: Duration;
  readonly environment?: Record<string, string>;
  /** @default RetentionDays.ONE_YEAR */
  readonly logRetention?: RetentionDays;
}

/** The function's code: `entry` bundled by `infra/bundle.ts` (see there for how, and what is left out). */
function bundled(entry: string): Code {
  return Code.fromAsset(ROOT, {
    assetHashType: AssetHashType.OUTPUT,
    bundling: {
      image: Runtime.NODEJS_24_X.bundlingImage,
      // Part of the asset's cache key: without it, two functions (the same source directory, the same
      // options) would share the first one's bundle
      environment: { DR_ENTRY: entry },
      local: {
        tryBundle(outputDir: string): boolean {
          execFileSync(process.execPath, [join(ROOT, 'infra', 'bundle.ts'), join(ROOT, entry), outputDir], {
            stdio: 'inherit',
          });
          return true;
        },
      },
    },
  });
}

/**
 * Every DR Lambda the same way: Node.js 24 on arm64, bundled locally by esbuild as ESM (no Docker), X-Ray
 * tracing, its own log group with a retention, and a role that may write only to that log group (instead of
 * the AWSLambdaBasicExecutionRole managed policy, which may write to any).
 */
export class DrFunction extends Construct {
  readonly function: LambdaFunction;
  readonly logGroup: LogGroup;
  readonly role: Role;

  constructor(scope: Construct, id: string, props: DrFunctionProps) {
    super(scope, id);
    if (!props.entry.endsWith('.ts'))
      throw new Error(`DrFunction ${id}: entry must be a .ts file, got '${props.entry}'`);

    this.logGroup = new LogGroup(this, 'Logs', {
      retention: props.logRetention ?? RetentionDays.ONE_YEAR,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const role = (this.role = new Role(this, 'Role', {
      assumedBy: new ServicePrincipal('lambda.amazonaws.com'),
      description: `${props.description} (execution role)`,
    }));
    role.addToPolicy(
      new PolicyStatement({
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [this.logGroup.logGroupArn],
      }),
    );

    this.function = new LambdaFunction(this, 'Function', {
      code: bundled(props.entry),
      handler: 'index.handler',
      description: props.description,
      runtime: Runtime.NODEJS_24_X,
      architecture: Architecture.ARM_64,
      memorySize: props.memorySize ?? 512,
      timeout: props.timeout ?? Duration.seconds(29),
      tracing: Tracing.ACTIVE,
      role,
      logGroup: this.logGroup,
      // MALLOC_ARENA_MAX: see functions/cli/drctl.ts (threads freeing each other's chunks)
      environment: { NODE_OPTIONS: '--enable-source-maps', MALLOC_ARENA_MAX: '2', ...props.environment },
    });
  }
}
