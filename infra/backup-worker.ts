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
import { Secret } from 'aws-cdk-lib/aws-secretsmanager';
import type { Table } from 'aws-cdk-lib/aws-dynamodb';
import { Construct } from 'constructs';
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
}

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
  readonly masterKey: Secret;
  readonly downloads: Bucket;
  private readonly buckets: readonly string[];
  /** Environment for the functions that start runs (API, dispatcher). */
  readonly launcherEnvironment: Record<string, string>;

  constructor(scope: Construct, id: string, props: BackupWorkerProps) {
    super(scope, id);
    this.buckets = props.backupBuckets ?? [];
    this.masterKey = new Secret(this, 'MasterKey', {
      secretName: `${props.secretPrefix}/repository-master-key`,
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
      removalPolicy: RemovalPolicy.DESTROY,
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
      ...(props.filesRoots?.length ? { DR_FILES_ROOTS: props.filesRoots.join(':') } : {}),
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
    this.cluster = new CfnCluster(this, 'Cluster', {
      clusterSettings: [{ name: 'containerInsights', value: 'enabled' }],
    });

    for (const grantee of [workerRole, this.taskDefinition.taskRole]) this.grantWorker(grantee, props);
    this.grantFreeStorage(workerRole);

    const runner = props.runner === 'fargate' && props.network ? 'fargate' : 'lambda';
    this.launcherEnvironment = {
      WORKER_FUNCTION: this.workerFunction.functionName,
      WORKER_RUNNER: runner,
      // The API and the dispatcher run outside the operator's subnets: what they know of the source database
      // (the change stream's slot and readiness) the worker measures for them (`watch`).
      ...(props.network ? { SOURCE_FROM_WORKER: 'true' } : {}),
      ...(runner === 'fargate'
        ? {
            WORKER_CLUSTER: this.cluster.attrArn,
            WORKER_TASK_DEFINITION: this.taskDefinition.taskDefinitionArn,
            WORKER_CONTAINER: 'worker',
            WORKER_SUBNETS: props.network!.subnets.join(','),
            WORKER_SECURITY_GROUPS: props.network!.securityGroups.join(','),
          }
        : {}),
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
        resources: [
          Stack.of(this).formatArn({
            service: 'secretsmanager',
            resource: 'secret',
            resourceName: `${props.secretPrefix}/*`,
            arnFormat: ArnFormat.COLON_RESOURCE_NAME,
          }),
        ],
      }),
    );
    this.grantBuckets(this.dispatcher.role);
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
    this.acknowledge(props.secretPrefix);
  }

  /** The cdk-nag findings this construct accepts, each with its reason. */
  private acknowledge(secretPrefix: string): void {
    const invoke = `Resource::<${Stack.of(this).getLogicalId(this.workerFunction.node.defaultChild as CfnElement)}.Arn>:*`;
    const findings: [string, string][] = [
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::*]',
        "X-Ray, ECR authorization (GetAuthorizationToken), the Lambda network interfaces in the operator subnets (ec2:*NetworkInterface*) and CloudWatch GetMetricStatistics (an RDS source's free storage, for the replication slot watch) have no resource-level permissions.",
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Action::kms:GenerateDataKey*]',
        'Granted by key.grantEncryptDecrypt on the stack key only.',
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Action::kms:ReEncrypt*]',
        'Granted by key.grantEncryptDecrypt on the stack key only.',
      ],
      [
        `AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:${secretPrefix}/*]`,
        "The worker reads target credentials and the database password, created at run time under this stack's prefix (read only).",
      ],
      [
        `AwsSolutions::AwsSolutions-IAM5[${invoke}]`,
        'grantInvoke covers the worker function and its versions only.',
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:db:*]',
        'Point-in-time restores read and restore the RDS source configured at run time (describe and restore only).',
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:cluster:*]',
        'Point-in-time restores read and restore the Aurora source configured at run time (describe and restore only).',
      ],
      ...(['snapshot', 'cluster-snapshot', 'subgrp', 'og', 'pg', 'cluster-pg'] as const).map(
        (kind): [string, string] => [
          `AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:${kind}:*]`,
          "Restore and recovery-time tests on RDS read the source's snapshots and restore the newest into a temporary dr-restore-* instance in the source's subnet group, option and parameter groups (configured at run time).",
        ],
      ),
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:global-cluster:*]',
        'FAILOVER_TEST switches the staging Aurora global database (configured at run time) over to its secondary and back.',
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:snapshot:dr-failover-*]',
        'The final snapshot of a promoted standby replica before it is re-created (named dr-failover-<test id>).',
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:db:dr-restore-*]',
        'Create, tag and delete only the instances a restore creates (named dr-restore-<restore id>).',
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:<AWS::AccountId>:cluster:dr-restore-*]',
        'Create, tag and delete only the clusters a restore creates (named dr-restore-<restore id>).',
      ],
      [
        'AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:route53:::hostedzone/*]',
        "FAILOVER_TEST switches the staging environment's endpoint record, whose zone is configured at run time, and switches it back.",
      ],
      [
        'AwsSolutions::AwsSolutions-SMG4',
        'The master key seals every repository; rotating it is a drctl rekey of each repository, not a secret rotation (see README).',
      ],
      [
        'AwsSolutions::AwsSolutions-ECS2',
        'The environment holds names and ARNs only (table, secret prefix, key, master-key secret ARN); no secret values.',
      ],
    ];
    for (const [id, reason] of findings) Validations.of(this).acknowledge({ id, reason });
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
  acknowledgeLaunch(scope: Construct): void {
    const invoke = `Resource::<${Stack.of(this).getLogicalId(this.workerFunction.node.defaultChild as CfnElement)}.Arn>:*`;
    Validations.of(scope).acknowledge({
      id: `AwsSolutions::AwsSolutions-IAM5[${invoke}]`,
      reason: 'grantInvoke covers the worker function and its versions only.',
    });
  }

  /** What a function that starts runs (API, dispatcher) needs: invoke the worker, or run its task. */
  grantLaunch(role: IRole): void {
    this.workerFunction.grantInvoke(role);
    role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['ecs:RunTask'],
        resources: [this.taskDefinition.taskDefinitionArn],
        conditions: { ArnEquals: { 'ecs:cluster': this.cluster.attrArn } },
      }),
    );
    role.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['iam:PassRole'],
        resources: [this.taskDefinition.taskRole.roleArn, this.taskDefinition.obtainExecutionRole().roleArn],
        conditions: { StringEquals: { 'iam:PassedToService': 'ecs-tasks.amazonaws.com' } },
      }),
    );
  }

  /** The replication slot's watch reads an RDS source's free storage (CloudWatch has no resource-level rights). */
  private grantFreeStorage(grantee: IGrantable): void {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({ actions: ['cloudwatch:GetMetricStatistics'], resources: ['*'] }),
    );
  }

  private grantWorker(grantee: IGrantable, props: BackupWorkerProps): void {
    props.table.grantReadWriteData(grantee);
    props.key.grantEncryptDecrypt(grantee);
    this.masterKey.grantRead(grantee);
    const stack = Stack.of(this);
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
        resources: [
          stack.formatArn({
            service: 'secretsmanager',
            resource: 'secret',
            resourceName: `${props.secretPrefix}/*`,
            arnFormat: ArnFormat.COLON_RESOURCE_NAME,
          }),
        ],
      }),
    );
    // RDS/Aurora point-in-time restores: read and restore any instance or cluster (the source is
    // configured at run time), but create, tag and delete only what a restore creates (dr-restore-*): the
    // worker can never delete a database it did not make.
    this.grantMail(grantee, props);
    // FAILOVER_TEST switches the staging endpoint record (the zone is configured at run time) and back.
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['route53:ListResourceRecordSets', 'route53:ChangeResourceRecordSets'],
        resources: [`arn:${stack.partition}:route53:::hostedzone/*`],
      }),
    );
    const rdsArn = (
      resource:
        | 'db'
        | 'cluster'
        | 'global-cluster'
        | 'snapshot'
        | 'cluster-snapshot'
        | 'subgrp'
        | 'og'
        | 'pg'
        | 'cluster-pg',
      name: string,
    ) =>
      stack.formatArn({
        service: 'rds',
        resource,
        resourceName: name,
        region: '*',
        arnFormat: ArnFormat.COLON_RESOURCE_NAME,
      });
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: [
          'rds:DescribeDBInstances',
          'rds:DescribeDBClusters',
          'rds:RestoreDBInstanceToPointInTime',
          'rds:RestoreDBClusterToPointInTime',
        ],
        resources: [rdsArn('db', '*'), rdsArn('cluster', '*')],
      }),
    );
    // FAILOVER_TEST with an RDS standby: only instances tagged dr-automation:standby=true are promoted, deleted
    // (with a final snapshot) and re-created (with that tag); Aurora global databases are switched over.
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['rds:PromoteReadReplica', 'rds:DeleteDBInstance'],
        resources: [rdsArn('db', '*')],
        conditions: { StringEquals: { 'aws:ResourceTag/dr-automation:standby': 'true' } },
      }),
    );
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['rds:CreateDBInstanceReadReplica', 'rds:CreateDBSnapshot'],
        resources: [rdsArn('db', '*'), rdsArn('snapshot', 'dr-failover-*'), rdsArn('subgrp', '*')],
      }),
    );
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['rds:DescribeGlobalClusters', 'rds:SwitchoverGlobalCluster'],
        resources: [rdsArn('global-cluster', '*'), rdsArn('cluster', '*')],
      }),
    );
    // RESTORE_TEST / RECOVERY_TIME_TEST on RDS: the source's newest snapshot into a temporary dr-restore-*.
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['rds:DescribeDBSnapshots', 'rds:DescribeDBClusterSnapshots'],
        resources: [
          rdsArn('db', '*'),
          rdsArn('cluster', '*'),
          rdsArn('snapshot', '*'),
          rdsArn('cluster-snapshot', '*'),
        ],
      }),
    );
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['rds:RestoreDBInstanceFromDBSnapshot', 'rds:RestoreDBClusterFromSnapshot'],
        resources: [
          rdsArn('db', 'dr-restore-*'),
          rdsArn('cluster', 'dr-restore-*'),
          rdsArn('snapshot', '*'),
          rdsArn('cluster-snapshot', '*'),
          rdsArn('subgrp', '*'),
          rdsArn('og', '*'),
          rdsArn('pg', '*'),
          rdsArn('cluster-pg', '*'),
        ],
      }),
    );
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: [
          'rds:CreateDBInstance',
          'rds:AddTagsToResource',
          'rds:DeleteDBInstance',
          'rds:DeleteDBCluster',
        ],
        resources: [rdsArn('db', 'dr-restore-*'), rdsArn('cluster', 'dr-restore-*')],
      }),
    );
    this.grantBuckets(grantee);
    grantee.grantPrincipal.addToPrincipalPolicy(
      new PolicyStatement({
        actions: ['s3:PutObject', 's3:AbortMultipartUpload'],
        resources: [this.downloads.arnForObjects('exports/*')],
      }),
    );
    Validations.of(grantee instanceof Construct ? grantee : this).acknowledge({
      id: `AwsSolutions::AwsSolutions-IAM5[Resource::<${Stack.of(this).getLogicalId(this.downloads.node.defaultChild as CfnElement)}.Arn>/exports/*]`,
      reason: 'Write only, on the exports of the downloads bucket (the worker writes the artifacts there).',
    });
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
      Validations.of(grantee instanceof Construct ? grantee : this).acknowledge({
        id: `AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::${bucket}/*]`,
        reason:
          'Objects of a bucket the operator named as a backup target (context backupBuckets): the repository lives there.',
      });
    }
  }
}
