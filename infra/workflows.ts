import { RemovalPolicy, Validations } from 'aws-cdk-lib';
import { PolicyStatement, Role, ServicePrincipal, type IRole } from 'aws-cdk-lib/aws-iam';
import type { IFunction } from 'aws-cdk-lib/aws-lambda';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import { DefinitionBody, LogLevel, StateMachine, StateMachineType } from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { WorkflowName } from '../functions/core/context.ts';
import { rawDefinition, WORKFLOW_NAMES } from '../functions/workflows/definitions.ts';

export interface WorkflowsProps {
  /** The worker every light Task state invokes (`${WorkerFunctionArn}` in the definitions). */
  readonly worker: IFunction;
  /** Where heavy steps' Fargate tasks run (the definitions' other placeholders). */
  readonly fargateSubstitutions: Record<string, string>;
  /** Set when heavy steps may run on Fargate: each machine's role may then run the worker task. */
  readonly grantRunTask?: (role: IRole) => void;
}

/**
 * The restore and DR-test state machines, one per file of statemachines/, loaded as written with the
 * worker's ARN and its Fargate task substituted: the definitions the local runtime and the tests run,
 * unchanged. Operators start and watch them in the Step Functions console. Each machine's role may invoke the
 * worker and, where heavy steps may run on Fargate, run the worker's task (nothing else); executions are
 * logged in full and traced.
 */
export class Workflows extends Construct {
  readonly machines: ReadonlyMap<WorkflowName, StateMachine>;

  constructor(scope: Construct, id: string, props: WorkflowsProps) {
    super(scope, id);
    const logs = new LogGroup(this, 'Logs', {
      retention: RetentionDays.ONE_YEAR,
      removalPolicy: RemovalPolicy.RETAIN,
    });
    const machines = new Map<WorkflowName, StateMachine>();
    for (const name of WORKFLOW_NAMES) {
      const role = new Role(this, `${pascal(name)}Role`, {
        assumedBy: new ServicePrincipal('states.amazonaws.com'),
        description: `DR Automation ${name} workflow: invokes the worker, runs its Fargate task`,
      });
      role.addToPolicy(
        new PolicyStatement({
          actions: ['lambda:InvokeFunction'],
          resources: [props.worker.functionArn],
        }),
      );
      const machine = new StateMachine(this, pascal(name), {
        stateMachineType: StateMachineType.STANDARD,
        definitionBody: DefinitionBody.fromString(rawDefinition(name)),
        definitionSubstitutions: {
          WorkerFunctionArn: props.worker.functionArn,
          ...props.fargateSubstitutions,
        },
        role,
        tracingEnabled: true,
        logs: { destination: logs, level: LogLevel.ALL, includeExecutionData: true },
      });
      props.grantRunTask?.(role);
      machines.set(name, machine);
      Validations.of(role).acknowledge({
        id: 'AwsSolutions::AwsSolutions-IAM5[Resource::*]',
        reason:
          'Step Functions needs logs:*Delivery* and X-Ray PutTraceSegments, which have no resource-level permissions.',
      });
    }
    this.machines = machines;
  }

  /** Environment and permission for a function that starts executions (the API). */
  grantStart(fn: { addEnvironment(name: string, value: string): unknown; role?: IRole | undefined }): void {
    for (const [name, machine] of this.machines) {
      fn.addEnvironment(`STATE_MACHINE_${name.toUpperCase().replace(/-/g, '_')}`, machine.stateMachineArn);
      fn.role!.addToPrincipalPolicy(
        new PolicyStatement({ actions: ['states:StartExecution'], resources: [machine.stateMachineArn] }),
      );
    }
  }
}

function pascal(name: string): string {
  return name.replace(/(^|-)([a-z])/g, (_whole, _dash: string, letter: string) => letter.toUpperCase());
}
