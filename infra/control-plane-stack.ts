import { CfnOutput, Duration, RemovalPolicy, Stack, Validations, type StackProps } from 'aws-cdk-lib';
import { AccessLogFormat } from 'aws-cdk-lib/aws-apigateway';
import {
  CorsHttpMethod,
  HttpApi,
  HttpMethod,
  HttpNoneAuthorizer,
  HttpStage,
  LogGroupLogDestination,
} from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpIamAuthorizer, HttpJwtAuthorizer } from 'aws-cdk-lib/aws-apigatewayv2-authorizers';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import { AttributeType, BillingMode, Table, TableEncryption } from 'aws-cdk-lib/aws-dynamodb';
import { PolicyStatement, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import { Key } from 'aws-cdk-lib/aws-kms';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { TABLE_KEYS } from '../functions/core/store/table.ts';
import {
  acknowledgeOn,
  BackupWorker,
  filesRoots,
  storedSecrets,
  type BackupWorkerProps,
} from './backup-worker.ts';
import { Workflows } from './workflows.ts';
import { Monitoring } from './monitoring.ts';
import { Dashboard } from './dashboard.ts';
import { DrFunction } from './dr-function.ts';

export interface JwtAuthorization {
  /** The token issuer URL (for example a Cognito user pool or an OIDC provider). */
  readonly issuer: string;
  readonly audience: readonly string[];
}

export interface ControlPlaneStackProps extends StackProps {
  /**
   * How API callers authenticate. @default IAM (SigV4-signed requests, for operators and automation with
   * AWS credentials); give a JWT issuer and audience to accept OIDC tokens instead.
   */
  readonly jwt?: JwtAuthorization;
  /**
   * Let targets point at private addresses (an on-premises MinIO, a VPC endpoint by IP): sets
   * DR_ALLOW_PRIVATE_ENDPOINTS on the API and the worker (which check again at every connection). The instance-metadata and link-local addresses stay refused.
   */
  readonly allowPrivateEndpoints?: boolean;
  /** Addresses subscribed to the alarm topic. @default none (subscribe later: README) */
  readonly alarmEmails?: readonly string[];
  /** @default 50 requests per second, bursts of 100 */
  readonly throttle?: { readonly rateLimit: number; readonly burstLimit: number };
  /**
   * Serve the DR Management dashboard (S3 behind CloudFront). The API then takes JWTs: of `jwt`'s issuer when
   * given (the dashboard signs in with client `clientId`, default the first audience), else of a Cognito user
   * pool made for it; its CORS allows the dashboard's origin only. @default no dashboard
   */
  readonly dashboard?: { readonly clientId?: string };
  /** The backup worker's settings (buckets of role-based S3 targets, the runner, Fargate's network). */
  readonly worker?: Omit<BackupWorkerProps, 'table' | 'key' | 'secretPrefix'>;
}

/**
 * The control plane: the /api/dr HTTP API, its Lambda, the table that holds configs, targets, schedules and
 * the audit log, and the KMS key that encrypts the table and the target credentials in Secrets Manager.
 */
export class ControlPlaneStack extends Stack {
  readonly api: HttpApi;
  readonly table: Table;
  readonly key: Key;
  readonly worker: BackupWorker;
  readonly workflows: Workflows;
  readonly monitoring: Monitoring;
  readonly dashboard: Dashboard | undefined;

  constructor(scope: Construct, id: string, props: ControlPlaneStackProps = {}) {
    super(scope, id, props);
    if (props.jwt && (props.jwt.issuer === '' || props.jwt.audience.length === 0)) {
      throw new Error('ControlPlaneStack: jwt needs an issuer and at least one audience');
    }

    this.key = new Key(this, 'Key', {
      description: 'DR Automation: encrypts the control-plane table and target credentials',
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // Table rather than TableV2: TableV2 with a customer-managed key needs a region-bound stack, and synth
    // must work offline with no account or region.
    this.table = new Table(this, 'Table', {
      partitionKey: { name: TABLE_KEYS.partitionKey, type: AttributeType.STRING },
      sortKey: { name: TABLE_KEYS.sortKey, type: AttributeType.STRING },
      billingMode: BillingMode.PAY_PER_REQUEST,
      encryption: TableEncryption.CUSTOMER_MANAGED,
      encryptionKey: this.key,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // Secrets are created at run time by the API, named <stack name>/<kind>/<id>/<generation>.
    const secretPrefix = this.stackName;
    const apiFunction = new DrFunction(this, 'ApiFunction', {
      entry: 'functions/api/handler.ts',
      description: 'DR Automation /api/dr API',
      environment: {
        TABLE_NAME: this.table.tableName,
        SECRET_PREFIX: secretPrefix,
        SECRETS_KMS_KEY_ID: this.key.keyArn,
        ...(props.allowPrivateEndpoints ? { DR_ALLOW_PRIVATE_ENDPOINTS: 'true' } : {}),
        ...(filesRoots(props.worker ?? {}).length
          ? { DR_FILES_ROOTS: filesRoots(props.worker ?? {}).join(':') }
          : {}),
      },
    });
    const fn = apiFunction.function;
    this.worker = new BackupWorker(this, 'BackupWorker', {
      table: this.table,
      key: this.key,
      secretPrefix,
      ...props.worker,
      ...(props.allowPrivateEndpoints ? { allowPrivateEndpoints: true } : {}),
    });
    for (const [name, value] of Object.entries(this.worker.launcherEnvironment))
      fn.addEnvironment(name, value);
    this.worker.grantLaunch(apiFunction.role);
    this.worker.acknowledgeLaunch(apiFunction.role);
    // check, usage and lifecycle rules of role-based S3 targets run with the API's role.
    this.worker.grantBuckets(apiFunction.role, { lifecycle: true });
    this.worker.grantTargetKeys(apiFunction.role, props.worker ?? {});
    this.worker.grantDownloads(fn);
    this.workflows = new Workflows(this, 'Workflows', {
      worker: this.worker.workerFunction,
      fargateSubstitutions: this.worker.fargateSubstitutions,
      ...(this.worker.heavyOnFargate ? { grantRunTask: (role) => this.worker.grantRunTask(role) } : {}),
    });
    this.workflows.grantStart(fn);
    // FULL schedules with several workers fan out over Fargate tasks: the API and the dispatcher start them
    if (this.worker.heavyOnFargate) {
      const fanOut = this.workflows.machines.get('backup-fanout')!;
      for (const starter of [apiFunction, this.worker.dispatcher]) {
        starter.function.addEnvironment('BACKUP_FANOUT_MACHINE', fanOut.stateMachineArn);
        fanOut.grantStartExecution(starter.role);
      }
    }
    // The dispatcher's watch starts the failover when the primary is down (autoFailover).
    const failover = this.workflows.machines.get('failover')!;
    this.worker.dispatcher.function.addEnvironment('STATE_MACHINE_FAILOVER', failover.stateMachineArn);
    failover.grantStartExecution(this.worker.dispatcher.role);
    this.monitoring = new Monitoring(this, 'Monitoring', {
      key: this.key,
      ...(props.alarmEmails?.length ? { alarmEmails: props.alarmEmails } : {}),
    });
    // CloudWatch publishes to the encrypted topic with the stack key
    this.key.addToResourcePolicy(
      new PolicyStatement({
        principals: [new ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
      }),
    );
    this.table.grantReadWriteData(fn);
    this.key.grantEncryptDecrypt(fn);
    fn.addToRolePolicy(
      new PolicyStatement({
        actions: [
          'secretsmanager:CreateSecret',
          'secretsmanager:PutSecretValue',
          'secretsmanager:GetSecretValue',
          'secretsmanager:DeleteSecret',
          'secretsmanager:DescribeSecret',
          'secretsmanager:TagResource',
        ],
        // The database credentials and the target credentials: never the master key (the worker's alone).
        resources: storedSecrets(this, secretPrefix),
      }),
    );
    // With IAM authorization, a caller's role is its principal's dr-automation:role tag (read, cached).
    if (!props.jwt)
      fn.addToRolePolicy(
        new PolicyStatement({
          actions: ['iam:ListRoleTags', 'iam:ListUserTags'],
          resources: [
            this.formatArn({ service: 'iam', region: '', resource: 'role', resourceName: '*' }),
            this.formatArn({ service: 'iam', region: '', resource: 'user', resourceName: '*' }),
          ],
        }),
      );
    acknowledgeOn(apiFunction.role, [
      ...(['role', 'user'] as const).map((kind): [string, string] => [
        `Resource::arn:<AWS::Partition>:iam::<AWS::AccountId>:${kind}/*`,
        'Reads the tags of the IAM principal calling the API (its dr-automation:role), whichever it is; tags only.',
      ]),
      ['Resource::*', 'X-Ray PutTraceSegments/PutTelemetryRecords have no resource-level permissions.'],
      [
        'Action::kms:GenerateDataKey*',
        'Granted by key.grantEncryptDecrypt on the stack key only (table and secrets encryption).',
      ],
      [
        'Action::kms:ReEncrypt*',
        'Granted by key.grantEncryptDecrypt on the stack key only (table and secrets encryption).',
      ],
      [
        `Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:${secretPrefix}/config/*`,
        'The database credentials of the DR config, written when the config is saved (one secret, generations under this prefix).',
      ],
      [
        `Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:${secretPrefix}/target/*`,
        'Target credentials, one secret per target, created at run time under this prefix.',
      ],
      ...(props.worker?.backupBuckets ?? []).map((bucket): [string, string] => [
        `Resource::arn:<AWS::Partition>:s3:::${bucket}/*`,
        'Objects of a bucket the operator named as a backup target: the target check writes, reads and deletes one probe object.',
      ]),
    ]);

    const accessLogs = new LogGroup(this, 'ApiAccessLogs', {
      retention: RetentionDays.ONE_YEAR,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const dashboard = props.dashboard
      ? new Dashboard(this, 'Dashboard', {
          ...(props.jwt
            ? {
                signIn: {
                  issuer: props.jwt.issuer,
                  clientId: props.dashboard.clientId ?? props.jwt.audience[0]!,
                },
              }
            : {}),
        })
      : undefined;
    const jwt =
      props.jwt ??
      (dashboard ? { issuer: dashboard.signIn.issuer, audience: [dashboard.signIn.clientId] } : undefined);
    this.dashboard = dashboard;
    this.api = new HttpApi(this, 'Api', {
      description: 'DR Automation /api/dr',
      createDefaultStage: false,
      defaultAuthorizer: jwt
        ? new HttpJwtAuthorizer('JwtAuthorizer', jwt.issuer, { jwtAudience: [...jwt.audience] })
        : new HttpIamAuthorizer(),
      ...(dashboard
        ? {
            corsPreflight: {
              allowOrigins: [dashboard.origin],
              allowHeaders: ['authorization', 'content-type'],
              allowMethods: [
                CorsHttpMethod.GET,
                CorsHttpMethod.POST,
                CorsHttpMethod.PUT,
                CorsHttpMethod.PATCH,
                CorsHttpMethod.DELETE,
              ],
              maxAge: Duration.hours(1),
            },
          }
        : {}),
    });
    const stage = new HttpStage(this, 'DefaultStage', {
      httpApi: this.api,
      stageName: '$default',
      autoDeploy: true,
      throttle: props.throttle ?? { rateLimit: 50, burstLimit: 100 },
      accessLogSettings: {
        destination: new LogGroupLogDestination(accessLogs),
        format: AccessLogFormat.jsonWithStandardFields(),
      },
    });

    const integration = new HttpLambdaIntegration('ApiIntegration', fn);
    this.api.addRoutes({ path: '/api/dr/{proxy+}', methods: [HttpMethod.ANY], integration });
    const [health] = this.api.addRoutes({
      path: '/api/dr/health',
      methods: [HttpMethod.GET],
      integration,
      authorizer: new HttpNoneAuthorizer(),
    });
    if (health) {
      Validations.of(health).acknowledge({
        id: 'AwsSolutions-APIG4',
        reason:
          'The health check answers without authentication by design (load balancers, uptime probes); it returns only status and version.',
      });
    }

    dashboard?.deploy(stage.url);

    new CfnOutput(this, 'ApiUrl', {
      value: `${stage.url}api/dr`,
      description: 'Base URL of the /api/dr API',
    });
    new CfnOutput(this, 'TableName', { value: this.table.tableName });
    new CfnOutput(this, 'AlarmTopicArn', {
      value: this.monitoring.topic.topicArn,
      description: 'Every alarm notifies this topic: subscribe to it (email, chat, paging)',
    });
    new CfnOutput(this, 'MasterKeySecretArn', {
      value: this.worker.masterKey.secretArn,
      description:
        'The repositories master key (kept when the stack is deleted): redeploy with -c masterKeySecretArn=<this> to read them again',
    });
  }
}
