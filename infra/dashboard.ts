import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CfnOutput, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import {
  AllowedMethods,
  CachePolicy,
  Distribution,
  HeadersFrameOption,
  HeadersReferrerPolicy,
  PriceClass,
  ResponseHeadersPolicy,
  ViewerProtocolPolicy,
} from 'aws-cdk-lib/aws-cloudfront';
import { S3BucketOrigin } from 'aws-cdk-lib/aws-cloudfront-origins';
import {
  AccountRecovery,
  OAuthScope,
  UserPool,
  UserPoolClient,
  UserPoolGroup,
} from 'aws-cdk-lib/aws-cognito';
import {
  BlockPublicAccess,
  Bucket,
  BucketEncryption,
  ObjectOwnership,
  type CfnBucket,
} from 'aws-cdk-lib/aws-s3';
import { BucketDeployment, Source } from 'aws-cdk-lib/aws-s3-deployment';
import { Validations } from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { buildDashboardInto } from '../dashboard/build.ts';

/** How the dashboard signs its users in: an issuer the operator already has, or a Cognito pool made here. */
export interface DashboardSignIn {
  readonly issuer: string;
  readonly clientId: string;
}

/**
 * The DR Management dashboard on AWS: its files in a private S3 bucket, served only through CloudFront (origin
 * access control, HTTPS only, security headers); it calls the HTTP API with the ID token of an OIDC sign-in.
 * Without an issuer of the operator's, a Cognito user pool is made with the groups the API maps to roles
 * (dr-admin, dr-operator, dr-viewer) and a public client (authorization code with PKCE) for the dashboard.
 */
export class Dashboard extends Construct {
  readonly bucket: Bucket;
  readonly distribution: Distribution;
  /** https://<distribution domain>: the only origin the API's CORS allows. */
  readonly origin: string;
  readonly signIn: DashboardSignIn;
  readonly userPool?: UserPool;

