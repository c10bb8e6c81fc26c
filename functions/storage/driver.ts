import type { z } from 'zod';
import type { EgressPolicy } from './egress.ts';
import type { Backend } from './storage.ts';

/**
 * What a target type is, in one place: each `storage/<type>/driver.ts` exports one, and the registry
 * (`drivers.ts`) lists them. The API's schema and OpenAPI document, the target service and drctl read the
 * registry; the adapter itself is loaded only when a target of its type is opened.
 */
export interface TargetDriver {
  /** The API's `targetType`. */
  readonly type: string;
  /** The `config` object the API takes (zod: validated at the edge, and the OpenAPI document). */
  readonly config: z.ZodType<Record<string, unknown>>;
  /** Config fields that are secrets: kept in the secret store, never in the table or an answer. */
  readonly secretFields: readonly string[];
  /**
   * Settings that decide where (and how safely) the secrets are sent: changing one on a target with stored
   * secrets needs the secrets given again, so that a stored secret never follows a new destination.
   */
  readonly destinationFields: readonly string[];
  /** Rules across fields that a per-field schema cannot say; `secrets`: the secret fields set after the change. */
  requirements?(config: Readonly<Record<string, unknown>>, secrets: ReadonlySet<string>): ConfigIssue[];
  /** What an operator should know about this configuration (credentials in clear, a key not pinned). */
  warnings?(config: Readonly<Record<string, unknown>>): string[];
  /** The adapter for a target of this type (loaded on first use). */
  open(spec: TargetSpec, secrets: Readonly<Record<string, string>>, opening: OpenOptions): Promise<Backend>;
}

export interface ConfigIssue {
  /** `config.<field>`. */
  readonly field: string;
  readonly message: string;
}

/**
 * A target as the API stores it (`targetType`, `config` without secrets); its secrets come apart. drctl's
 * target files have the same shape, secrets inline.
 */
export interface TargetSpec {
  readonly name?: string;
  readonly targetType: string;
  readonly config: Readonly<Record<string, unknown>>;
}

export interface OpenOptions {
  /**
   * Where the target's connections may go, checked as each is made (the API's targets: a name that resolves
   * elsewhere by then, or a redirect, is refused). Unset: anywhere (drctl's target files are the operator's).
   */
  readonly egress?: EgressPolicy;
}

/** A config field as a string, when it is a non-empty one. */
export const text = (value: unknown): string | undefined =>
  typeof value === 'string' && value !== '' ? value : undefined;

/** `config.<field>` issue. */
export const issue = (field: string, message: string): ConfigIssue => ({ field: `config.${field}`, message });
