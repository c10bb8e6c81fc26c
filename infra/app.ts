import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ControlPlaneStack, type ControlPlaneStackProps } from './control-plane-stack.ts';

/**
 * `npx cdk synth` / `npx cdk deploy`. Context (-c key=value):
 *   jwtIssuer, jwtAudience (comma-separated)  accept OIDC JWTs instead of IAM (SigV4) on the API
 *   backupBuckets (comma-separated)            buckets of S3 targets reached with the worker's role
 *   workerSubnets, workerSecurityGroups (comma-separated)
 *                                              run the worker (Lambda and Fargate) in these subnets
 *   workerRunner=fargate                       run backups as Fargate tasks (longer than 15 minutes)
 *   heavySteps=lambda|fargate|auto, fargateFromBytes
 *                                              where workflows run restores and checks (auto: by size)
 *   workerPublicIp=true                        give the Fargate task a public IP (no NAT, no endpoints)
 *   failoverZones (comma-separated)            Route 53 zone ids FAILOVER_TEST and the failover may change
 *                                              records in
 *   globalCluster                              the Aurora global database FAILOVER_TEST may switch over and
 *                                              the failover may fail over
 *   hookFunctions (comma-separated)            Lambda function ARNs application hooks may invoke
 *   hookServices (comma-separated)             ECS service ARNs application hooks may scale to 0 and back
 *   targetKmsKeys (comma-separated)            KMS key ARNs that S3 targets name in kmsKeyId
 *   masterKeySecretArn, masterKeyKmsKey        redeploy with the master key of a deleted stack
 *   alarmEmails (comma-separated)              subscribe these addresses to the alarm topic
 *   filesFileSystem, filesAccessPoint          an EFS access point mounted at /mnt/dr-files in the worker:
 *                                              files restores and the recovery-time test's scratch files
 *   mailFrom                                   verified SES address DR-test emails are sent from
 *   allowPrivateEndpoints=true                 targets may point at private addresses (never metadata)
 *   filesRoots=/mnt/uploads,/mnt/restores       where files may be backed up from and restored into
 *   dashboard=true                             serve the dashboard (CloudFront + S3); the API then takes JWTs
 *                                              of jwtIssuer, or of a Cognito user pool made for it
 *   dashboardClientId                          with jwtIssuer: the dashboard's OIDC client (default: the
 *                                              first jwtAudience)
 */
export function buildApp(app = new App()): { app: App; controlPlane: ControlPlaneStack } {
  const issuer = app.node.tryGetContext('jwtIssuer') as string | undefined;
  const audience = app.node.tryGetContext('jwtAudience') as string | undefined;
  const list = (name: string) =>
    ((app.node.tryGetContext(name) as string | undefined) ?? '').split(',').filter((value) => value !== '');
  const subnets = list('workerSubnets');
  const context = (name: string) => app.node.tryGetContext(name) as string | undefined;
  const heavySteps = context('heavySteps');
  if ((context('filesFileSystem') === undefined) !== (context('filesAccessPoint') === undefined))
    throw new Error(
      '-c filesFileSystem and -c filesAccessPoint go together (the EFS file system and its access point)',
    );
  if (heavySteps !== undefined && !['lambda', 'fargate', 'auto'].includes(heavySteps))
    throw new Error(`-c heavySteps must be lambda, fargate or auto, not '${heavySteps}'`);
  const props: ControlPlaneStackProps = {
    worker: {
      backupBuckets: list('backupBuckets'),
      runner: app.node.tryGetContext('workerRunner') === 'fargate' ? 'fargate' : 'lambda',
      ...(app.node.tryGetContext('mailFrom')
        ? { mailFrom: app.node.tryGetContext('mailFrom') as string }
        : {}),
      ...(subnets.length > 0 ? { network: { subnets, securityGroups: list('workerSecurityGroups') } } : {}),
      ...(list('filesRoots').length > 0 ? { filesRoots: list('filesRoots') } : {}),
      ...(heavySteps ? { heavySteps: heavySteps as 'lambda' | 'fargate' | 'auto' } : {}),
      ...(context('fargateFromBytes') ? { fargateFromBytes: Number(context('fargateFromBytes')) } : {}),
      ...(context('workerPublicIp') === 'true' ? { publicIp: true } : {}),
      ...(list('failoverZones').length > 0 ? { failoverZones: list('failoverZones') } : {}),
      ...(context('globalCluster') ? { globalCluster: context('globalCluster')! } : {}),
      ...(list('hookFunctions').length > 0 ? { hookFunctions: list('hookFunctions') } : {}),
      ...(list('hookServices').length > 0 ? { hookServices: list('hookServices') } : {}),
      ...(list('targetKmsKeys').length > 0 ? { targetKeys: list('targetKmsKeys') } : {}),
      ...(context('masterKeySecretArn') ? { masterKeySecretArn: context('masterKeySecretArn')! } : {}),
      ...(context('masterKeyKmsKey') ? { masterKeyKey: context('masterKeyKmsKey')! } : {}),
      ...(context('filesFileSystem') && context('filesAccessPoint')
        ? {
            filesVolume: {
              fileSystemId: context('filesFileSystem')!,
              accessPointId: context('filesAccessPoint')!,
            },
          }
        : {}),
    },
    description: 'DR Automation control plane: /api/dr API, state table, encryption key',
    ...(list('alarmEmails').length > 0 ? { alarmEmails: list('alarmEmails') } : {}),
    ...(app.node.tryGetContext('allowPrivateEndpoints') === 'true' ? { allowPrivateEndpoints: true } : {}),
    ...(issuer
      ? { jwt: { issuer, audience: (audience ?? '').split(',').filter((value) => value !== '') } }
      : {}),
    ...(context('dashboard') === 'true'
      ? { dashboard: context('dashboardClientId') ? { clientId: context('dashboardClientId')! } : {} }
      : {}),
  };
  const controlPlane = new ControlPlaneStack(app, 'DrControlPlane', props);
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  return { app, controlPlane };
}

if (import.meta.main) buildApp().app.synth();
