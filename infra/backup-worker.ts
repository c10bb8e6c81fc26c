import type { CfnElement } from 'aws-cdk-lib';
import { ArnFormat, Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import { DockerImageAsset } from 'aws-cdk-lib/aws-ecr-assets';
import {
  CfnCluster,
  ContainerImage,
  CpuArchitecture,
  FargateTaskDefinition,
  LogDrivers,
  OperatingSystemFamily,
} from 'aws-cdk-lib/aws-ecs';
import { Rule, RuleTargetInput, Schedule } from 'aws-cdk-lib/aws-events';
import { LambdaFunction } from 'aws-cdk-lib/aws-events-targets';
import { PolicyStatement, Role, ServicePrincipal, type IGrantable, type IRole } from 'aws-cdk-lib/aws-iam';
import type { Key } from 'aws-cdk-lib/aws-kms';
import {
  Architecture,
  type CfnFunction,
  DockerImageCode,
  DockerImageFunction,
  Tracing,
} from 'aws-cdk-lib/aws-lambda';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import { BlockPublicAccess, Bucket, BucketEncryption } from 'aws-cdk-lib/aws-s3';
import { Secret, type ISecret } from 'aws-cdk-lib/aws-secretsmanager';
import { DefinitionBody, LogLevel, StateMachine, StateMachineType } from 'aws-cdk-lib/aws-stepfunctions';
import { RUN_TASK } from '../functions/workflows/definitions.ts';
import type { Table } from 'aws-cdk-lib/aws-dynamodb';
import { Construct, type IConstruct } from 'constructs';
import { fileURLToPath } from 'node:url';
import { DrFunction } from './dr-function.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface BackupWorkerProps {
  readonly table: Table;
  readonly key: Key;
  /** Prefix of the deployment's secrets (target credentials, the database password). */
  readonly secretPrefix: string;
  /**
   * Buckets of S3 targets reached with the worker's own role (targets without static keys). Least
   * privilege: only these. @default none
   */
  readonly backupBuckets?: readonly string[];
  /**
   * Where the worker runs, both the Lambda and the Fargate task (needed for `runner: 'fargate'`): subnets
   * that reach the database, and their security groups. Without it the Lambda runs outside any VPC.
   */
  readonly network?: {
    readonly subnets: readonly string[];
    readonly securityGroups: readonly string[];
  };
  /**
   * The SES identity (a verified address) the worker sends DR-test completion emails from. Without it no
   * email is sent on AWS (the test records why).
   */
  readonly mailFrom?: string;
  /** Directories files may be backed up from and restored into (DR_FILES_ROOTS); none by default. */
  readonly filesRoots?: readonly string[];
  /** Targets may reach private addresses (DR_ALLOW_PRIVATE_ENDPOINTS: checked at every connection). */
  readonly allowPrivateEndpoints?: boolean;
  /** Which runner starts backups: the worker Lambda (≤ 15 minutes) or the Fargate task. @default 'lambda' */
  readonly runner?: 'lambda' | 'fargate';
  /**
   * Where the restore and DR-test workflows run their heavy steps: the worker Lambda, always a Fargate task,
   * or a Fargate task for backups of `fargateFromBytes` and more. Fargate needs `network`.
   * @default 'auto' with a network, 'lambda' without
   */
  readonly heavySteps?: 'lambda' | 'fargate' | 'auto';
  /** @default 1 GiB */
  readonly fargateFromBytes?: number;
  /**
   * Give the Fargate task a public IP (subnets with an internet gateway and no NAT). Without it the subnets
   * need a NAT gateway or the VPC endpoints listed in the README. @default false
   */
  readonly publicIp?: boolean;
  /**
   * Route 53 hosted zones (ids) whose records FAILOVER_TEST and the failover may switch. @default none: no
   * Route 53 access
   */
  readonly failoverZones?: readonly string[];
  /** The Aurora global database FAILOVER_TEST may switch over and the failover may fail over. @default none */
  readonly globalCluster?: string;
  /** Lambda functions (ARNs) application hooks may invoke. @default none */
  readonly hookFunctions?: readonly string[];
  /** ECS services (ARNs) application hooks may scale to 0 and back. @default none */
  readonly hookServices?: readonly string[];
  /** KMS keys (ARNs) that S3 targets name in `kmsKeyId`: the worker and the API may use them. @default none */
  readonly targetKeys?: readonly string[];
  /**
   * An existing master-key secret (complete ARN) to use instead of generating one: a redeploy after the stack
   * was deleted, with the repositories it wrote. `masterKeyKey`: the KMS key that secret is encrypted with,
   * when it is not this stack's.
   */
  readonly masterKeySecretArn?: string;
  readonly masterKeyKey?: string;
  /**
   * An EFS access point mounted at `/mnt/dr-files` in the worker Lambda and the Fargate task (needs
   * `network`): files restores go there (`filesTo` under it: it is a files root), and so do the recovery-time
   * test's scratch files. Without it, files restore only into the worker's own disk (the Lambda's /tmp).
   */
  readonly filesVolume?: { readonly fileSystemId: string; readonly accessPointId: string };
}