  constructor(scope: Construct, id: string, props: { signIn?: DashboardSignIn }) {
    super(scope, id);
    this.bucket = new Bucket(this, 'Files', {
      blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
      encryption: BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      objectOwnership: ObjectOwnership.BUCKET_OWNER_ENFORCED,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    Validations.of(this.bucket).acknowledge({
      id: 'AwsSolutions-S1',
      reason: 'The bucket holds the dashboard build only (no data); CloudFront is the only reader.',
    });

    // The page talks to the HTTP API and to the sign-in (the issuer's metadata and keys; Cognito's token
    // endpoint on its hosted domain) and to nothing else
    const region = Stack.of(this).region;
    const connect = [
      `https://*.execute-api.${region}.amazonaws.com`,
      ...(props.signIn
        ? [new URL(props.signIn.issuer).origin]
        : [`https://cognito-idp.${region}.amazonaws.com`, `https://*.auth.${region}.amazoncognito.com`]),
    ];
    const headers = new ResponseHeadersPolicy(this, 'SecurityHeaders', {
      securityHeadersBehavior: {
        contentSecurityPolicy: {
          // The API and the sign-in are reached with fetch/redirects; nothing else is loaded from elsewhere
          contentSecurityPolicy: [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            `connect-src 'self' ${connect.join(' ')}`,
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "object-src 'none'",
          ].join('; '),
          override: true,
        },
        strictTransportSecurity: {
          accessControlMaxAge: Duration.days(365),
          includeSubdomains: true,
          override: true,
        },
        contentTypeOptions: { override: true },
        frameOptions: { frameOption: HeadersFrameOption.DENY, override: true },
        referrerPolicy: { referrerPolicy: HeadersReferrerPolicy.NO_REFERRER, override: true },
        xssProtection: { protection: true, modeBlock: true, override: true },
      },
    });
    this.distribution = new Distribution(this, 'Distribution', {
      comment: 'DR Management dashboard',
      defaultRootObject: 'index.html',
      priceClass: PriceClass.PRICE_CLASS_100,
      defaultBehavior: {
        origin: S3BucketOrigin.withOriginAccessControl(this.bucket),
        viewerProtocolPolicy: ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
        allowedMethods: AllowedMethods.ALLOW_GET_HEAD,
        cachePolicy: CachePolicy.CACHING_DISABLED,
        responseHeadersPolicy: headers,
      },
    });
    Validations.of(this.distribution).acknowledge(
      {
        id: 'AwsSolutions-CFR1',
        reason: 'Operators sign in from wherever they are during an incident: no geo restriction.',
      },
      {
        id: 'AwsSolutions-CFR2',
        reason:
          'Static files only; the API behind it has its own throttling and authorizer. Add a web ACL if your policy requires one.',
      },
      {
        id: 'AwsSolutions-CFR3',
        reason: 'Static files only; who did what is in the API access logs and the audit log.',
      },
      {
        id: 'AwsSolutions-CFR4',
        reason:
          'The default CloudFront domain and certificate (TLS versions are CloudFront’s); give the distribution a certificate of yours to set a minimum.',
      },
    );
    this.origin = `https://${this.distribution.distributionDomainName}`;

    if (props.signIn) {
      this.signIn = props.signIn;
    } else {
      const pool = new UserPool(this, 'Users', {
        selfSignUpEnabled: false,
        signInAliases: { email: true },
        passwordPolicy: {
          minLength: 14,
          requireDigits: true,
          requireLowercase: true,
          requireUppercase: true,
          requireSymbols: true,
        },
        accountRecovery: AccountRecovery.EMAIL_ONLY,
        removalPolicy: RemovalPolicy.RETAIN,
      });
      Validations.of(pool).acknowledge(
        {
          id: 'AwsSolutions-COG2',
          reason: 'MFA is the operator’s choice per user pool policy; enable it on the pool (README).',
        },
        {
          id: 'AwsSolutions-COG3',
          reason: 'Advanced security (threat protection) is a paid Cognito feature the operator may enable.',
        },
        {
          id: 'AwsSolutions-COG8',
          reason:
            'The Plus feature plan (threat protection) is paid; the operator may choose it for the pool.',
        },
      );
      for (const role of ['admin', 'operator', 'viewer'])
        new UserPoolGroup(this, `Group-${role}`, {
          userPool: pool,
          groupName: `dr-${role}`,
          description: `DR Automation ${role}s`,
        });
      const client = new UserPoolClient(this, 'DashboardClient', {
        userPool: pool,
        generateSecret: false,
        authFlows: { userSrp: true },
        oAuth: {
          flows: { authorizationCodeGrant: true },
          scopes: [OAuthScope.OPENID, OAuthScope.EMAIL],
          callbackUrls: [`${this.origin}/`],
          logoutUrls: [`${this.origin}/`],
        },
        preventUserExistenceErrors: true,
        idTokenValidity: Duration.hours(1),
      });
      pool.addDomain('SignIn', {
        cognitoDomain: { domainPrefix: `dr-${Stack.of(this).account}-${Stack.of(this).region}`.slice(0, 63) },
      });
      this.userPool = pool;
      this.signIn = {
        issuer: `https://cognito-idp.${Stack.of(this).region}.amazonaws.com/${pool.userPoolId}`,
        clientId: client.userPoolClientId,
      };
      new CfnOutput(this, 'UserPoolId', {
        value: pool.userPoolId,
        description:
          'Add dashboard users here, each in the group of their role (dr-admin, dr-operator, dr-viewer)',
      });
    }
  }

  /** Uploads the built files and the config.json that points them at the API and the sign-in. */
  deploy(apiUrl: string): void {
    const dir = mkdtempSync(join(tmpdir(), 'dr-dashboard-'));
    buildDashboardInto(dir);
    new BucketDeployment(this, 'Deploy', {
      destinationBucket: this.bucket,
      sources: [
        Source.asset(dir),
        Source.jsonData('config.json', {
          apiBase: apiUrl,
          auth: { kind: 'oidc', authority: this.signIn.issuer, clientId: this.signIn.clientId },
        }),
      ],
      distribution: this.distribution,
      distributionPaths: ['/*'],
      memoryLimit: 256,
    });
    // CDK's own deployment function (one per stack and memory size): acknowledged where it lives
    const handler = Stack.of(this)
      .node.children.filter((child) => child.node.id.startsWith('Custom::CDKBucketDeployment'))
      .at(-1);
    if (handler) {
      const why = (what: string) => `CDK's bucket deployment function ${what}.`;
      Validations.of(handler).acknowledge(
        {
          id: 'AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
          reason: why('logs with the basic execution role'),
        },
        { id: 'AwsSolutions-L1', reason: why('runs on the runtime aws-cdk-lib ships') },
        ...[
          'Action::s3:GetObject*',
          'Action::s3:GetBucket*',
          'Action::s3:List*',
          'Action::s3:DeleteObject*',
          'Action::s3:Abort*',
          'Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*',
          `Resource::<${Stack.of(this).getLogicalId(this.bucket.node.defaultChild as CfnBucket)}.Arn>/*`,
          'Resource::*',
        ].map((finding) => ({
          id: `AwsSolutions::AwsSolutions-IAM5[${finding}]`,
          reason: why(
            'reads the staged asset, replaces the dashboard bucket’s objects, and invalidates the distribution (CloudFront names no narrower resource for that)',
          ),
        })),
      );
    }
    new CfnOutput(this, 'DashboardUrl', {
      value: `${this.origin}/`,
      description: 'The DR Management dashboard',
    });
  }
}
