import { readFileSync } from 'node:fs';
import type { WorkflowName } from '../core/context.ts';

/** Every workflow, by the file that defines it in statemachines/. */
export const WORKFLOW_NAMES: readonly WorkflowName[] = [
  'restore',
  'backup-verification',
  'restore-test',
  'recovery-time-test',
  'failover-test',
  'backup-fanout',
  'failover',
];

/** What `${…}` in the definitions stands for: CDK's DefinitionSubstitutions give the same keys on AWS. */
export interface Substitutions {
  /** The worker Lambda every light step invokes. */
  readonly WorkerFunctionArn: string;
  /** Where heavy steps run as Fargate tasks: the cluster, the worker's task definition, its network. */
  readonly WorkerCluster: string;
  readonly WorkerTaskDefinition: string;
  /** Comma-separated (the definitions split them with States.StringSplit). */
  readonly WorkerSubnets: string;
  readonly WorkerSecurityGroups: string;
  /** ENABLED or DISABLED. */
  readonly WorkerPublicIp: string;
}

/** The Resource of a heavy step's Fargate task (fargate.ts). */
export const RUN_TASK = 'arn:aws:states:::ecs:runTask.sync';

export function definitionPath(name: WorkflowName): URL {
  return new URL(`../../statemachines/${name}.asl.json`, import.meta.url);
}

/** The definition as written (with its `${…}` placeholders). */
export function rawDefinition(name: WorkflowName): string {
  return readFileSync(definitionPath(name), 'utf8');
}

/** The definition with its placeholders replaced, parsed. */
export function definition(name: WorkflowName, substitutions: Substitutions): Record<string, unknown> {
  const text = rawDefinition(name).replace(/\$\{(\w+)\}/g, (whole, key: string) => {
    const value = (substitutions as unknown as Record<string, string>)[key];
    if (value === undefined) throw new Error(`statemachines/${name}.asl.json: no substitution for ${whole}`);
    return value;
  });
  return JSON.parse(text) as Record<string, unknown>;
}

/** The names of every Task state whose Resource is `resource`, nested Map and Parallel states included. */
export function taskStates(node: unknown, resource: string): string[] {
  return statesWhere(node, (state) => state.Type === 'Task' && state.Resource === resource);
}

/** The names of every Task state that runs a step as a Fargate task. */
export function fargateStates(node: unknown): string[] {
  return statesWhere(node, (state) => state.Type === 'Task' && state.Resource === RUN_TASK);
}

/** The names of every Wait state. */
export function waitStates(node: unknown): string[] {
  return statesWhere(node, (state) => state.Type === 'Wait');
}

function statesWhere(node: unknown, wanted: (state: Record<string, unknown>) => boolean): string[] {
  const names: string[] = [];
  const visit = (states: Record<string, Record<string, unknown>>) => {
    for (const [name, state] of Object.entries(states)) {
      if (wanted(state)) names.push(name);
      const processor = (state.ItemProcessor ?? state.Iterator) as { States?: never } | undefined;
      if (processor?.States) visit(processor.States);
      for (const branch of (state.Branches ?? []) as { States: never }[]) visit(branch.States);
    }
  };
  visit((node as { States: Record<string, Record<string, unknown>> }).States);
  return names;
}
