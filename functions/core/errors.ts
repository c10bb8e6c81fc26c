/**
 * The error vocabulary of the control plane.
 *
 * Every error we raise on purpose is a `DrError` with a stable `code` (what API clients and Step Functions
 * `Retry`/`Catch` match on, as the error `name`), an HTTP `status`, and `expose`: only exposed errors have
 * their message and details sent to API clients. Anything else reaching the edge is answered with a generic
 * 500 and logged, so that no internal detail (or secret inside one) leaks through a response.
 */

/** One problem with one input field. `field` is a path such as `config.bucket` or `notificationEmails[1]`. */
export interface FieldIssue {
  readonly field: string;
  readonly message: string;
}

export interface DrErrorOptions {
  readonly cause?: unknown;
  readonly details?: readonly FieldIssue[];
  readonly headers?: Readonly<Record<string, string>>;
}

export abstract class DrError extends Error {
  abstract readonly status: number;
  abstract readonly code: string;
  /** Whether message and details may be sent to an API client. */
  readonly expose: boolean = true;
  readonly details: readonly FieldIssue[];
  readonly headers: Readonly<Record<string, string>>;

  constructor(message: string, options: DrErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.details = options.details ?? [];
    this.headers = options.headers ?? {};
  }

  override get name(): string {
    return this.code;
  }
}

/** A class of `DrError` answered with `status`, named `code`; `expose: false` keeps its message from clients. */
function answeredWith(status: number, code: string, expose = true) {
  return class extends DrError {
    readonly status = status;
    readonly code = code;
    override readonly expose = expose;
  };
}

/** The request body, query or path is invalid. */
export class ValidationError extends answeredWith(400, 'ValidationError') {
  static forField(field: string, message: string): ValidationError {
    return new ValidationError(`${field}: ${message}`, { details: [{ field, message }] });
  }
}

/** The request body is not well-formed JSON. */
export class MalformedJsonError extends answeredWith(400, 'MalformedJson') {}

export class UnauthorizedError extends answeredWith(401, 'Unauthorized') {}

/** The caller is known but its role may not do this. */
export class ForbiddenError extends answeredWith(403, 'Forbidden') {}

export class NotFoundError extends answeredWith(404, 'NotFound') {}

export class MethodNotAllowedError extends answeredWith(405, 'MethodNotAllowed') {}

/** The request conflicts with the current state: a stale version, a duplicate id, a resource still in use. */
export class ConflictError extends answeredWith(409, 'Conflict') {}

export class PayloadTooLargeError extends answeredWith(413, 'PayloadTooLarge') {}

export class UnsupportedMediaTypeError extends answeredWith(415, 'UnsupportedMediaType') {}

/** A secret could not be stored or read. Never carries the secret's value. */
export class SecretStoreError extends answeredWith(500, 'SecretStoreError', false) {}

/** A required setting is missing or invalid at start-up. */
export class ConfigurationError extends answeredWith(500, 'ConfigurationError', false) {}

export function isDrError(error: unknown): error is DrError {
  return error instanceof DrError;
}

/** A part of the deployment that the request needs is not there (no backup worker, say). */
export class ServiceUnavailableError extends answeredWith(503, 'ServiceUnavailable') {}

/** A service the request had to change (a storage target's bucket, say) refused or failed. */
export class UpstreamError extends answeredWith(502, 'BadGateway') {}

/**
 * For a write whose only expected failure is losing a race to another writer (the item changed or exists):
 * that is ignored, anything else (a throttled or unreachable table) still fails.
 */
export function ignoreLostRace(error: unknown): void {
  if (!(error instanceof ConflictError)) throw error;
}
