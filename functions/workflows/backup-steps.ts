/**
 * The states of the fan-out FULL's steps, and what the backup worker gives the workflows to run them
 * (backup-fanout.ts).
 */
import { z } from 'zod';
import type { ControlPlane } from '../core/context.ts';
import type { FanOutPlan } from '../engine/fanout.ts';

export const fanOutState = z.looseObject({
  backupId: z.string().min(1),
  /** How many parts (Fargate tasks) at most. */
  workers: z.number().int().min(2).max(64),
  /** The coordinator's staged step (fargate.stage). */
  fargate: z.looseObject({ key: z.string() }).optional(),
  error: z.looseObject({ Error: z.string().optional(), Cause: z.string().optional() }).optional(),
});
export type FanOutState = z.output<typeof fanOutState>;

/** A part as staged for its task: which backup, which part of which plan. */
export interface PartState {
  readonly backupId: string;
  readonly part: number;
  readonly plan: FanOutPlan;
}

export const partState = z.looseObject({
  backupId: z.string().min(1),
  part: z.number().int().min(0),
  plan: z.custom<FanOutPlan>(
    (value) =>
      typeof value === 'object' &&
      value !== null &&
      typeof (value as FanOutPlan).snapshotId === 'string' &&
      Array.isArray((value as FanOutPlan).parts),
  ),
});

/** What the backup worker runs for the fan-out (the worker and the local runtime give it). */
export interface BackupSteps {
  /** The backup run as coordinator: it stages the parts and waits for them. */
  coordinate(cp: ControlPlane, state: FanOutState): Promise<unknown>;
  /** One part: its tables, read in the plan's snapshot, written to the run's targets. */
  part(cp: ControlPlane, state: PartState): Promise<unknown>;
}
