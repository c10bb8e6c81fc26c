import { readFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { App, Stack, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { AttributeType, Table } from 'aws-cdk-lib/aws-dynamodb';
import { AwsSolutionsChecks } from 'cdk-nag';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { buildApp } from '../../infra/app.ts';

const run = promisify(execFile);

interface Report {
  pluginReports: {
    pluginName: string;
    conclusion: string;
    violations: unknown[];
    suppressedViolations: { ruleName: string; reason?: string }[];
  }[];
}

async function synthesize(
  context: Record<string, string> = {},
): Promise<{ outdir: string; template: Template; report: Report }> {
  const outdir = await mkdtemp(join(tmpdir(), 'dr-cdk-'));
  const { app, controlPlane } = buildApp(new App({ outdir, context }));
  const template = Template.fromStack(controlPlane);
  app.synth();
  const report = JSON.parse(await readFile(join(outdir, 'validation-report.json'), 'utf8')) as Report;
  return { outdir, template, report };
}

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
    for (const role of Object.values(roles)) expect(role.Properties.ManagedPolicyArns).toBeUndefined();
    const policies = Object.values(synthesized.template.findResources('AWS::IAM::Policy'));
    const statements = policies.flatMap(
      (policy) =>
        policy.Properties.PolicyDocument.Statement as { Action: string | string[]; Resource: unknown }[],
    );
    const secrets = statements.filter((statement) =>
      [statement.Action].flat().some((action) => action.startsWith('secretsmanager:')),
    );
    // Every secret grant is under the stack's prefix (target credentials) or on the master-key secret.
    for (const statement of secrets) {
      expect([statement.Action].flat()).not.toContain('secretsmanager:*');
      expect(JSON.stringify(statement.Resource)).toMatch(/:secret:DrControlPlane\/\*|MasterKey/);
    }
    // Only the API writes secrets (targets and the config are changed through it).
    const writers = secrets.filter((statement) =>
      [statement.Action].flat().some((action) => /Create|Put|Delete/.test(action)),
    );
    expect(writers).toHaveLength(1);
    const logs = statements.find((statement) => [statement.Action].flat().includes('logs:PutLogEvents'));
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

  it('lets the API and the dispatcher start the worker, and nothing more', () => {
    const workerId = Object.keys(
      synthesized.template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    const taskId = Object.keys(synthesized.template.findResources('AWS::ECS::TaskDefinition'))[0]!;
    const policies = Object.entries(synthesized.template.findResources('AWS::IAM::Policy'));
    const statements = policies.flatMap(([, policy]) => policy.Properties.PolicyDocument.Statement as any[]);
    const invokes = statements.filter((statement) =>
      [statement.Action].flat().includes('lambda:InvokeFunction'),
    );
    // The API and the dispatcher start runs; the five state machines run their steps in the worker.
    expect(invokes).toHaveLength(7);
    for (const statement of invokes) expect(JSON.stringify(statement.Resource)).toContain(`"${workerId}"`);
    const runTask = statements.filter((statement) => [statement.Action].flat().includes('ecs:RunTask'));
    for (const statement of runTask) {
      expect(statement.Condition).toHaveProperty(['ArnEquals', 'ecs:cluster']);
      expect(JSON.stringify(statement.Resource)).toContain(taskId);
    }
    const passRole = statements.filter((statement) => [statement.Action].flat().includes('iam:PassRole'));
    for (const statement of passRole)
      expect(statement.Condition).toEqual({
        StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' },
      });
    // No S3 access unless buckets are named, but the downloads bucket's.
    const downloads = Object.keys(synthesized.template.findResources('AWS::S3::Bucket'))[0]!;
    const s3 = statements.filter((statement) =>
      [statement.Action].flat().some((a: string) => a.startsWith('s3:')),
    );
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
    expect(api.Properties.Environment.Variables).toMatchObject({
      WORKER_RUNNER: 'fargate',
      WORKER_SUBNETS: 'subnet-a,subnet-b',
      WORKER_SECURITY_GROUPS: 'sg-1',
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
    for (const role of Object.values(template.findResources('AWS::IAM::Role')))
      expect(role.Properties.ManagedPolicyArns ?? []).toEqual([]);
    const [nag] = report.pluginReports.filter((plugin) => plugin.pluginName === 'AwsSolutions');
    expect(nag!.violations).toEqual([]);
  });

  it('lets the worker create from snapshots and delete only the RDS instances and clusters a restore or test created', () => {
    const statements = Object.values(synthesized.template.findResources('AWS::IAM::Policy')).flatMap(
      (policy) => policy.Properties.PolicyDocument.Statement as any[],
    );
    const deletes = statements.filter((statement) =>
      [statement.Action].flat().some((action: string) => /^rds:Delete/.test(action)),
    );
    expect(deletes.length).toBeGreaterThan(0);
    for (const statement of deletes) {
      // A standby replica FAILOVER_TEST re-creates: any instance, but only one tagged for it.
      if (statement.Condition) {
        expect(statement.Condition).toEqual({
          StringEquals: { 'aws:ResourceTag/dr-automation:standby': 'true' },
        });
        expect([statement.Action].flat().sort()).toEqual(['rds:DeleteDBInstance', 'rds:PromoteReadReplica']);
        continue;
      }
      for (const resource of [statement.Resource].flat())
        expect(JSON.stringify(resource)).toMatch(/:(db|cluster):dr-restore-\*"/);
    }
    expect(statements.some((statement) => [statement.Action].flat().includes('rds:*'))).toBe(false);
    // Snapshots are restored only into temporary dr-restore-* instances and clusters.
    const fromSnapshot = statements.filter((statement) =>
      [statement.Action].flat().includes('rds:RestoreDBInstanceFromDBSnapshot'),
    );
    expect(fromSnapshot.length).toBeGreaterThan(0); // the worker Lambda's role and the Fargate task's
    for (const statement of fromSnapshot) {
      const targets = [statement.Resource]
        .flat()
        .map((resource: unknown) => JSON.stringify(resource))
        .filter((resource: string) => /:(db|cluster):/.test(resource));
      expect(targets).toHaveLength(2);
      for (const resource of targets) expect(resource).toMatch(/:(db|cluster):dr-restore-\*"/);
    }
  });

  it('defines the restore and DR-test state machines from statemachines/ with the worker substituted, logged and traced', () => {
    const { template } = synthesized;
    const workerId = Object.keys(
      template.findResources('AWS::Lambda::Function', { Properties: { PackageType: 'Image' } }),
    )[0]!;
    const machines = Object.values(template.findResources('AWS::StepFunctions::StateMachine'));
    expect(machines).toHaveLength(5);
    const files = [
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
      expect(props.DefinitionSubstitutions).toEqual({
        WorkerFunctionArn: { 'Fn::GetAtt': [workerId, 'Arn'] },
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
    expect(starts).toHaveLength(5);
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
      'STATE_MACHINE_BACKUP_VERIFICATION',
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

  it('alarms on failed backups, the RPO (and a silent dispatcher) and overdue DR tests, with a dashboard', () => {
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
