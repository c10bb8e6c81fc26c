import { spawn, type ChildProcess } from 'node:child_process';
import {
  CreateAccessKeyCommand,
  CreateUserCommand,
  IAMClient,
  PutUserPolicyCommand,
} from '@aws-sdk/client-iam';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { freePort } from './ports.ts';

/**
 * A real S3-compatible server for tests: moto_server (preinstalled on our machines as the Python package
 * moto) on 127.0.0.1 and a random port. A missing moto_server fails loudly.
 *
 * With `authenticate`, its IAM emulation is on: the first four calls (a user, its policy, its access key, the
 * bucket) go unauthenticated and every later request must be signed with that key, so wrong credentials are
 * refused as S3 refuses them. moto's signature check rejects ListObjectsV2 with a prefix that the real
 * service accepts, so the conformance suite runs on a server without it and checks credentials on one with it.
 */
export interface TestS3 {
  readonly endpoint: string;
  readonly credentials: { accessKeyId: string; secretAccessKey: string };
  stop(): Promise<void>;
}

async function waitUntilUp(endpoint: string, child: ChildProcess): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt++) {
    if (child.exitCode !== null) throw new Error(`moto_server exited with code ${child.exitCode}`);
    try {
      await fetch(`${endpoint}/moto-api/`);
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw new Error('moto_server did not start within 10 s');
}

/** A bare moto_server on loopback (any AWS API it emulates: S3, RDS, SES…), with its stop function. */
export async function startMoto(
  env: Record<string, string> = {},
): Promise<{ endpoint: string; stop: () => Promise<void> }> {
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const child = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], {
    stdio: 'ignore',
    env: { ...process.env, ...env },
  });
  child.on('error', () => undefined); // reported by waitUntilUp
  const stop = async () => {
    child.kill('SIGTERM');
    await new Promise((resolve) =>
      child.exitCode === null ? child.once('exit', resolve) : resolve(undefined),
    );
  };
  try {
    await waitUntilUp(endpoint, child);
    return { endpoint, stop };
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
}

export async function startS3(bucket: string, options: { authenticate?: boolean } = {}): Promise<TestS3> {
  const moto = await startMoto(options.authenticate ? { INITIAL_NO_AUTH_ACTION_COUNT: '4' } : {});
  const { endpoint } = moto;
  try {
    const setup = {
      region: 'us-east-1',
      endpoint,
      credentials: { accessKeyId: 'setup', secretAccessKey: 'setup' },
    };
    const iam = new IAMClient(setup);
    await iam.send(new CreateUserCommand({ UserName: 'backup' }));
    await iam.send(
      new PutUserPolicyCommand({
        UserName: 'backup',
        PolicyName: 's3',
        PolicyDocument: JSON.stringify({
          Version: '2012-10-17',
          Statement: [{ Effect: 'Allow', Action: 's3:*', Resource: '*' }],
        }),
      }),
    );
    const { AccessKey } = await iam.send(new CreateAccessKeyCommand({ UserName: 'backup' }));
    const credentials = {
      accessKeyId: AccessKey!.AccessKeyId!,
      secretAccessKey: AccessKey!.SecretAccessKey!,
    };
    await new S3Client({ ...setup, forcePathStyle: true }).send(new CreateBucketCommand({ Bucket: bucket }));
    return { endpoint, credentials, stop: moto.stop };
  } catch (error) {
    await moto.stop();
    throw error;
  }
}
