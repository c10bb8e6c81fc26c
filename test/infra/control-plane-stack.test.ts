import { readFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { App, Stack, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { AttributeType, Table } from 'aws-cdk-lib/aws-dynamodb';
import { Role } from 'aws-cdk-lib/aws-iam';
import { AwsSolutionsChecks } from 'cdk-nag';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { buildApp } from '../../infra/app.ts';

const run = promisify(execFile);

interface Report {
  pluginReports: {
    pluginName: string;
    conclusion: string;
    violations: unknown[];
    suppressedViolations: { ruleName: string; reason?: string; acknowledgedAt?: string }[];
  }[];
}

async function synthesize(
  context: Record<string, string> = {},
): Promise<{ outdir: string; template: Template; report: Report; app: App }> {
  const outdir = await mkdtemp(join(tmpdir(), 'dr-cdk-'));
  const { app, controlPlane } = buildApp(new App({ outdir, context }));
  const template = Template.fromStack(controlPlane);
  app.synth();
  const report = JSON.parse(await readFile(join(outdir, 'validation-report.json'), 'utf8')) as Report;
  return { outdir, template, report, app };
}

type Statement = { Action: string | string[]; Resource: unknown; Condition?: unknown };

/** Every statement of every inline policy, with the roles the policy is attached to (their logical ids). */
function statementsOf(template: Template): (Statement & { roles: string[] })[] {
  return Object.values(template.findResources('AWS::IAM::Policy')).flatMap((policy) =>
    (policy.Properties.PolicyDocument.Statement as Statement[]).map((statement) => ({
      ...statement,
      roles: (policy.Properties.Roles as { Ref: string }[]).map((role) => role.Ref),
    })),
  );
}
const actions = (statement: Statement) => [statement.Action].flat();

/** cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 informational; 1 is a fatal failure. */
async function cfnLint(file: string): Promise<{ code: number; output: string }> {
  try {
    const { stdout } = await run('cfn-lint', [file]);
    return { code: 0, output: stdout };
  } catch (error) {
    const failure = error as { code?: number | string; stdout?: string; stderr?: string };
    if (failure.code === 'ENOENT') {
      throw new Error('cfn-lint is not installed (see README, Development)', { cause: error });
    }
    return { code: Number(failure.code), output: `${failure.stdout ?? ''}${failure.stderr ?? ''}` };
  }
}

let synthesized: Awaited<ReturnType<typeof synthesize>>;
beforeAll(async () => {
  synthesized = await synthesize();
});

describe('ControlPlaneStack template', () => {
  it('bundles an API handler that loads on Node.js (optional native add-ons left out)', async () => {
    const bundles = (await readdir(synthesized.outdir))
      .filter((entry) => entry.startsWith('asset.'))
      .map((entry) => join(synthesized.outdir, entry, 'index.mjs'));
    const handlers: unknown[] = [];
    // What the stack sets on the function (the module reads it at cold start).
    vi.stubEnv('TABLE_NAME', 'dr-table');
    vi.stubEnv('SECRET_PREFIX', 'dr');
    vi.stubEnv('AWS_REGION', 'us-east-1');
    for (const bundle of bundles) {
      const text = await readFile(bundle, 'utf8').catch(() => undefined);
      if (text?.includes('/api/dr/openapi.json'))
        handlers.push(((await import(bundle)) as { handler?: unknown }).handler);
    }
    vi.unstubAllEnvs();
    expect(handlers).toHaveLength(1);
    expect(typeof handlers[0]).toBe('function');
  });

  it('bundles each function from its own entry, the target adapters as chunks loaded when first used', async () => {
    const functions = synthesized.template.findResources('AWS::Lambda::Function');
    const codeOf = (description: string) => {
      const fn = Object.values(functions).find((resource) => resource.Properties.Description === description);
      const key = String(fn?.Properties.Code.S3Key);
      return join(synthesized.outdir, `asset.${key.replace(/\.zip$/, '')}`);
    };
    const api = codeOf('DR Automation /api/dr API');
    const dispatcher = codeOf(
      Object.values(functions)
        .map((resource) => String(resource.Properties.Description))
        .find((description) => /dispatcher/i.test(description))!,
    );
    expect(api).not.toBe(dispatcher);
    const [apiIndex, dispatcherIndex] = await Promise.all([
      readFile(join(api, 'index.mjs'), 'utf8'),
      readFile(join(dispatcher, 'index.mjs'), 'utf8'),
    ]);
    expect(apiIndex).toContain('/api/dr/openapi.json');
    expect(dispatcherIndex).not.toContain('/api/dr/openapi.json');
    // The Azure adapter is in a chunk of its own, not in what every cold start loads
    expect(apiIndex).not.toContain('BlobServiceClient');
    const chunks = await readdir(join(api, 'chunks'));
    const texts = await Promise.all(chunks.map((chunk) => readFile(join(api, 'chunks', chunk), 'utf8')));
    expect(texts.some((text) => text.includes('BlobServiceClient'))).toBe(true);
    // zod's messages in English only (its other locales are a quarter of a megabyte nothing reads)
    const everything = [apiIndex, ...texts].join('\n');
    expect(everything).toContain('Invalid input: expected');
    expect(everything).not.toContain('Ungültige Eingabe');
  });

  it('keeps the table encrypted with the stack key, with point-in-time recovery and deletion protection', () => {
    synthesized.template.hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true, SSEType: 'KMS', KMSMasterKeyId: Match.anyValue() },
      DeletionProtectionEnabled: true,
    });
    synthesized.template.hasResource('AWS::DynamoDB::Table', { DeletionPolicy: 'Retain' });
    synthesized.template.hasResourceProperties('AWS::KMS::Key', { EnableKeyRotation: true });
  });

  it('runs the API on Node.js 24 (arm64, traced) with its settings from the environment', () => {
    synthesized.template.hasResourceProperties('AWS::Lambda::Function', {
      Runtime: 'nodejs24.x',
      Architectures: ['arm64'],
      TracingConfig: { Mode: 'Active' },
      Timeout: 29,
      Environment: {
        Variables: Match.objectLike({
          TABLE_NAME: Match.anyValue(),
          SECRET_PREFIX: 'DrControlPlane',
          SECRETS_KMS_KEY_ID: Match.anyValue(),
        }),
      },
    });
    // Outside any VPC, the API and the dispatcher reach the source database themselves
    for (const fn of Object.values(synthesized.template.findResources('AWS::Lambda::Function')))
      expect(fn.Properties.Environment?.Variables?.SOURCE_FROM_WORKER).toBeUndefined();
  });

  it('authorizes every route with IAM except the health check', () => {
    const routes = synthesized.template.findResources('AWS::ApiGatewayV2::Route');
    const byKey = Object.fromEntries(
      Object.values(routes).map((route) => [
        route.Properties.RouteKey as string,
        route.Properties.AuthorizationType as string,
      ]),
    );
    expect(byKey).toEqual({ 'ANY /api/dr/{proxy+}': 'AWS_IAM', 'GET /api/dr/health': 'NONE' });
  });

  it('logs access and throttles on the default stage', () => {
    synthesized.template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      StageName: '$default',
      AutoDeploy: true,
      AccessLogSettings: { DestinationArn: Match.anyValue(), Format: Match.stringLikeRegexp('requestId') },
      DefaultRouteSettings: { ThrottlingRateLimit: 50, ThrottlingBurstLimit: 100 },
    });
  });

  it("grants least privilege: no managed policies, secrets only under the stack's prefix", () => {
    const roles = synthesized.template.findResources('AWS::IAM::Role');
    for (const [id, role] of Object.entries(roles)) {
      // CDK's own provider that empties the downloads bucket on stack deletion: its log-writing managed policy
      if (id.startsWith('CustomS3AutoDeleteObjectsCustomResourceProviderRole')) continue;
      expect(role.Properties.ManagedPolicyArns, id).toBeUndefined();
    }
    const statements = statementsOf(synthesized.template);
    const secrets = statements.filter((statement) =>
      actions(statement).some((action) => action.startsWith('secretsmanager:')),
    );
    // Every secret grant is on the stored credentials (config/*, target/*) or on the master-key secret.
    for (const statement of secrets) {
      expect(actions(statement)).not.toContain('secretsmanager:*');
      for (const resource of [statement.Resource].flat())
        expect(JSON.stringify(resource)).toMatch(/:secret:DrControlPlane\/(config|target)\/\*"|MasterKey/);
    }
    // Only the API writes secrets (targets and the config are changed through it), and never the master key.
    const writers = secrets.filter((statement) =>
      actions(statement).some((action) => /Create|Put|Delete/.test(action)),
    );
    expect(writers).toHaveLength(1);
    expect(writers[0]!.roles).toEqual([expect.stringMatching(/^ApiFunctionRole/)]);
    expect(JSON.stringify(writers[0]!.Resource)).not.toContain('MasterKey');
    // The master key: read by the worker Lambda's role and the Fargate task's role, nobody else.
    const masterKey = secrets.filter((statement) => JSON.stringify(statement.Resource).includes('MasterKey'));
    expect(masterKey.flatMap((statement) => statement.roles).sort()).toEqual([
      expect.stringMatching(/^BackupWorkerTaskTaskRole/),
      expect.stringMatching(/^BackupWorkerWorkerRole/),
    ]);
    const logs = statements.find((statement) => actions(statement).includes('logs:PutLogEvents'));
    expect(JSON.stringify(logs?.Resource)).toContain('Fn::GetAtt');
  });

  it('runs backups in one container image: a Lambda, and the same image as a Fargate task', () => {
    const { template } = synthesized;
    const workers = template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } });
    expect(Object.keys(workers)).toHaveLength(1);
    const worker = Object.values(workers)[0]!;
    expect(worker.Properties).toMatchObject({ Timeout: 900, MemorySize: 2048, Architectures: ['arm64'] });
    const image = JSON.stringify(worker.Properties.Code.ImageUri);
    const task = Object.values(template.findResources('AWS::ECS::TaskDefinition'))[0]!;
    expect(task.Properties).toMatchObject({
      RequiresCompatibilities: ['FARGATE'],
      RuntimePlatform: { CpuArchitecture: 'ARM64' },
    });
    const container = task.Properties.ContainerDefinitions[0];
    expect(container).toMatchObject({ EntryPoint: ['node'], Command: ['/var/task/index.mjs'] });
    // The same image asset (one hash) for both.
    const hash = /[0-9a-f]{64}/.exec(image)?.[0];
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(container.Image)).toContain(hash);
  });

  it('fires schedules every minute through the dispatcher, and applies retention daily', () => {
    const rules = Object.values(synthesized.template.findResources('AWS::Events::Rule'));
    const expressions = rules.map((rule) => rule.Properties.ScheduleExpression).sort();
    expect(expressions).toEqual(['cron(30 3 * * ? *)', 'rate(1 minute)']);
    const retention = rules.find((rule) => rule.Properties.ScheduleExpression.startsWith('cron'));
    expect(JSON.parse(retention!.Properties.Targets[0].Input)).toEqual({ action: 'retention' });
  });

  it("lets the worker and the dispatcher read an RDS source's free storage, and the API not", () => {
    const readers = Object.values(synthesized.template.findResources('AWS::IAM::Policy')).filter((policy) =>
      (policy.Properties.PolicyDocument.Statement as any[]).some((statement) =>
        [statement.Action].flat().includes('cloudwatch:GetMetricStatistics'),
      ),
    );
    const roles = readers.flatMap((policy) => policy.Properties.Roles.map((role: any) => role.Ref as string));
    expect(roles).toHaveLength(2);
    expect(roles.some((role) => role.includes('WorkerRole'))).toBe(true);
    expect(roles.some((role) => role.includes('Dispatcher'))).toBe(true);
  });

  it('lets the API and the dispatcher start the worker, and nothing more: no RunTask, no PassRole', () => {
    const workerId = Object.keys(
      synthesized.template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    const statements = statementsOf(synthesized.template);
    const invokes = statements.filter((statement) => actions(statement).includes('lambda:InvokeFunction'));
    // The API and the dispatcher start runs; the seven state machines run their steps in the worker.
    expect(invokes).toHaveLength(9);
    for (const statement of invokes) expect(JSON.stringify(statement.Resource)).toContain(`"${workerId}"`);
    // Without a network nothing runs the Fargate task: no role may run it or pass its roles
    for (const statement of statements) {
      expect(actions(statement)).not.toContain('ecs:RunTask');
      expect(actions(statement)).not.toContain('iam:PassRole');
    }
    // No S3 access unless buckets are named, but the downloads bucket's.
    const downloads = Object.keys(synthesized.template.findResources('AWS::S3::Bucket'))[0]!;
    const s3 = statements.filter((statement) => actions(statement).some((a: string) => a.startsWith('s3:')));
    for (const statement of s3) expect(JSON.stringify(statement.Resource)).toContain(`"${downloads}"`);
  });

  it('keeps download exports one day in an encrypted private bucket: the worker writes them, the API reads them', () => {
    const { template } = synthesized;
    const buckets = template.findResources('AWS::S3::Bucket');
    expect(Object.keys(buckets)).toHaveLength(1);
    const [id, bucket] = Object.entries(buckets)[0]!;
    expect(bucket.Properties.LifecycleConfiguration.Rules).toEqual([
      expect.objectContaining({
        Prefix: 'exports/',
        ExpirationInDays: 1,
        AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 },
        Status: 'Enabled',
      }),
    ]);
    expect(bucket.Properties.PublicAccessBlockConfiguration).toEqual({
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    expect(
      bucket.Properties.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault
        .SSEAlgorithm,
    ).toBe('aws:kms');
    const policies = Object.values(template.findResources('AWS::IAM::Policy'));
    const onBucket = policies.flatMap((policy) =>
      (policy.Properties.PolicyDocument.Statement as any[])
        .filter((statement) => JSON.stringify(statement.Resource).includes(`"${id}"`))
        .map((statement) => [statement.Action].flat().sort().join(',')),
    );
    // Worker Lambda and Fargate task write; the API lists (404 for a missing export) and reads; nobody deletes.
    expect(onBucket.sort()).toEqual([
      's3:AbortMultipartUpload,s3:PutObject',
      's3:AbortMultipartUpload,s3:PutObject',
      's3:GetObject',
      's3:ListBucket',
    ]);
    const functions = Object.values(template.findResources('AWS::Lambda::Function'));
    const withBucket = functions.filter((fn) => fn.Properties.Environment?.Variables?.DOWNLOAD_BUCKET);
    expect(withBucket.map((fn) => fn.Properties.Description).sort()).toEqual([
      'DR Automation /api/dr API',
      'DR Automation backup worker: backups, retention and download exports',
    ]);
  });

  it('grants S3 only on the buckets named for role-based targets', async () => {
    const { template } = await synthesize({ backupBuckets: 'acme-backups' });
    const statements = Object.values(template.findResources('AWS::IAM::Policy')).flatMap(
      (policy) => policy.Properties.PolicyDocument.Statement as any[],
    );
    const s3 = statements.filter((statement) =>
      [statement.Action].flat().some((a: string) => a.startsWith('s3:')),
    );
    expect(s3.length).toBeGreaterThan(0);
    const downloads = Object.keys(template.findResources('AWS::S3::Bucket'))[0]!;
    for (const statement of s3)
      expect(JSON.stringify(statement.Resource)).toMatch(
        new RegExp(`s3:::acme-backups(/\\*)?"|"${downloads}"`),
      );
    // Lifecycle rules are put by the API when a target is saved: only it may, only on the named bucket.
    const lifecycle = s3.filter((statement) =>
      [statement.Action].flat().includes('s3:PutLifecycleConfiguration'),
    );
    expect(lifecycle).toHaveLength(1);
    expect(JSON.stringify(lifecycle[0].Resource)).toMatch(/s3:::acme-backups"/);
  });

  it('runs every function with one malloc arena per two threads (the engine frees chunks across threads)', async () => {
    const { template } = await synthesize({});
    const functions = Object.values(template.findResources('AWS::Lambda::Function'));
    // Ours (CDK's own custom-resource functions run no engine)
    const ours = functions.filter(
      (each) =>
        each.Properties.PackageType !== 'Image' &&
        String(each.Properties.Description).startsWith('DR Automation'),
    );
    expect(ours.length).toBeGreaterThanOrEqual(2);
    for (const fn of ours) expect(fn.Properties.Environment?.Variables?.MALLOC_ARENA_MAX).toBe('2');
    // The worker's image (Lambda and Fargate task) sets it in the image
    expect(await readFile('infra/worker.Dockerfile', 'utf8')).toMatch(/^ENV .*\bMALLOC_ARENA_MAX=2\b/m);
  });

  it('passes the files roots to the API and the worker, and private endpoints only when allowed', async () => {
    const plain = (await synthesize({})).template;
    for (const fn of Object.values(plain.findResources('AWS::Lambda::Function'))) {
      expect(fn.Properties.Environment?.Variables?.DR_FILES_ROOTS).toBeUndefined();
      expect(fn.Properties.Environment?.Variables?.DR_ALLOW_PRIVATE_ENDPOINTS).toBeUndefined();
    }
    const { template } = await synthesize({
      filesRoots: '/mnt/uploads,/mnt/restores',
      allowPrivateEndpoints: 'true',
    });
    const functions = Object.values(template.findResources('AWS::Lambda::Function'));
    const api = functions.find((fn) => fn.Properties.Description === 'DR Automation /api/dr API')!;
    expect(api.Properties.Environment.Variables).toMatchObject({
      DR_FILES_ROOTS: '/mnt/uploads:/mnt/restores',
      DR_ALLOW_PRIVATE_ENDPOINTS: 'true',
    });
    const worker = functions.find((fn) => fn.Properties.PackageType === 'Image')!;
    expect(worker.Properties.Environment.Variables).toMatchObject({
      DR_FILES_ROOTS: '/mnt/uploads:/mnt/restores',
      DR_ALLOW_PRIVATE_ENDPOINTS: 'true',
    });
  });

  it('runs the worker Lambda and the Fargate task in the operator subnets when given, with inline ENI permissions', async () => {
    const { template, report } = await synthesize({
      workerRunner: 'fargate',
      workerSubnets: 'subnet-a,subnet-b',
      workerSecurityGroups: 'sg-1',
    });
    const worker = Object.values(
      template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    expect(worker.Properties.VpcConfig).toEqual({
      SubnetIds: ['subnet-a', 'subnet-b'],
      SecurityGroupIds: ['sg-1'],
    });
    const api = Object.values(template.findResources('AWS::Lambda::Function')).find(
      (fn) => fn.Properties.Description === 'DR Automation /api/dr API',
    )!;
    const taskMachine = Object.entries(template.findResources('AWS::StepFunctions::StateMachine')).find(
      ([id]) => id.startsWith('BackupWorkerTaskMachine'),
    )!;
    expect(api.Properties.Environment.Variables).toMatchObject({
      WORKER_RUNNER: 'fargate',
      WORKER_TASK_MACHINE: { Ref: taskMachine[0] },
      DR_HEAVY_STEPS: 'auto',
      DR_FARGATE_FROM_BYTES: String(1024 ** 3),
    });
    // The Fargate task's network is in the definitions, not in the functions that start runs
    expect(taskMachine[1].Properties.DefinitionSubstitutions).toMatchObject({
      WorkerSubnets: 'subnet-a,subnet-b',
      WorkerSecurityGroups: 'sg-1',
      WorkerPublicIp: 'DISABLED',
    });
    // The API and the dispatcher stay outside the subnets: the worker measures the source for them
    const dispatcher = Object.values(template.findResources('AWS::Lambda::Function')).find((fn) =>
      String(fn.Properties.Description).startsWith('DR Automation dispatcher'),
    )!;
    for (const fn of [api, dispatcher]) {
      expect(fn.Properties.Environment.Variables.SOURCE_FROM_WORKER).toBe('true');
      expect(fn.Properties.VpcConfig).toBeUndefined();
    }
    expect(worker.Properties.Environment.Variables.SOURCE_FROM_WORKER).toBeUndefined();
    const statements = Object.values(template.findResources('AWS::IAM::Policy')).flatMap(
      (policy) => policy.Properties.PolicyDocument.Statement as any[],
    );
    const eni = statements.filter((statement) =>
      [statement.Action].flat().includes('ec2:CreateNetworkInterface'),
    );
    expect(eni).toHaveLength(1);
    expect(Object.keys(template.findResources('AWS::IAM::Role')).length).toBeGreaterThan(0);
    for (const [id, role] of Object.entries(template.findResources('AWS::IAM::Role')))
      if (!id.startsWith('CustomS3AutoDeleteObjectsCustomResourceProviderRole'))
        expect(role.Properties.ManagedPolicyArns ?? [], id).toEqual([]);
    const [nag] = report.pluginReports.filter((plugin) => plugin.pluginName === 'AwsSolutions');
    expect(nag!.violations).toEqual([]);
  });

  it('lets the worker create, tag and delete only dr-restore-* copies and tagged standbys, restoring only tagged sources', () => {
    const statements = statementsOf(synthesized.template).filter((statement) =>
      actions(statement).some((action) => action.startsWith('rds:')),
    );
    expect(statements.some((statement) => actions(statement).includes('rds:*'))).toBe(false);
    const databases = (statement: Statement) =>
      [statement.Resource]
        .flat()
        .map((resource) => JSON.stringify(resource))
        .filter((arn) => /:(db|cluster):/.test(arn));
    const writes = /^rds:(Restore|Create|Delete|AddTags|Promote|Switchover)/;
    for (const statement of statements) {
      if (!actions(statement).some((action) => writes.test(action))) continue;
      const names = databases(statement);
      if (names.length === 0) continue; // snapshots, subnet, option and parameter groups the request uses
      if (names.every((arn) => /:(db|cluster):dr-restore-\*"/.test(arn))) continue;
      // Any other database only under a condition: a tagged source, a tagged standby, or a request that tags
      // what it creates as a standby
      expect(statement.Condition, JSON.stringify(actions(statement))).toBeOneOf([
        { StringEquals: { 'aws:ResourceTag/dr-automation:source': 'true' } },
        { StringEquals: { 'aws:ResourceTag/dr-automation:standby': 'true' } },
        { StringEquals: { 'aws:RequestTag/dr-automation:standby': 'true' } },
      ]);
      if (JSON.stringify(statement.Condition).includes(':source'))
        expect(actions(statement).sort()).toEqual([
          'rds:RestoreDBClusterToPointInTime',
          'rds:RestoreDBInstanceToPointInTime',
        ]);
    }
    // Deleting: only copies and tagged standbys
    for (const statement of statements.filter((one) =>
      actions(one).some((action) => action.startsWith('rds:Delete')),
    ))
      expect(
        databases(statement).every((arn) => /dr-restore-\*"/.test(arn)) ||
          JSON.stringify(statement.Condition).includes('ResourceTag/dr-automation:standby'),
      ).toBe(true);
    // The standby's re-creation carries its tag, and that is what lets it be tagged (the gap moto cannot see)
    const recreate = statements.find(
      (statement) => actions(statement).includes('rds:CreateDBInstanceReadReplica') && statement.Condition,
    );
    expect(actions(recreate!).sort()).toEqual(['rds:AddTagsToResource', 'rds:CreateDBInstanceReadReplica']);
    // No Route 53 and no global-database switchover unless named at deploy
    expect(statements.some((statement) => actions(statement).includes('rds:SwitchoverGlobalCluster'))).toBe(
      false,
    );
    expect(
      statementsOf(synthesized.template).some((statement) =>
        actions(statement).some((a) => a.startsWith('route53:')),
      ),
    ).toBe(false);
  });

  it('defines the restore and DR-test state machines from statemachines/ with the worker substituted, logged and traced', () => {
    const { template } = synthesized;
    const workerId = Object.keys(
      template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    const machines = Object.values(template.findResources('AWS::StepFunctions::StateMachine'));
    expect(machines).toHaveLength(7);
    const files = [
      'backup-fanout',
      'failover',
      'restore',
      'backup-verification',
      'restore-test',
      'recovery-time-test',
      'failover-test',
    ].map((name) => JSON.parse(readFileSync(join('statemachines', `${name}.asl.json`), 'utf8')));
    // Each machine is one of the files, as written (the placeholder substituted by CloudFormation).
    expect(machines.map((machine) => JSON.parse(machine.Properties.DefinitionString))).toEqual(
      expect.arrayContaining(files),
    );
    for (const machine of machines) {
      const props = machine.Properties;
      expect(props.DefinitionSubstitutions).toMatchObject({
        WorkerFunctionArn: { 'Fn::GetAtt': [workerId, 'Arn'] },
        WorkerCluster: { 'Fn::GetAtt': [expect.stringMatching(/^BackupWorkerCluster/), 'Arn'] },
        WorkerTaskDefinition: { Ref: expect.stringMatching(/^BackupWorkerTask/) },
        // No network: heavy steps stay in the Lambda, the placeholders hold a value all the same
        WorkerSubnets: 'none',
        WorkerSecurityGroups: 'none',
        WorkerPublicIp: 'DISABLED',
      });
      expect(props.TracingConfiguration).toEqual({ Enabled: true });
      expect(props.LoggingConfiguration).toMatchObject({ Level: 'ALL', IncludeExecutionData: true });
    }
    const statements = Object.values(template.findResources('AWS::IAM::Policy')).flatMap(
      (policy) => policy.Properties.PolicyDocument.Statement as any[],
    );
    const starts = statements.filter((statement) =>
      [statement.Action].flat().includes('states:StartExecution'),
    );
    // The API starts each; the dispatcher the failover (its watch)
    expect(starts).toHaveLength(8);
    const machineIds = Object.keys(template.findResources('AWS::StepFunctions::StateMachine'));
    for (const statement of starts) expect(machineIds).toContain(statement.Resource.Ref);
    const api = Object.values(template.findResources('AWS::Lambda::Function')).find(
      (fn) => fn.Properties.Description === 'DR Automation /api/dr API',
    )!;
    expect(
      Object.keys(api.Properties.Environment.Variables)
        .filter((key) => key.startsWith('STATE_MACHINE_'))
        .sort(),
    ).toEqual([
      'STATE_MACHINE_BACKUP_FANOUT',
      'STATE_MACHINE_BACKUP_VERIFICATION',
      'STATE_MACHINE_FAILOVER',
      'STATE_MACHINE_FAILOVER_TEST',
      'STATE_MACHINE_RECOVERY_TIME_TEST',
      'STATE_MACHINE_RESTORE',
      'STATE_MACHINE_RESTORE_TEST',
    ]);
  });

  it('sends DR-test emails through SES from the named address only, when one is named', async () => {
    const { template } = await synthesize({ mailFrom: 'dr@example.com' });
    const worker = Object.values(
      template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    expect(worker.Properties.Environment.Variables.MAIL_FROM).toBe('dr@example.com');
    const statements = Object.values(template.findResources('AWS::IAM::Policy')).flatMap(
      (policy) => policy.Properties.PolicyDocument.Statement as any[],
    );
    const sends = statements.filter((statement) => [statement.Action].flat().includes('ses:SendEmail'));
    expect(sends.length).toBeGreaterThan(0);
    for (const statement of sends) {
      const resources = JSON.stringify(statement.Resource);
      expect(resources).toContain(':identity/dr@example.com');
      expect(resources).toContain(':identity/example.com');
    }
    const plain = Object.values(synthesized.template.findResources('AWS::IAM::Policy')).flatMap(
      (policy) => policy.Properties.PolicyDocument.Statement as any[],
    );
    expect(plain.some((statement) => [statement.Action].flat().includes('ses:SendEmail'))).toBe(false);
  });

  it('alarms on failed backups, the RPO (and a silent dispatcher), overdue DR tests and a primary down, with a dashboard', () => {
    const { template } = synthesized;
    const alarms = Object.values(template.findResources('AWS::CloudWatch::Alarm')).map(
      (alarm) => alarm.Properties,
    );
    expect(
      alarms
        .map((alarm) => [
          alarm.Namespace,
          alarm.MetricName,
          alarm.Statistic,
          alarm.Threshold,
          alarm.TreatMissingData,
        ])
        .sort(),
    ).toEqual([
      ['DrAutomation', 'BackupFailed', 'Sum', 1, 'notBreaching'],
      ['DrAutomation', 'DrTestsOverdue', 'Maximum', 1, 'notBreaching'],
      ['DrAutomation', 'PrimaryUp', 'Minimum', 1, 'notBreaching'],
      ['DrAutomation', 'RpoViolated', 'Maximum', 1, 'breaching'],
    ]);
    const dashboards = Object.values(template.findResources('AWS::CloudWatch::Dashboard'));
    expect(dashboards).toHaveLength(1);
    const body = JSON.stringify(dashboards[0]!.Properties.DashboardBody);
    for (const name of [
      'BackupSucceeded',
      'BackupFailed',
      'BackupDuration',
      'BackupBytesStored',
      'RpoAgeHours',
      'DrTestsOverdue',
    ])
      expect(body).toContain(name);
    // The worker and the dispatcher write the metrics (EMF); the Fargate task to stdout.
    const functions = Object.values(template.findResources('AWS::Lambda::Function'));
    const emitting = functions.filter((fn) => fn.Properties.Environment?.Variables?.DR_METRICS === 'emf');
    expect(emitting).toHaveLength(2);
    const task = Object.values(template.findResources('AWS::ECS::TaskDefinition'))[0]!;
    expect(task.Properties.ContainerDefinitions[0].Environment).toEqual(
      expect.arrayContaining([
        { Name: 'DR_METRICS', Value: 'emf' },
        { Name: 'AWS_EMF_ENVIRONMENT', Value: 'Local' },
      ]),
    );
  });

  it('uses a JWT authorizer when given an issuer and audience', async () => {
    const { template } = await synthesize({ jwtIssuer: 'https://issuer.example.com', jwtAudience: 'dr-api' });
    template.hasResourceProperties('AWS::ApiGatewayV2::Authorizer', {
      AuthorizerType: 'JWT',
      JwtConfiguration: { Issuer: 'https://issuer.example.com', Audience: ['dr-api'] },
    });
  });
});

describe('the AWS production path', () => {
  let fargate: Awaited<ReturnType<typeof synthesize>>;
  beforeAll(async () => {
    fargate = await synthesize({
      workerRunner: 'fargate',
      workerSubnets: 'subnet-0123456789abcdef0,subnet-0123456789abcdef1',
      workerSecurityGroups: 'sg-0123456789abcdef0',
      workerPublicIp: 'true',
      failoverZones: 'Z0123456789ABC',
      globalCluster: 'event-manager-global',
      targetKmsKeys: 'arn:aws:kms:eu-west-1:123456789012:key/target-key',
      hookFunctions: 'arn:aws:lambda:eu-west-1:123456789012:function:flush-cache',
      hookServices: 'arn:aws:ecs:eu-west-1:123456789012:service/apps/event-manager',
    });
  });

  it('runs the worker task only from state machines: RunTask on that task definition in that cluster, PassRole of its two roles', () => {
    const { template } = fargate;
    const taskId = Object.keys(template.findResources('AWS::ECS::TaskDefinition'))[0]!;
    const statements = statementsOf(template);
    const machineRoles = Object.keys(template.findResources('AWS::IAM::Role')).filter((id) =>
      /^(Workflows.*Role|BackupWorkerTaskMachineRole)/.test(id),
    );
    expect(machineRoles).toHaveLength(8); // seven workflows and the worker-task machine
    const runTask = statements.filter((statement) => actions(statement).includes('ecs:RunTask'));
    expect(runTask.flatMap((statement) => statement.roles).sort()).toEqual(machineRoles.sort());
    for (const statement of runTask) {
      expect(actions(statement)).toEqual(['ecs:RunTask']);
      expect(statement.Condition).toEqual({
        ArnEquals: {
          'ecs:cluster': { 'Fn::GetAtt': [expect.stringMatching(/^BackupWorkerCluster/), 'Arn'] },
        },
      });
      expect(JSON.stringify(statement.Resource)).toContain(taskId);
    }
    const passRole = statements.filter((statement) => actions(statement).includes('iam:PassRole'));
    expect(passRole.flatMap((statement) => statement.roles).sort()).toEqual(machineRoles.sort());
    for (const statement of passRole) {
      expect(statement.Condition).toEqual({
        StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' },
      });
      expect(JSON.stringify(statement.Resource)).toMatch(
        /BackupWorkerTaskTaskRole.*BackupWorkerTaskExecutionRole/,
      );
    }
    // The API and the dispatcher start executions of the worker-task machine instead
    const starts = statements.filter((statement) => actions(statement).includes('states:StartExecution'));
    const taskMachine = Object.keys(template.findResources('AWS::StepFunctions::StateMachine')).find((id) =>
      id.startsWith('BackupWorkerTaskMachine'),
    )!;
    const startersOfTask = starts.filter((statement) =>
      JSON.stringify(statement.Resource).includes(taskMachine),
    );
    expect(startersOfTask.flatMap((statement) => statement.roles).sort()).toEqual([
      expect.stringMatching(/^ApiFunctionRole/),
      expect.stringMatching(/^BackupWorkerDispatcherRole/),
    ]);
    // And of the fan-out machine (FULL schedules with several workers), named in their environment
    const fanOut = Object.keys(template.findResources('AWS::StepFunctions::StateMachine')).find((id) =>
      id.startsWith('WorkflowsBackupFanout'),
    )!;
    const startersOfFanOut = starts.filter((statement) =>
      JSON.stringify(statement.Resource).includes(fanOut),
    );
    expect([...new Set(startersOfFanOut.flatMap((statement) => statement.roles))].sort()).toEqual([
      expect.stringMatching(/^ApiFunctionRole/),
      expect.stringMatching(/^BackupWorkerDispatcherRole/),
    ]);
    const functions = Object.values(template.findResources('AWS::Lambda::Function'));
    const named = functions.filter((fn) =>
      JSON.stringify(fn.Properties.Environment?.Variables?.BACKUP_FANOUT_MACHINE ?? null).includes(fanOut),
    );
    expect(named.map((fn) => fn.Properties.Description).sort()).toEqual([
      'DR Automation /api/dr API',
      expect.stringContaining('dispatcher'),
    ]);
  });

  it('puts the heavy steps on Fargate by size (auto), with a public IP when asked', () => {
    const machines = Object.entries(fargate.template.findResources('AWS::StepFunctions::StateMachine'));
    for (const [, machine] of machines)
      expect(machine.Properties.DefinitionSubstitutions).toMatchObject({
        WorkerSubnets: 'subnet-0123456789abcdef0,subnet-0123456789abcdef1',
        WorkerSecurityGroups: 'sg-0123456789abcdef0',
        WorkerPublicIp: 'ENABLED',
      });
    const restore = machines.find(([id]) => id.startsWith('WorkflowsRestore') && !id.includes('Test'))!;
    const definition = JSON.parse(restore[1].Properties.DefinitionString);
    expect(definition.States.RestoreDatabaseOnFargate.Resource).toBe('arn:aws:states:::ecs:runTask.sync');
  });

  it('passes cfn-lint with the Fargate paths in (no placeholder left unsubstituted)', async () => {
    const { code, output } = await cfnLint(join(fargate.outdir, 'DrControlPlane.template.json'));
    expect(code & 3, output).toBe(0);
  });

  it('changes Route 53 records only in the zones named, and switches over only the global cluster named', () => {
    const statements = statementsOf(fargate.template);
    const route53 = statements.filter((statement) =>
      actions(statement).some((a) => a.startsWith('route53:')),
    );
    expect(route53.length).toBeGreaterThan(0);
    for (const statement of route53)
      expect(statement.Resource).toEqual({
        'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':route53:::hostedzone/Z0123456789ABC']],
      });
    const switchover = statements.filter((statement) =>
      actions(statement).includes('rds:SwitchoverGlobalCluster'),
    );
    expect(switchover.length).toBeGreaterThan(0);
    for (const statement of switchover)
      expect(JSON.stringify(statement.Resource)).toContain(':global-cluster:event-manager-global"');
  });

  it('deploys the failover workflow, started by the dispatcher (the watch) and the API, with an alarm on the primary', () => {
    const { template } = fargate;
    const machines = Object.entries(template.findResources('AWS::StepFunctions::StateMachine'));
    const [failoverId, failover] = machines.find(([id]) => /^WorkflowsFailover[0-9A-F]/.test(id))!;
    const definition = JSON.parse(JSON.stringify(failover.Properties.DefinitionString));
    expect(JSON.stringify(definition)).toContain('failover.promote');
    const starts = statementsOf(template).filter(
      (statement) =>
        actions(statement).includes('states:StartExecution') &&
        JSON.stringify(statement.Resource).includes(failoverId),
    );
    expect([...new Set(starts.flatMap((statement) => statement.roles))].sort()).toEqual([
      expect.stringMatching(/^ApiFunctionRole/),
      expect.stringMatching(/^BackupWorkerDispatcherRole/),
    ]);
    const dispatcher = Object.values(template.findResources('AWS::Lambda::Function')).find((fn) =>
      String(fn.Properties.Description).includes('dispatcher'),
    )!;
    expect(JSON.stringify(dispatcher.Properties.Environment.Variables.STATE_MACHINE_FAILOVER)).toContain(
      failoverId,
    );
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'PrimaryUp',
      Namespace: 'DrAutomation',
      Statistic: 'Minimum',
      Period: 60,
      Threshold: 1,
      ComparisonOperator: 'LessThanThreshold',
      EvaluationPeriods: 3,
      DatapointsToAlarm: 3,
      TreatMissingData: 'notBreaching',
      AlarmActions: [{ Ref: Object.keys(template.findResources('AWS::SNS::Topic'))[0] }],
    });
  });

  it('lets hooks invoke only the functions and scale only the services named, and fail over only the global cluster named', () => {
    const statements = statementsOf(fargate.template);
    const invoke = statements.filter(
      (statement) =>
        actions(statement).includes('lambda:InvokeFunction') &&
        JSON.stringify(statement.Resource).includes('flush-cache'),
    );
    expect(invoke.length).toBeGreaterThan(0);
    for (const statement of invoke) {
      expect(actions(statement)).toEqual(['lambda:InvokeFunction']);
      expect(statement.Resource).toBe('arn:aws:lambda:eu-west-1:123456789012:function:flush-cache');
      expect(statement.roles.every((role: string) => /^BackupWorker(Worker|TaskTask)Role/.test(role))).toBe(
        true,
      );
    }
    const ecs = statements.filter((statement) => actions(statement).includes('ecs:UpdateService'));
    expect(ecs.length).toBeGreaterThan(0);
    for (const statement of ecs) {
      expect(actions(statement).sort()).toEqual(['ecs:DescribeServices', 'ecs:UpdateService']);
      expect(statement.Resource).toBe('arn:aws:ecs:eu-west-1:123456789012:service/apps/event-manager');
    }
    const failover = statements.filter((statement) =>
      actions(statement).includes('rds:FailoverGlobalCluster'),
    );
    expect(failover.length).toBeGreaterThan(0);
    for (const statement of failover)
      expect(JSON.stringify(statement.Resource)).toContain(':global-cluster:event-manager-global"');
  });

  it('grants the KMS keys S3 targets name to the worker, the API (check) and the dispatcher (usage)', () => {
    const statements = statementsOf(fargate.template).filter((statement) =>
      JSON.stringify(statement.Resource).includes('key/target-key'),
    );
    expect(statements.flatMap((statement) => statement.roles).sort()).toEqual([
      expect.stringMatching(/^ApiFunctionRole/),
      expect.stringMatching(/^BackupWorkerDispatcherRole/),
      expect.stringMatching(/^BackupWorkerTaskTaskRole/),
      expect.stringMatching(/^BackupWorkerWorkerRole/),
    ]);
    for (const statement of statements)
      expect(actions(statement).sort()).toEqual(['kms:Decrypt', 'kms:Encrypt', 'kms:GenerateDataKey']);
  });

  it('refuses a Fargate runner or Fargate heavy steps without subnets, saying why', () => {
    expect(() => buildApp(new App({ context: { workerRunner: 'fargate' } }))).toThrow(/needs workerSubnets/);
    expect(() => buildApp(new App({ context: { heavySteps: 'fargate' } }))).toThrow(/needs workerSubnets/);
    expect(() => buildApp(new App({ context: { heavySteps: 'sometimes' } }))).toThrow(
      /lambda, fargate or auto/,
    );
  });

  it('generates the master key under a name of its own, kept on deletion, and brings back an existing one', async () => {
    const secrets = Object.values(synthesized.template.findResources('AWS::SecretsManager::Secret'));
    expect(secrets).toHaveLength(1);
    expect(secrets[0]!.Properties.Name).toBeUndefined();
    synthesized.template.hasResource('AWS::SecretsManager::Secret', { DeletionPolicy: 'Retain' });
    synthesized.template.hasOutput('MasterKeySecretArn', {});
    const arn =
      'arn:aws:secretsmanager:eu-west-1:123456789012:secret:DrControlPlane/repository-master-key-AbCdEf';
    const { template } = await synthesize({
      masterKeySecretArn: arn,
      masterKeyKmsKey: 'arn:aws:kms:eu-west-1:123456789012:key/old-stack-key',
    });
    expect(Object.keys(template.findResources('AWS::SecretsManager::Secret'))).toHaveLength(0);
    const worker = Object.values(
      template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    expect(worker.Properties.Environment.Variables.MASTER_KEY_SECRET).toBe(arn);
    const readers = statementsOf(template).filter((statement) =>
      JSON.stringify(statement.Resource).includes(arn),
    );
    expect(readers.flatMap((statement) => statement.roles).sort()).toEqual([
      expect.stringMatching(/^BackupWorkerTaskTaskRole/),
      expect.stringMatching(/^BackupWorkerWorkerRole/),
    ]);
    const oldKey = statementsOf(template).filter((statement) =>
      JSON.stringify(statement.Resource).includes('old-stack-key'),
    );
    expect(oldKey.flatMap((statement) => statement.roles)).toHaveLength(2);
  });

  it("lets the API read IAM callers' role tags (and nothing else of IAM), unless callers come with JWTs", async () => {
    const iam = statementsOf(synthesized.template).filter((statement) =>
      actions(statement).some((action) => action.startsWith('iam:') && action !== 'iam:PassRole'),
    );
    expect(iam).toHaveLength(1);
    expect(actions(iam[0]!).sort()).toEqual(['iam:ListRoleTags', 'iam:ListUserTags']);
    expect(iam[0]!.roles).toEqual([expect.stringMatching(/^ApiFunctionRole/)]);
    const { template } = await synthesize({ jwtIssuer: 'https://issuer.example.com', jwtAudience: 'dr-api' });
    expect(statementsOf(template).some((statement) => actions(statement).includes('iam:ListRoleTags'))).toBe(
      false,
    );
  });

  it('sends every alarm, firing and clearing, to one encrypted topic operators subscribe to', async () => {
    const { template } = synthesized;
    const topic = Object.keys(template.findResources('AWS::SNS::Topic'))[0]!;
    template.hasResourceProperties('AWS::SNS::Topic', { KmsMasterKeyId: Match.anyValue() });
    const alarms = Object.values(template.findResources('AWS::CloudWatch::Alarm'));
    expect(alarms.length).toBeGreaterThanOrEqual(3);
    for (const alarm of alarms) {
      expect(alarm.Properties.AlarmActions).toEqual([{ Ref: topic }]);
      expect(alarm.Properties.OKActions).toEqual([{ Ref: topic }]);
    }
    template.hasOutput('AlarmTopicArn', { Value: { Ref: topic } });
    const subscribed = (await synthesize({ alarmEmails: 'ops@example.com' })).template;
    subscribed.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'email',
      Endpoint: 'ops@example.com',
    });
  });

  it('mounts an EFS access point in the worker Lambda and the Fargate task for files restores and scratch files', async () => {
    expect(() => buildApp(new App({ context: { filesFileSystem: 'fs-0123456789abcdef0' } }))).toThrow(
      /go together/,
    );
    expect(() =>
      buildApp(
        new App({
          context: { filesFileSystem: 'fs-0123456789abcdef0', filesAccessPoint: 'fsap-0123456789abcdef0' },
        }),
      ),
    ).toThrow(/needs workerSubnets/);
    const { template } = await synthesize({
      workerSubnets: 'subnet-0123456789abcdef0',
      workerSecurityGroups: 'sg-0123456789abcdef0',
      filesFileSystem: 'fs-0123456789abcdef0',
      filesAccessPoint: 'fsap-0123456789abcdef0',
    });
    const worker = Object.values(
      template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    expect(worker.Properties.FileSystemConfigs).toEqual([
      { Arn: expect.objectContaining({ 'Fn::Join': expect.anything() }), LocalMountPath: '/mnt/dr-files' },
    ]);
    expect(JSON.stringify(worker.Properties.FileSystemConfigs)).toContain(
      'access-point/fsap-0123456789abcdef0',
    );
    expect(worker.Properties.Environment.Variables).toMatchObject({
      DR_SCRATCH_DIR: '/mnt/dr-files/scratch',
      DR_FILES_ROOTS: '/mnt/dr-files',
    });
    const task = Object.values(template.findResources('AWS::ECS::TaskDefinition'))[0]!;
    expect(task.Properties.Volumes).toEqual([
      {
        Name: 'files',
        EFSVolumeConfiguration: {
          FilesystemId: 'fs-0123456789abcdef0',
          TransitEncryption: 'ENABLED',
          AuthorizationConfig: { AccessPointId: 'fsap-0123456789abcdef0', IAM: 'ENABLED' },
        },
      },
    ]);
    expect(task.Properties.ContainerDefinitions[0].MountPoints).toEqual([
      { ContainerPath: '/mnt/dr-files', SourceVolume: 'files', ReadOnly: false },
    ]);
    // The API checks filesTo against the same roots
    const api = Object.values(template.findResources('AWS::Lambda::Function')).find(
      (fn) => fn.Properties.Description === 'DR Automation /api/dr API',
    )!;
    expect(api.Properties.Environment.Variables.DR_FILES_ROOTS).toBe('/mnt/dr-files');
    const mounts = statementsOf(template).filter((statement) =>
      actions(statement).includes('elasticfilesystem:ClientMount'),
    );
    expect(mounts.flatMap((statement) => statement.roles).sort()).toEqual([
      expect.stringMatching(/^BackupWorkerTaskTaskRole/),
      expect.stringMatching(/^BackupWorkerWorkerRole/),
    ]);
    for (const statement of mounts)
      expect(JSON.stringify(statement.Condition)).toContain('access-point/fsap-0123456789abcdef0');
  });

  it('empties the downloads bucket when the stack is deleted', () => {
    const [deleter] = Object.values(synthesized.template.findResources('Custom::S3AutoDeleteObjects'));
    const bucket = Object.keys(synthesized.template.findResources('AWS::S3::Bucket'))[0]!;
    expect(deleter!.Properties.BucketName).toEqual({ Ref: bucket });
  });
});

describe('cdk-nag (AwsSolutions)', () => {
  it('passes, and every acknowledged finding carries a reason', () => {
    const [nag] = synthesized.report.pluginReports.filter((report) => report.pluginName === 'AwsSolutions');
    expect(nag?.violations).toEqual([]);
    expect(nag!.conclusion).toBe('success');
    expect(nag!.suppressedViolations.length).toBeGreaterThan(0);
    for (const suppressed of nag!.suppressedViolations) {
      expect((suppressed.reason ?? '').length, suppressed.ruleName).toBeGreaterThan(20);
    }
  });

  it('acknowledges wildcard findings on single roles, never on a wider construct', async () => {
    for (const { app, report } of [
      synthesized,
      await synthesize({
        workerRunner: 'fargate',
        workerSubnets: 'subnet-a',
        workerSecurityGroups: 'sg-1',
        backupBuckets: 'acme-backups',
      }),
    ]) {
      const [nag] = report.pluginReports.filter((plugin) => plugin.pluginName === 'AwsSolutions');
      expect(nag!.violations).toEqual([]);
      const iam5 = nag!.suppressedViolations.filter((suppressed) =>
        suppressed.ruleName.startsWith('AwsSolutions-IAM5'),
      );
      expect(iam5.length).toBeGreaterThan(0);
      for (const suppressed of iam5) {
        const at = app.node.findAll().find((construct) => construct.node.path === suppressed.acknowledgedAt);
        expect(at, `${suppressed.ruleName} at ${suppressed.acknowledgedAt}`).toBeInstanceOf(Role);
      }
    }
  });

  it('would fail a stack that breaks a rule (the check is live)', async () => {
    const outdir = await mkdtemp(join(tmpdir(), 'dr-cdk-bad-'));
    const app = new App({ outdir });
    const stack = new Stack(app, 'Bad');
    new Table(stack, 'NoRecovery', { partitionKey: { name: 'pk', type: AttributeType.STRING } });
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    try {
      app.synth();
    } catch {
      // Synth may refuse outright; the report says why either way.
    }
    const report = JSON.parse(await readFile(join(outdir, 'validation-report.json'), 'utf8')) as Report;
    expect(report.pluginReports[0]!.conclusion).toBe('failure');
    expect(JSON.stringify(report.pluginReports[0]!.violations)).toContain('AwsSolutions-DDB3');
  });
});

describe('cfn-lint', () => {
  it('finds no error in the synthesized template (warnings allowed)', async () => {
    const { code, output } = await cfnLint(join(synthesized.outdir, 'DrControlPlane.template.json'));
    expect(code & 3, output).toBe(0);
  });

  it('reports an error in a broken template (the check is live)', async () => {
    const file = join(await mkdtemp(join(tmpdir(), 'dr-cfn-')), 'bad.json');
    await writeFile(
      file,
      JSON.stringify({
        Resources: { T: { Type: 'AWS::DynamoDB::Table', Properties: { BillingMode: 'FREE' } } },
      }),
    );
    const { code } = await cfnLint(file);
    expect(code & 2).toBe(2);
  });
});

describe('the dashboard (-c dashboard=true)', () => {
  let site: Awaited<ReturnType<typeof synthesize>>;
  beforeAll(async () => {
    site = await synthesize({ dashboard: 'true' });
  });

  it('keeps its files in a private bucket that only its CloudFront distribution reads (origin access control)', () => {
    const { template } = site;
    const buckets = template.findResources('AWS::S3::Bucket');
    const files = Object.entries(buckets).find(([id]) => id.startsWith('DashboardFiles'))!;
    expect(files[1].Properties.PublicAccessBlockConfiguration).toEqual({
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    template.resourceCountIs('AWS::CloudFront::OriginAccessControl', 1);
    template.hasResourceProperties('AWS::CloudFront::OriginAccessControl', {
      OriginAccessControlConfig: Match.objectLike({
        OriginAccessControlOriginType: 's3',
        SigningBehavior: 'always',
      }),
    });
    // Reads only by CloudFront, and only for this distribution; no other principal
    const policy = Object.values(template.findResources('AWS::S3::BucketPolicy')).find(
      (each) => (each.Properties.Bucket as { Ref: string }).Ref === files[0],
    )!;
    const statements = policy.Properties.PolicyDocument.Statement as {
      Effect: string;
      Principal: unknown;
      Condition?: Record<string, Record<string, unknown>>;
    }[];
    const allows = statements.filter((statement) => statement.Effect === 'Allow');
    expect(allows.length).toBeGreaterThan(0);
    for (const statement of allows) {
      expect(statement.Principal).toEqual({ Service: 'cloudfront.amazonaws.com' });
      expect(statement.Condition?.StringEquals?.['AWS:SourceArn']).toBeDefined();
    }
    template.hasResourceProperties('AWS::CloudFront::Distribution', {
      DistributionConfig: Match.objectLike({
        DefaultRootObject: 'index.html',
        DefaultCacheBehavior: Match.objectLike({ ViewerProtocolPolicy: 'redirect-to-https' }),
      }),
    });
  });

  it('sends security headers with every file', () => {
    // The page may talk to the API and the sign-in only
    const policy = Object.values(site.template.findResources('AWS::CloudFront::ResponseHeadersPolicy'))[0]!;
    const csp = JSON.stringify(
      policy.Properties.ResponseHeadersPolicyConfig.SecurityHeadersConfig.ContentSecurityPolicy,
    );
    expect(csp).toMatch(/connect-src 'self' https:\/\/\*\.execute-api\./);
    expect(csp).toMatch(/https:\/\/\*\.auth\./);
    expect(csp).not.toMatch(/connect-src[^;]* https: /);
    expect(csp).toMatch(/default-src 'self'.*frame-ancestors 'none'/);
    site.template.hasResourceProperties('AWS::CloudFront::ResponseHeadersPolicy', {
      ResponseHeadersPolicyConfig: Match.objectLike({
        SecurityHeadersConfig: Match.objectLike({
          StrictTransportSecurity: Match.objectLike({ AccessControlMaxAgeSec: 31536000 }),
          FrameOptions: Match.objectLike({ FrameOption: 'DENY' }),
          ContentTypeOptions: Match.objectLike({ Override: true }),
        }),
      }),
    });
  });

  it('signs in with a Cognito user pool the API trusts, and the API allows the dashboard origin only (CORS)', () => {
    const { template } = site;
    template.resourceCountIs('AWS::Cognito::UserPool', 1);
    for (const group of ['dr-admin', 'dr-operator', 'dr-viewer'])
      template.hasResourceProperties('AWS::Cognito::UserPoolGroup', { GroupName: group });
    template.hasResourceProperties('AWS::Cognito::UserPoolClient', {
      GenerateSecret: false,
      AllowedOAuthFlows: ['code'],
    });
    template.hasResourceProperties('AWS::ApiGatewayV2::Authorizer', { AuthorizerType: 'JWT' });
    const api = Object.values(template.findResources('AWS::ApiGatewayV2::Api'))[0]!;
    const cors = api.Properties.CorsConfiguration as { AllowOrigins: unknown[]; AllowHeaders: string[] };
    expect(cors.AllowOrigins).toHaveLength(1);
    expect(JSON.stringify(cors.AllowOrigins[0])).toMatch(/DashboardDistribution.*DomainName/);
    expect(cors.AllowHeaders).toEqual(['authorization', 'content-type']);
    // The files and the config that points them at the API and the sign-in
    template.resourceCountIs('Custom::CDKBucketDeployment', 1);
  });

  it('uses the issuer the operator gives instead of making a user pool', async () => {
    const { template } = await synthesize({
      dashboard: 'true',
      jwtIssuer: 'https://login.example.com',
      jwtAudience: 'dr-dashboard',
    });
    template.resourceCountIs('AWS::Cognito::UserPool', 0);
    template.hasResourceProperties('AWS::ApiGatewayV2::Authorizer', {
      JwtConfiguration: { Issuer: 'https://login.example.com', Audience: ['dr-dashboard'] },
    });
  });

  it('passes cdk-nag and cfn-lint', async () => {
    const nag = site.report.pluginReports.find((plugin) => plugin.pluginName === 'AwsSolutions');
    expect(nag?.violations).toEqual([]);
    const { code, output } = await cfnLint(join(site.outdir, 'DrControlPlane.template.json'));
    expect(code & 3, output).toBe(0);
  });
});
