import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { describe, expect, it } from 'vitest';
import { awsLauncher, awsLauncherFromEnv } from '../../functions/aws/launcher.ts';

/** No local server plays Lambda or Step Functions: aws-sdk-client-mock stands in for both. */
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

  it('starts the backup-fanout state machine for a run with several workers, where the stack has one', async () => {
    const sfn = mockClient(SFNClient);
    sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:execution' });
    const lambda = mockClient(LambdaClient);
    lambda.on(InvokeCommand).resolves({ StatusCode: 202 });
    const fanOutMachine = 'arn:aws:states:us-east-1:123456789012:stateMachine:dr-backup-fanout';
    const launcher = awsLauncher({
      workerFunction: 'dr-worker',
      runner: 'lambda',
      fanOutMachine,
      sfn: sfn as never,
      lambda: lambda as never,
    });
    await launcher.launch('20261124T020000000Z-abcdef', { workers: 4 });
    await launcher.launch('20261124T030000000Z-abcdef', { workers: 1 });
    const [start] = sfn.commandCalls(StartExecutionCommand).map((call) => call.args[0].input);
    expect(start).toMatchObject({
      stateMachineArn: fanOutMachine,
      name: 'backup-20261124T020000000Z-abcdef',
    });
    expect(JSON.parse(start!.input!)).toEqual({ backupId: '20261124T020000000Z-abcdef', workers: 4 });
    // One worker: the worker Lambda as always
    expect(lambda.commandCalls(InvokeCommand)).toHaveLength(1);
    // The environment the stack sets names the machine
    expect(
      awsLauncherFromEnv({ WORKER_FUNCTION: 'dr-worker', BACKUP_FANOUT_MACHINE: fanOutMachine }),
    ).toBeDefined();
  });

  it('starts the worker-task state machine for a Fargate run, with the backup id for its environment', async () => {
    const sfn = mockClient(SFNClient);
    sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:execution' });
    const launcher = awsLauncher({
      workerFunction: 'dr-worker',
      runner: 'fargate',
      taskMachine: 'arn:aws:states:us-east-1:123456789012:stateMachine:dr-worker-task',
      sfn: sfn as never,
    });
    await launcher.launch('20261124T020000000Z-abcdef');
    // A download export reads the whole backup: it runs where backups run, told by EXPORT_ID.
    await launcher.export!('20261124T020000000Z-abcdef');
    await launcher.export!('20261124T020000000Z-abcdef');
    const inputs = sfn.commandCalls(StartExecutionCommand).map((call) => call.args[0].input);
    expect(inputs.map((input) => input.stateMachineArn)).toEqual(
      Array(3).fill('arn:aws:states:us-east-1:123456789012:stateMachine:dr-worker-task'),
    );
    expect(inputs.map((input) => JSON.parse(input.input!))).toEqual([
      { variable: 'BACKUP_ID', value: '20261124T020000000Z-abcdef' },
      { variable: 'EXPORT_ID', value: '20261124T020000000Z-abcdef' },
      { variable: 'EXPORT_ID', value: '20261124T020000000Z-abcdef' },
    ]);
    expect(inputs[0]!.name).toMatch(/^backup-20261124T020000000Z-abcdef-[0-9a-f]{6}$/);
    // Two exports of one backup are two executions (names are unique per machine)
    expect(new Set(inputs.map((input) => input.name)).size).toBe(3);
    sfn.on(StartExecutionCommand).rejects(new Error('AccessDenied'));
    await expect(launcher.launch('y')).rejects.toThrow('AccessDenied');
  });

  it('refuses a Fargate runner without its state machine, at start-up', () => {
    expect(() => awsLauncherFromEnv({ WORKER_FUNCTION: 'dr-worker', WORKER_RUNNER: 'fargate' })).toThrow(
      'WORKER_TASK_MACHINE',
    );
  });
});
