import { ECSClient, RunTaskCommand } from '@aws-sdk/client-ecs';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { describe, expect, it } from 'vitest';
import { awsLauncher } from '../../functions/aws/launcher.ts';

/** No local server plays Lambda or ECS: aws-sdk-client-mock stands in for both. */
describe('awsLauncher', () => {
  it('invokes the worker Lambda asynchronously with the backup id, retention and the source watch', async () => {
    const lambda = mockClient(LambdaClient);
    lambda.on(InvokeCommand).resolves({ StatusCode: 202 });
    const launcher = awsLauncher({ workerFunction: 'dr-worker', runner: 'lambda', lambda: lambda as never });
    await launcher.launch('20261124T020000000Z-abcdef');
    await launcher.retention!();
    await launcher.export!('20261124T020000000Z-abcdef');
    await launcher.watch!();
    const calls = lambda.commandCalls(InvokeCommand).map((call) => call.args[0].input);
    expect(calls.map((input) => [input.FunctionName, input.InvocationType])).toEqual([
      ['dr-worker', 'Event'],
      ['dr-worker', 'Event'],
      ['dr-worker', 'Event'],
      ['dr-worker', 'Event'],
    ]);
    expect(calls.map((input) => JSON.parse(Buffer.from(input.Payload as Uint8Array).toString()))).toEqual([
      { action: 'backup', backupId: '20261124T020000000Z-abcdef' },
      { action: 'retention' },
      { action: 'export', backupId: '20261124T020000000Z-abcdef' },
      { action: 'watch' },
    ]);
    lambda.on(InvokeCommand).resolves({ StatusCode: 500 });
    await expect(launcher.launch('x')).rejects.toThrow(/answered 500/);
  });

  it('runs the Fargate task with the backup id in its environment, and reports a task that did not start', async () => {
    const ecs = mockClient(ECSClient);
    ecs.on(RunTaskCommand).resolves({ tasks: [{ taskArn: 'arn:task' }] });
    const launcher = awsLauncher({
      workerFunction: 'dr-worker',
      runner: 'fargate',
      ecs: ecs as never,
      fargate: {
        cluster: 'arn:cluster',
        taskDefinition: 'arn:taskdef',
        containerName: 'worker',
        subnets: ['subnet-a'],
        securityGroups: ['sg-1'],
        assignPublicIp: false,
      },
    });
    await launcher.launch('20261124T020000000Z-abcdef');
    const input = ecs.commandCalls(RunTaskCommand)[0]!.args[0].input;
    expect(input).toMatchObject({
      cluster: 'arn:cluster',
      taskDefinition: 'arn:taskdef',
      launchType: 'FARGATE',
      networkConfiguration: {
        awsvpcConfiguration: { subnets: ['subnet-a'], securityGroups: ['sg-1'], assignPublicIp: 'DISABLED' },
      },
      overrides: {
        containerOverrides: [
          { name: 'worker', environment: [{ name: 'BACKUP_ID', value: '20261124T020000000Z-abcdef' }] },
        ],
      },
    });
    // A download export reads the whole backup: it runs where backups run, told by EXPORT_ID.
    await launcher.export!('20261124T020000000Z-abcdef');
    expect(ecs.commandCalls(RunTaskCommand)[1]!.args[0].input.overrides).toEqual({
      containerOverrides: [
        { name: 'worker', environment: [{ name: 'EXPORT_ID', value: '20261124T020000000Z-abcdef' }] },
      ],
    });
    ecs.on(RunTaskCommand).resolves({ tasks: [], failures: [{ reason: 'RESOURCE:MEMORY' }] });
    await expect(launcher.launch('y')).rejects.toThrow(/did not start: RESOURCE:MEMORY/);
  });
});