/** Where the files volume is mounted in the worker (Lambda requires a path under /mnt). */
export const FILES_MOUNT = '/mnt/dr-files';

/**
 * The backup worker and what drives it:
 * - one container image (Node.js 24 + the PostgreSQL client), run as the worker Lambda and, for backups
 *   longer than Lambda's 15 minutes, as an ECS Fargate task definition;
 * - the dispatcher Lambda, invoked every minute by one EventBridge rule, which evaluates the stored cron
 *   expressions (so schedule changes through the API take effect without a redeploy);
 * - a daily EventBridge rule that applies retention;
 * - the repositories' master key, a generated Secrets Manager secret;
 * - the downloads bucket: the worker exports a backup's artifacts there, the API hands out presigned links,
 *   and a lifecycle rule deletes them after a day.
 * `cdk synth` only stages the image's build context; the image is built at deploy (no Docker at synth).
 */
export class BackupWorker extends Construct {
  readonly workerFunction: DockerImageFunction;
  readonly dispatcher: DrFunction;
  readonly taskDefinition: FargateTaskDefinition;
  readonly cluster: CfnCluster;
  readonly masterKey: ISecret;
  /** The state machine that runs the worker task for Fargate backups and exports (runner fargate). */
  readonly taskMachine?: StateMachine;
  /** Placeholders of the workflow definitions that say where heavy steps' Fargate tasks run. */
  readonly fargateSubstitutions: Record<string, string>;
  /** Whether workflows may run heavy steps on Fargate (their roles then may run the task). */
  readonly heavyOnFargate: boolean;
  private readonly workerRoles: readonly IRole[];
  readonly downloads: Bucket;
  private readonly buckets: readonly string[];
  /** Environment for the functions that start runs (API, dispatcher). */
  readonly launcherEnvironment: Record<string, string>;

