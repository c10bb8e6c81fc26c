import type { DrRole } from './authz.ts';
import type { HeavySteps } from './env.ts';
import type { EgressPolicy } from '../storage/egress.ts';
import type { PathPolicy } from './paths.ts';
import type { AuditLog } from './audit.ts';
import type { Logger } from './log.ts';
import type { SecretStore } from './secrets/secret-store.ts';
import type { DrTable } from './store/table.ts';
import type { DownloadLinks, RunLauncher } from './ports.ts';
import type { DatabaseStatus, FreeStorage } from './ports.ts';

/** The state machines of the restore and DR-test workflows, and the fan-out FULL (files in statemachines/). */
export type WorkflowName =
  | 'restore'
  | 'backup-verification'
  | 'restore-test'
  | 'recovery-time-test'
  | 'failover-test'
  | 'backup-fanout'
  | 'failover';

/** Starts workflow executions: Step Functions on AWS, the local ASL interpreter in the local runtime. */
export interface WorkflowLauncher {
  start(
    workflow: WorkflowName,
    name: string,
    input: Record<string, unknown>,
  ): Promise<{ executionArn: string }>;
}

/**
 * What the domain services need, built once per process (a Lambda container, the local runtime, a test)
 * and passed in, so that every client can be replaced in tests.
 */
export interface ControlPlane {
  readonly table: DrTable;
  readonly secrets: SecretStore;
  readonly audit: AuditLog;
  readonly logger: Logger;
  readonly now: () => Date;
  /** Prefix of every secret name this deployment owns (the IAM policy is scoped to it). */
  readonly secretPrefix: string;
  /** Starts the backup worker for a run (absent where no worker is deployed: execute answers 503). */
  readonly runs?: RunLauncher;
  /**
   * The source database is reachable only from the worker (AWS, worker in the operator's subnets): database
   * checks here read the worker's measurements and ask it for new ones (`runs.watch`).
   */
  readonly sourceFromWorker?: boolean;
  /** Free storage of an RDS source instance (CloudWatch), for the replication slot's watch. */
  readonly freeStorage?: FreeStorage;
  /** What RDS says of an RDS or Aurora source, for the primary watch. */
  readonly databaseStatus?: DatabaseStatus;
  /** Makes download links (absent where downloads are not deployed: download answers 503). */
  readonly downloads?: DownloadLinks;
  /** Starts restores and DR tests (absent where the workflows are not deployed: they answer 503). */
  readonly workflows?: WorkflowLauncher;
  /** Where target endpoints may point (absent: public addresses only). */
  readonly egress?: EgressPolicy;
  /** Where files may be backed up from and restored into (absent: nowhere). */
  readonly paths?: PathPolicy;
  /**
   * Where command hooks live (DR_HOOKS_DIR; the local runtime only): a hook names an executable file in it.
   * Absent: command hooks are refused.
   */
  readonly hooksDir?: string;
  /** Where workflows run their heavy steps (absent: in the worker Lambda, or in-process locally). */
  readonly heavySteps?: HeavySteps;
  /**
   * Whether a FULL can fan out over several workers (the backup-fanout workflow: locally always, on AWS where
   * the stack has a network for Fargate tasks). Absent: runs use one worker whatever a schedule's `workers`.
   */
  readonly fanOut?: boolean;
  /** The role an IAM caller's principal is tagged with (AWS, IAM authorization; absent: IAM callers are viewers). */
  readonly principalRole?: (arn: string) => Promise<DrRole | undefined>;
}
