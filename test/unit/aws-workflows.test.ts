import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { mockClient } from 'aws-sdk-client-mock';
import { expect, it } from 'vitest';
import { awsWorkflows, awsWorkflowsFromEnv } from '../../functions/aws/workflows.ts';

/** Step Functions has no local server that runs our Lambda tasks without Docker: aws-sdk-client-mock. */
it('starts an execution of the right state machine, named after the restore or test, with the input', async () => {
  const sfn = mockClient(SFNClient);
  sfn.on(StartExecutionCommand).resolves({ executionArn: 'arn:aws:states:eu-west-1:1:execution:restore:r1' });
  const workflows = awsWorkflows(
    { restore: 'arn:aws:states:eu-west-1:1:stateMachine:restore' },
    sfn as unknown as SFNClient,
  );
  const started = await workflows.start('restore', '20261124T020000000Z-abcdef', { restoreId: 'r1' });
  expect(started.executionArn).toBe('arn:aws:states:eu-west-1:1:execution:restore:r1');
  expect(sfn.commandCalls(StartExecutionCommand)[0]!.args[0].input).toEqual({
    stateMachineArn: 'arn:aws:states:eu-west-1:1:stateMachine:restore',
    name: '20261124T020000000Z-abcdef',
    input: '{"restoreId":"r1"}',
  });
  await expect(workflows.start('restore-test', 'x', {})).rejects.toThrow(
    /restore-test state machine is not deployed/,
  );
});

it('is configured from the environment the stack sets, and absent without it', () => {
  expect(awsWorkflowsFromEnv({})).toBeUndefined();
  expect(
    awsWorkflowsFromEnv({ STATE_MACHINE_RESTORE: 'arn:aws:states:eu-west-1:1:stateMachine:restore' }),
  ).toMatchObject({ start: expect.any(Function) });
});
