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
 *   mailFrom                                   verified SES address DR-test emails are sent from
 *   allowPrivateEndpoints=true                 targets may point at private addresses (never metadata)
 *   filesRoots=/mnt/uploads,/mnt/restores       where files may be backed up from and restored into
 */
export function buildApp(app = new App()): { app: App; controlPlane: ControlPlaneStack } {
  const issuer = app.node.tryGetContext('jwtIssuer') as string | undefined;
  const audience = app.node.tryGetContext('jwtAudience') as string | undefined;
  const list = (name: string) =>
    ((app.node.tryGetContext(name) as string | undefined) ?? '').split(',').filter((value) => value !== '');
  const subnets = list('workerSubnets');
  const props: ControlPlaneStackProps = {
    worker: {
      backupBuckets: list('backupBuckets'),
      runner: app.node.tryGetContext('workerRunner') === 'fargate' ? 'fargate' : 'lambda',
      ...(app.node.tryGetContext('mailFrom')
        ? { mailFrom: app.node.tryGetContext('mailFrom') as string }
        : {}),
      ...(subnets.length > 0 ? { network: { subnets, securityGroups: list('workerSecurityGroups') } } : {}),
      ...(list('filesRoots').length > 0 ? { filesRoots: list('filesRoots') } : {}),
    },
    description: 'DR Automation control plane: /api/dr API, state table, encryption key',
    ...(app.node.tryGetContext('allowPrivateEndpoints') === 'true' ? { allowPrivateEndpoints: true } : {}),
    ...(issuer
      ? { jwt: { issuer, audience: (audience ?? '').split(',').filter((value) => value !== '') } }
      : {}),
  };
  const controlPlane = new ControlPlaneStack(app, 'DrControlPlane', props);
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  return { app, controlPlane };
}

if (import.meta.main) buildApp().app.synth();