  constructor(scope: Construct, id: string, props: BackupWorkerProps) {
    super(scope, id);
    this.buckets = props.backupBuckets ?? [];
    const network = props.network;
    if (props.runner === 'fargate' && !network)
      throw new Error(
        "BackupWorker: workerRunner=fargate needs workerSubnets (and workerSecurityGroups): a Fargate task runs in the operator's subnets, where the database is",
      );
    const heavySteps = props.heavySteps ?? (network ? 'auto' : 'lambda');
    if (heavySteps !== 'lambda' && !network)
      throw new Error(
        `BackupWorker: heavySteps=${heavySteps} needs workerSubnets (and workerSecurityGroups): heavy steps run as Fargate tasks in them`,
      );
    this.heavyOnFargate = heavySteps !== 'lambda';
    if (props.filesVolume && !network)
      throw new Error(
        'BackupWorker: filesFileSystem needs workerSubnets (and workerSecurityGroups): EFS is mounted in the VPC',
      );
    // Generated, under a name CloudFormation picks (a fixed name would collide with the retained secret of
    // a deleted stack on redeploy); kept when the stack is deleted. A redeploy brings the old one back with
    // masterKeySecretArn: without it, no repository it sealed can be read.
    this.masterKey = props.masterKeySecretArn
      ? Secret.fromSecretCompleteArn(this, 'MasterKey', props.masterKeySecretArn)
      : new Secret(this, 'MasterKey', {
          description:
            'DR Automation: the backup repositories master key (SHA-256 of this string); keep a copy offline',
          encryptionKey: props.key,
          generateSecretString: { passwordLength: 64, excludePunctuation: true },
          removalPolicy: RemovalPolicy.RETAIN,
        });

    this.downloads = new Bucket(this, 'Downloads', {
      encryption: BucketEncryption.KMS,
      encryptionKey: props.key,
      bucketKeyEnabled: true,
      blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      lifecycleRules: [
        {
          prefix: 'exports/',
          expiration: Duration.days(1),
          abortIncompleteMultipartUploadAfter: Duration.days(1),
        },
      ],
      // Exports are copies that live a day: they do not block deleting the stack.
      removalPolicy: RemovalPolicy.DESTROY,
      autoDeleteObjects: true,
    });

    const image = new DockerImageAsset(this, 'Image', {
      directory: ROOT,
      file: 'infra/worker.Dockerfile',
      platform: Platform.LINUX_ARM64,
      exclude: ['node_modules', 'cdk.out', '.git', '.dr', 'bench', 'test', 'docs', '**/*.md'],
    });
    const environment = {
      TABLE_NAME: props.table.tableName,
      SECRET_PREFIX: props.secretPrefix,
      SECRETS_KMS_KEY_ID: props.key.keyArn,
      MASTER_KEY_SECRET: this.masterKey.secretArn,
    };
    const workerEnvironment = {
      ...environment,
      DOWNLOAD_BUCKET: this.downloads.bucketName,
      DR_METRICS: 'emf',
      ...(props.mailFrom ? { MAIL_FROM: props.mailFrom } : {}),
      ...(filesRoots(props).length ? { DR_FILES_ROOTS: filesRoots(props).join(':') } : {}),
      ...(props.filesVolume ? { DR_SCRATCH_DIR: `${FILES_MOUNT}/scratch` } : {}),
      ...(props.allowPrivateEndpoints ? { DR_ALLOW_PRIVATE_ENDPOINTS: 'true' } : {}),
    };

    const workerLogs = new LogGroup(this, 'WorkerLogs', {
      retention: RetentionDays.ONE_YEAR,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const workerRole = new Role(this, 'WorkerRole', {
      assumedBy: new ServicePrincipal('lambda.amazonaws.com'),
      description: 'DR Automation backup worker (Lambda)',
    });
    workerRole.addToPolicy(
      new PolicyStatement({
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [workerLogs.logGroupArn],
      }),
    );
    this.workerFunction = new DockerImageFunction(this, 'Worker', {
      description: 'DR Automation backup worker: backups, retention and download exports',
      code: DockerImageCode.fromEcr(image.repository, { tagOrDigest: image.imageTag }),
      architecture: Architecture.ARM_64,
      memorySize: 2048,
      timeout: Duration.minutes(15),
      tracing: Tracing.ACTIVE,
      role: workerRole,
      logGroup: workerLogs,
      environment: workerEnvironment,
      // Async invocations are not retried: a failed run is recorded FAILED and the next firing starts anew.
      retryAttempts: 0,
    });

    if (props.network) {
      // In the operator's subnets (where a private database is reachable). Set on the resource itself: the
      // subnets are all we know (no VPC lookup at synth), and the ENI permissions stay inline, not managed.
      const cfn = this.workerFunction.node.defaultChild as CfnFunction;
      cfn.vpcConfig = {
        subnetIds: [...props.network.subnets],
        securityGroupIds: [...props.network.securityGroups],
      };
      workerRole.addToPolicy(
        new PolicyStatement({
          actions: [
            'ec2:CreateNetworkInterface',
            'ec2:DescribeNetworkInterfaces',
            'ec2:DeleteNetworkInterface',
            'ec2:AssignPrivateIpAddresses',
            'ec2:UnassignPrivateIpAddresses',
          ],
          resources: ['*'],
        }),
      );
      this.workerFunction.node.addDependency(workerRole);
    }
    const stack = Stack.of(this);
    const files = props.filesVolume && {
      fileSystem: stack.formatArn({
        service: 'elasticfilesystem',
        resource: 'file-system',
        resourceName: props.filesVolume.fileSystemId,
      }),
      accessPoint: stack.formatArn({
        service: 'elasticfilesystem',
        resource: 'access-point',
        resourceName: props.filesVolume.accessPointId,
      }),
    };
    if (files) {
      (this.workerFunction.node.defaultChild as CfnFunction).fileSystemConfigs = [
        { arn: files.accessPoint, localMountPath: FILES_MOUNT },
      ];
    }

    // The same image as a Fargate task for long backups.
    const taskLogs = new LogGroup(this, 'TaskLogs', {
      retention: RetentionDays.ONE_YEAR,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    this.taskDefinition = new FargateTaskDefinition(this, 'Task', {
      cpu: 2048,
      memoryLimitMiB: 4096,
      runtimePlatform: {
        cpuArchitecture: CpuArchitecture.ARM64,
        operatingSystemFamily: OperatingSystemFamily.LINUX,
      },
    });
    this.taskDefinition.addContainer('worker', {
      containerName: 'worker',
      image: ContainerImage.fromDockerImageAsset(image),
      entryPoint: ['node'],
      command: ['/var/task/index.mjs'],
      // EMF lines to stdout (awslogs ships them); no CloudWatch agent sidecar needed.
      environment: { ...workerEnvironment, AWS_EMF_ENVIRONMENT: 'Local' },
      logging: LogDrivers.awsLogs({ streamPrefix: 'worker', logGroup: taskLogs }),
    });
    if (props.filesVolume) {
      this.taskDefinition.addVolume({
        name: 'files',
        efsVolumeConfiguration: {
          fileSystemId: props.filesVolume.fileSystemId,
          transitEncryption: 'ENABLED',
          authorizationConfig: { accessPointId: props.filesVolume.accessPointId, iam: 'ENABLED' },
        },
      });
      this.taskDefinition.defaultContainer!.addMountPoints({
        containerPath: FILES_MOUNT,
        sourceVolume: 'files',
        readOnly: false,
      });
    }
    this.cluster = new CfnCluster(this, 'Cluster', {
      clusterSettings: [{ name: 'containerInsights', value: 'enabled' }],
    });

    this.workerRoles = [workerRole, this.taskDefinition.taskRole];
    for (const grantee of this.workerRoles) this.grantWorker(grantee, props);
    // Mount and write the files volume, through its access point only
    if (files)
      for (const grantee of this.workerRoles)
        grantee.addToPrincipalPolicy(
          new PolicyStatement({
            actions: ['elasticfilesystem:ClientMount', 'elasticfilesystem:ClientWrite'],
            resources: [files.fileSystem],
            conditions: { StringEquals: { 'elasticfilesystem:AccessPointArn': files.accessPoint } },
          }),
        );
    this.grantFreeStorage(workerRole);

    this.fargateSubstitutions = {
      WorkerCluster: this.cluster.attrArn,
      WorkerTaskDefinition: this.taskDefinition.taskDefinitionArn,
      // Without a network heavy steps never take the Fargate branch; the placeholders still need a value
      // (an empty substitution is dropped, and a definition with a placeholder left in it is refused).
      WorkerSubnets: network?.subnets.join(',') ?? 'none',
      WorkerSecurityGroups: network?.securityGroups.join(',') ?? 'none',
      WorkerPublicIp: props.publicIp ? 'ENABLED' : 'DISABLED',
    };
    const runner = props.runner === 'fargate' ? 'fargate' : 'lambda';
    if (runner === 'fargate') this.taskMachine = this.workerTaskMachine();
    this.launcherEnvironment = {
      WORKER_FUNCTION: this.workerFunction.functionName,
      WORKER_RUNNER: runner,
      DR_HEAVY_STEPS: heavySteps,
      DR_FARGATE_FROM_BYTES: String(props.fargateFromBytes ?? 1024 ** 3),
      // The API and the dispatcher run outside the operator's subnets: what they know of the source database
      // (the change stream's slot and readiness) the worker measures for them (`watch`).
      ...(network ? { SOURCE_FROM_WORKER: 'true' } : {}),
      ...(this.taskMachine ? { WORKER_TASK_MACHINE: this.taskMachine.stateMachineArn } : {}),
    };

    this.dispatcher = new DrFunction(this, 'Dispatcher', {
      entry: 'functions/dispatcher/handler.ts',
      description: 'DR Automation dispatcher: fires due schedules every minute',
      timeout: Duration.seconds(60),
      environment: {
        ...environment,
        ...this.launcherEnvironment,
        DR_METRICS: 'emf',
        ...(props.mailFrom ? { MAIL_FROM: props.mailFrom } : {}),
      },
    });
    props.table.grantReadWriteData(this.dispatcher.function);
    props.key.grantEncryptDecrypt(this.dispatcher.function);
    this.grantLaunch(this.dispatcher.role);
    // The dispatcher also runs the alert checks every minute, and emails what starts and ends; the
    // storage-capacity checks open targets (their secrets, the named buckets), at most hourly each.
    this.grantMail(this.dispatcher.role, props);
    this.dispatcher.role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
        resources: storedSecrets(this, props.secretPrefix),
      }),
    );
    this.grantBuckets(this.dispatcher.role);
    this.grantTargetKeys(this.dispatcher.role, props);
    this.grantFreeStorage(this.dispatcher.role);
    new Rule(this, 'EveryMinute', {
      description: 'DR Automation: evaluate the backup schedules',
      schedule: Schedule.rate(Duration.minutes(1)),
      targets: [new LambdaFunction(this.dispatcher.function, { retryAttempts: 2 })],
    });
    new Rule(this, 'DailyRetention', {
      description: 'DR Automation: apply backup retention',
      schedule: Schedule.cron({ minute: '30', hour: '3' }),
      targets: [
        new LambdaFunction(this.workerFunction, {
          event: RuleTargetInput.fromObject({ action: 'retention' }),
          retryAttempts: 2,
        }),
      ],
    });
    this.acknowledge(props);
  }

  /** The cdk-nag findings each role of this construct accepts, each with the reason that covers it. */
  private acknowledge(props: BackupWorkerProps): void {
    const stack = Stack.of(this);
    const logicalId = (construct: Construct) => stack.getLogicalId(construct.node.defaultChild as CfnElement);
    const rds = (kind: string, name = '*') =>
      `Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:${kind}:${name}`;
    const kms: [string, string][] = [
      ['Action::kms:GenerateDataKey*', 'Granted by key.grantEncryptDecrypt on the stack key only.'],
      ['Action::kms:ReEncrypt*', 'Granted by key.grantEncryptDecrypt on the stack key only.'],
    ];
    const secrets: [string, string][] = ['config', 'target'].map((kind) => [
      `Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:${props.secretPrefix}/${kind}/*`,
      kind === 'config'
        ? 'Reads the database credentials the DR config names, created at run time under this prefix (read only).'
        : 'Reads target credentials, one secret per target created at run time under this prefix (read only).',
    ]);
    const worker: [string, string][] = [
      [
        'Resource::*',
        "X-Ray, ECR GetAuthorizationToken, the Lambda network interfaces in the operator subnets (ec2:*NetworkInterface*) and CloudWatch GetMetricStatistics (an RDS source's free storage) have no resource-level permissions.",
      ],
      ...kms,
      ...secrets,
      [
        `Resource::<${logicalId(this.downloads)}.Arn>/exports/*`,
        'Write only, on the exports of the downloads bucket (the worker writes the artifacts there).',
      ],
      [
        rds('db'),
        'Describe any instance (read only); restore to a point in time only from a source tagged dr-automation:source=true; promote, snapshot, delete and re-create only a standby tagged dr-automation:standby=true (conditions on each statement).',
      ],
      [
        rds('cluster'),
        'Describe any cluster (read only); restore to a point in time only from a source tagged dr-automation:source=true; global-database switchover only within the configured global cluster.',
      ],
      ...['snapshot', 'cluster-snapshot'].map((kind): [string, string] => [
        rds(kind),
        'Describe and restore from snapshots of the source (restore and recovery-time tests); what is created is only a dr-restore-* copy.',
      ]),
      ...['subgrp', 'og', 'pg', 'cluster-pg'].map((kind): [string, string] => [
        rds(kind),
        "A restored copy or re-created standby is placed in the source's subnet group, option and parameter groups, which RDS authorizes as resources of the request.",
      ]),
      [
        rds('db', 'dr-restore-*'),
        'Create, tag and delete only the instances a restore or test creates (dr-restore-<id>).',
      ],
      [
        rds('cluster', 'dr-restore-*'),
        'Create, tag and delete only the clusters a restore or test creates (dr-restore-<id>).',
      ],
      [
        rds('snapshot', 'dr-failover-*'),
        'The final snapshot of a promoted standby replica before it is re-created (dr-failover-<test id>).',
      ],
      ...this.buckets.map((bucket): [string, string] => [
        `Resource::arn:<AWS::Partition>:s3:::${bucket}/*`,
        'Objects of a bucket the operator named as a backup target (context backupBuckets): the repository lives there.',
      ]),
      ...(props.globalCluster
        ? [
            [
              rds('global-cluster', props.globalCluster),
              'FAILOVER_TEST switches over, and the failover fails over, the global database named at deploy (context globalCluster), in whichever region it is homed.',
            ] as [string, string],
          ]
        : []),
    ];
    for (const role of this.workerRoles) acknowledgeOn(role, worker);
    // Pulling the image and writing the task's log stream (the execution role CDK makes for the task)
    acknowledgeOn(this.taskDefinition.obtainExecutionRole(), [
      ['Resource::*', 'ECR GetAuthorizationToken has no resource-level permission.'],
    ]);
    acknowledgeOn(this.dispatcher.role, [
      [
        'Resource::*',
        "X-Ray PutTraceSegments/PutTelemetryRecords and CloudWatch GetMetricStatistics (an RDS source's free storage) have no resource-level permissions.",
      ],
      ...kms,
      ...secrets,
      [
        `Resource::<${logicalId(this.workerFunction)}.Arn>:*`,
        'grantInvoke covers the worker function and its versions only.',
      ],
      ...this.buckets.map((bucket): [string, string] => [
        `Resource::arn:<AWS::Partition>:s3:::${bucket}/*`,
        'Objects of a bucket the operator named as a backup target: the storage-capacity check lists them.',
      ]),
    ]);
    if (this.masterKey instanceof Secret)
      Validations.of(this.masterKey).acknowledge({
        id: 'AwsSolutions::AwsSolutions-SMG4',
        reason:
          'The master key seals every repository; rotating it is a drctl rekey of each repository, not a secret rotation (see README).',
      });
    Validations.of(this.taskDefinition).acknowledge({
      id: 'AwsSolutions::AwsSolutions-ECS2',
      reason:
        'The environment holds names and ARNs only (table, secret prefix, key, master-key secret ARN); no secret values.',
    });
    Validations.of(this.downloads).acknowledge({
      id: 'AwsSolutions::AwsSolutions-S1',
      reason:
        'Exports live one day; who asked for each link is in the DR audit log (backup.download), and CloudTrail data events can be enabled on this bucket.',
    });
  }

  /** The API's side of downloads: where exports are, and read access to them to presign links. */
  grantDownloads(fn: {
    addEnvironment(name: string, value: string): unknown;
    role?: IRole | undefined;
  }): void {
    fn.addEnvironment('DOWNLOAD_BUCKET', this.downloads.bucketName);
    const role = fn.role!;
    // ListBucket makes a missing export a 404 rather than a 403 (HeadObject tells "not yet" from "denied").
    role.addToPrincipalPolicy(
      new PolicyStatement({ actions: ['s3:ListBucket'], resources: [this.downloads.bucketArn] }),
    );
    role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['s3:GetObject'],
        resources: [this.downloads.arnForObjects('exports/*')],
      }),
    );
    Validations.of(role).acknowledge({
      id: `AwsSolutions::AwsSolutions-IAM5[Resource::<${Stack.of(this).getLogicalId(this.downloads.node.defaultChild as CfnElement)}.Arn>/exports/*]`,
      reason: 'Read only, on the exports of the downloads bucket (presigned links to them).',
    });
  }

  /** The findings a function that starts runs carries (grantLaunch). */
  acknowledgeLaunch(role: IRole): void {
    const invoke = `Resource::<${Stack.of(this).getLogicalId(this.workerFunction.node.defaultChild as CfnElement)}.Arn>:*`;
    acknowledgeOn(role, [[invoke, 'grantInvoke covers the worker function and its versions only.']]);
  }

  /**
   * What a function that starts runs (API, dispatcher) needs: invoke the worker Lambda, or start the
   * worker-task state machine (runner fargate). Never RunTask or PassRole: RunTask takes command overrides,
   * which would let the caller run anything as the worker's task role.
   */
  grantLaunch(role: IRole): void {
    this.workerFunction.grantInvoke(role);
    this.taskMachine?.grantStartExecution(role);
  }

  /**
   * What a state machine needs to run the worker image as a Fargate task and wait for it (`runTask.sync`):
   * RunTask of this task definition in this cluster, stopping and describing its tasks, the managed rule
   * Step Functions watches them with, and passing the task's two roles to ECS only.
   */
  grantRunTask(role: IRole): void {
    const stack = Stack.of(this);
    role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['ecs:RunTask'],
        resources: [this.taskDefinition.taskDefinitionArn],
        conditions: { ArnEquals: { 'ecs:cluster': this.cluster.attrArn } },
      }),
    );
    role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['ecs:StopTask', 'ecs:DescribeTasks'],
        resources: [
          stack.formatArn({ service: 'ecs', resource: 'task', resourceName: `${this.cluster.ref}/*` }),
        ],
      }),
    );
    role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['events:PutTargets', 'events:PutRule', 'events:DescribeRule'],
        resources: [
          stack.formatArn({
            service: 'events',
            resource: 'rule',
            resourceName: 'StepFunctionsGetEventsForECSTaskRule',
          }),
        ],
      }),
    );
    role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['iam:PassRole'],
        resources: [this.taskDefinition.taskRole.roleArn, this.taskDefinition.obtainExecutionRole().roleArn],
        conditions: { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } },
      }),
    );
    acknowledgeOn(role, [
      [
        `Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:<AWS::AccountId>:task/<${stack.getLogicalId(this.cluster)}>/*`,
        'StopTask and DescribeTasks on the tasks of the worker cluster only (their ids are not known in advance).',
      ],
    ]);
  }

  /** Fargate backups and exports: one Task state that runs the worker image with `{variable, value}` set. */
  private workerTaskMachine(): StateMachine {
    const role = new Role(this, 'TaskMachineRole', {
      assumedBy: new ServicePrincipal('states.amazonaws.com'),
      description: 'DR Automation worker-task state machine: runs the backup worker as a Fargate task',
    });
    this.grantRunTask(role);
    const logs = new LogGroup(this, 'TaskMachineLogs', {
      retention: RetentionDays.ONE_YEAR,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const definition = {
      Comment: 'DR Automation: a backup or an export as a Fargate task (the worker image), until it stops',
      StartAt: 'RunWorker',
      TimeoutSeconds: 86_400,
      States: {
        RunWorker: {
          Type: 'Task',
          Resource: RUN_TASK,
          Parameters: {
            Cluster: '${WorkerCluster}',
            TaskDefinition: '${WorkerTaskDefinition}',
            LaunchType: 'FARGATE',
            NetworkConfiguration: {
              AwsvpcConfiguration: {
                'Subnets.$': "States.StringSplit('${WorkerSubnets}', ',')",
                'SecurityGroups.$': "States.StringSplit('${WorkerSecurityGroups}', ',')",
                AssignPublicIp: '${WorkerPublicIp}',
              },
            },
            Overrides: {
              ContainerOverrides: [
                { Name: 'worker', Environment: [{ 'Name.$': '$.variable', 'Value.$': '$.value' }] },
              ],
            },
          },
          Retry: [
            { ErrorEquals: ['ECS.AmazonECSException'], IntervalSeconds: 10, MaxAttempts: 3, BackoffRate: 2 },
          ],
          End: true,
        },
      },
    };
    const machine = new StateMachine(this, 'TaskMachine', {
      stateMachineType: StateMachineType.STANDARD,
      definitionBody: DefinitionBody.fromString(JSON.stringify(definition)),
      definitionSubstitutions: this.fargateSubstitutions,
      role,
      tracingEnabled: true,
      logs: { destination: logs, level: LogLevel.ALL, includeExecutionData: true },
    });
    acknowledgeOn(role, [
      [
        'Resource::*',
        'Step Functions needs logs:*Delivery* and X-Ray PutTraceSegments, which have no resource-level permissions.',
      ],
    ]);
    return machine;
  }

  /** The replication slot's watch reads an RDS source's free storage (CloudWatch has no resource-level rights). */
  private grantFreeStorage(grantee: IGrantable): void {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({ actions: ['cloudwatch:GetMetricStatistics'], resources: ['*'] }),
    );
  }

  /** Encrypt and decrypt with the KMS keys S3 targets name (context targetKeys). */
  grantTargetKeys(grantee: IGrantable, props: Pick<BackupWorkerProps, 'targetKeys'>): void {
    if (!props.targetKeys?.length) return;
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['kms:Encrypt', 'kms:Decrypt', 'kms:GenerateDataKey'],
        resources: [...props.targetKeys],
      }),
    );
  }

  private grantWorker(grantee: IGrantable, props: BackupWorkerProps): void {
    props.table.grantReadWriteData(grantee);
    props.key.grantEncryptDecrypt(grantee);
    this.masterKey.grantRead(grantee);
    if (props.masterKeyKey)
      grantee.grantPrincipal.addToPrincipalPolicy(
        new PolicyStatement({ actions: ['kms:Decrypt'], resources: [props.masterKeyKey] }),
      );
    const stack = Stack.of(this);
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
        resources: storedSecrets(this, props.secretPrefix),
      }),
    );
    this.grantMail(grantee, props);
    this.grantTargetKeys(grantee, props);
    const add = (statement: PolicyStatement) => grantee.grantPrincipal.addToPrincipalPolicy(statement);
    // FAILOVER_TEST switches the staging endpoint record, in the zones named at deploy only.
    if (props.failoverZones?.length)
      add(
        new PolicyStatement({
          actions: ['route53:ListResourceRecordSets', 'route53:ChangeResourceRecordSets'],
          resources: props.failoverZones.map((zone) => `arn:${stack.partition}:route53:::hostedzone/${zone}`),
        }),
      );
    const rdsArn = (resource: string, name = '*') =>
      stack.formatArn({
        service: 'rds',
        resource,
        resourceName: name,
        region: '*',
        arnFormat: ArnFormat.COLON_RESOURCE_NAME,
      });
    const sourceTag = { StringEquals: { 'aws:ResourceTag/dr-automation:source': 'true' } };
    const standbyTag = { StringEquals: { 'aws:ResourceTag/dr-automation:standby': 'true' } };
    const restores = [
      'rds:RestoreDBInstanceToPointInTime',
      'rds:RestoreDBClusterToPointInTime',
      'rds:RestoreDBInstanceFromDBSnapshot',
      'rds:RestoreDBClusterFromSnapshot',
    ];
    // Reading is open: which instance, cluster or snapshot is the source is configured at run time.
    add(
      new PolicyStatement({
        actions: [
          'rds:DescribeDBInstances',
          'rds:DescribeDBClusters',
          'rds:DescribeDBSnapshots',
          'rds:DescribeDBClusterSnapshots',
        ],
        resources: [rdsArn('db'), rdsArn('cluster'), rdsArn('snapshot'), rdsArn('cluster-snapshot')],
      }),
    );
    // What a restore or test creates is a dr-restore-* copy, and only that may be tagged and deleted. IAM
    // checks each resource of a request on its own: the new copy matches here, the source below.
    add(
      new PolicyStatement({
        actions: [
          ...restores,
          'rds:CreateDBInstance',
          'rds:AddTagsToResource',
          'rds:DeleteDBInstance',
          'rds:DeleteDBCluster',
        ],
        resources: [rdsArn('db', 'dr-restore-*'), rdsArn('cluster', 'dr-restore-*')],
      }),
    );
    // The source of a point-in-time restore: an instance or cluster the operator tagged for it.
    add(
      new PolicyStatement({
        actions: ['rds:RestoreDBInstanceToPointInTime', 'rds:RestoreDBClusterToPointInTime'],
        resources: [rdsArn('db'), rdsArn('cluster')],
        conditions: sourceTag,
      }),
    );
    add(
      new PolicyStatement({
        actions: [...restores, 'rds:CreateDBInstanceReadReplica'],
        resources: [
          rdsArn('snapshot'),
          rdsArn('cluster-snapshot'),
          rdsArn('subgrp'),
          rdsArn('og'),
          rdsArn('pg'),
          rdsArn('cluster-pg'),
        ],
      }),
    );
    // FAILOVER_TEST with an RDS standby: only an instance tagged dr-automation:standby=true is promoted,
    // snapshotted and deleted; its re-creation must carry that tag (the replica and its tags are one request).
    add(
      new PolicyStatement({
        actions: ['rds:PromoteReadReplica', 'rds:DeleteDBInstance', 'rds:CreateDBSnapshot'],
        resources: [rdsArn('db')],
        conditions: standbyTag,
      }),
    );
    add(
      new PolicyStatement({
        actions: ['rds:CreateDBSnapshot'],
        resources: [rdsArn('snapshot', 'dr-failover-*')],
      }),
    );
    add(
      new PolicyStatement({
        actions: ['rds:CreateDBInstanceReadReplica', 'rds:AddTagsToResource'],
        resources: [rdsArn('db')],
        conditions: { StringEquals: { 'aws:RequestTag/dr-automation:standby': 'true' } },
      }),
    );
    if (props.globalCluster)
      add(
        new PolicyStatement({
          actions: ['rds:DescribeGlobalClusters', 'rds:SwitchoverGlobalCluster', 'rds:FailoverGlobalCluster'],
          resources: [rdsArn('global-cluster', props.globalCluster), rdsArn('cluster')],
        }),
      );
    // Application hooks: only the functions and services named at deploy.
    if (props.hookFunctions?.length)
      add(new PolicyStatement({ actions: ['lambda:InvokeFunction'], resources: [...props.hookFunctions] }));
    if (props.hookServices?.length)
      add(
        new PolicyStatement({
          actions: ['ecs:DescribeServices', 'ecs:UpdateService'],
          resources: [...props.hookServices],
        }),
      );
    this.grantBuckets(grantee);
    add(
      new PolicyStatement({
        actions: ['s3:PutObject', 's3:AbortMultipartUpload'],
        resources: [this.downloads.arnForObjects('exports/*')],
      }),
    );
  }

  /** SES sending from the configured address (or its domain) only, where one is configured. */
  private grantMail(grantee: IGrantable, props: BackupWorkerProps): void {
    if (!props.mailFrom) return;
    const stack = Stack.of(this);
    const domain = props.mailFrom.split('@')[1]!;
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['ses:SendEmail'],
        resources: [
          stack.formatArn({ service: 'ses', resource: 'identity', resourceName: props.mailFrom }),
          stack.formatArn({ service: 'ses', resource: 'identity', resourceName: domain }),
        ],
      }),
    );
  }

  /**
   * Read and write on the buckets of role-based S3 targets (the worker; the API for check and usage, and
   * with `lifecycle` for the lifecycle rules it puts on them when a target is saved).
   */
  grantBuckets(grantee: IGrantable, options: { lifecycle?: boolean } = {}): void {
    const stack = Stack.of(this);
    for (const bucket of this.buckets) {
      if (options.lifecycle)
        grantee.grantPrincipal.addToPrincipalPolicy(
          new PolicyStatement({
            actions: ['s3:GetLifecycleConfiguration', 's3:PutLifecycleConfiguration'],
            resources: [`arn:${stack.partition}:s3:::${bucket}`],
          }),
        );
      grantee.grantPrincipal.addToPrincipalPolicy(
        new PolicyStatement({
          actions: ['s3:ListBucket', 's3:GetBucketLocation', 's3:ListBucketMultipartUploads'],
          resources: [`arn:${stack.partition}:s3:::${bucket}`],
        }),
      );
      grantee.grantPrincipal.addToPrincipalPolicy(
        new PolicyStatement({
          actions: [
            's3:GetObject',
            's3:PutObject',
            's3:DeleteObject',
            's3:AbortMultipartUpload',
            's3:ListMultipartUploadParts',
            's3:PutObjectRetention',
          ],
          resources: [`arn:${stack.partition}:s3:::${bucket}/*`],
        }),
      );
    }
  }
}

/** Acknowledges cdk-nag IAM5 findings on one role, each with the reason that covers it. */
export function acknowledgeOn(role: IConstruct, findings: readonly (readonly [string, string])[]): void {
  for (const [finding, reason] of findings)
    Validations.of(role).acknowledge({ id: `AwsSolutions::AwsSolutions-IAM5[${finding}]`, reason });
}

/** The secrets the API writes and the worker and dispatcher read: database credentials and target credentials (never the master key). */
export function storedSecrets(scope: Construct, prefix: string): string[] {
  return ['config', 'target'].map((kind) =>
    Stack.of(scope).formatArn({
      service: 'secretsmanager',
      resource: 'secret',
      resourceName: `${prefix}/${kind}/*`,
      arnFormat: ArnFormat.COLON_RESOURCE_NAME,
    }),
  );
}

/** Where files may be backed up from and restored into: the operator's roots, and the files volume. */
export function filesRoots(props: Pick<BackupWorkerProps, 'filesRoots' | 'filesVolume'>): string[] {
  return [...(props.filesRoots ?? []), ...(props.filesVolume ? [FILES_MOUNT] : [])];
}
