import { SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import type { WorkflowLauncher, WorkflowName } from '../core/context.ts';

/**
 * Starts restores and DR tests as Step Functions executions of the state machines the stack defines (their
 * ARNs in STATE_MACHINE_<NAME>). The execution is named after the restore or test id, so starting the same
 * one twice is refused by Step Functions rather than run twice.
 */
export function awsWorkflows(
  machines: Readonly<Partial<Record<WorkflowName, string>>>,
  client: SFNClient = new SFNClient({}),
): WorkflowLauncher {
  return {
    start: async (workflow, name, input) => {
      const stateMachineArn = machines[workflow];
      if (!stateMachineArn) throw new Error(`the ${workflow} state machine is not deployed`);
      const result = await client.send(
        new StartExecutionCommand({ stateMachineArn, name, input: JSON.stringify(input) }),
      );
      if (!result.executionArn) throw new Error(`Step Functions started no execution of ${workflow}`);
      return { executionArn: result.executionArn };
    },
  };
}

/** The launcher from the environment the CDK stack sets on the API function. */
export function awsWorkflowsFromEnv(env: NodeJS.ProcessEnv = process.env): WorkflowLauncher | undefined {
  const machines = {
    restore: env.STATE_MACHINE_RESTORE,
    'backup-verification': env.STATE_MACHINE_BACKUP_VERIFICATION,
    'restore-test': env.STATE_MACHINE_RESTORE_TEST,
    'recovery-time-test': env.STATE_MACHINE_RECOVERY_TIME_TEST,
    'failover-test': env.STATE_MACHINE_FAILOVER_TEST,
    failover: env.STATE_MACHINE_FAILOVER,
  };
  if (!Object.values(machines).some((arn) => arn)) return undefined;
  return awsWorkflows(Object.fromEntries(Object.entries(machines).filter(([, arn]) => arn)));
}
