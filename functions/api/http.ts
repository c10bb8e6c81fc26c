import type { MiddlewareObj } from '@middy/core';
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import type { z } from 'zod';
import type { Actor } from '../core/audit.ts';
import { atLeast, roleNamed, type DrRole } from '../core/authz.ts';
import {
  ForbiddenError,
  isDrError,
  MalformedJsonError,
  PayloadTooLargeError,
  UnauthorizedError,
  UnsupportedMediaTypeError,
  ValidationError,
  type FieldIssue,
} from '../core/errors.ts';
import type { Logger } from '../core/log.ts';

/** What API Gateway (or the local runtime, standing in for it) says about the caller. */
export interface Authorizer {
  readonly iam?: { readonly userArn?: string; readonly callerId?: string };
  readonly jwt?: { readonly claims?: Readonly<Record<string, unknown>> };
  readonly lambda?: { readonly principal?: string; readonly role?: string };
}

export type HttpEvent = APIGatewayProxyEventV2 & {
  requestContext: APIGatewayProxyEventV2['requestContext'] & { authorizer?: Authorizer };
  /** The parsed JSON body, set by `jsonBody`. */
  parsedBody?: unknown;
  /** The caller's role, set by `authorize`. */
  drRole?: DrRole;
};

export type HttpResult = APIGatewayProxyStructuredResultV2 & { statusCode: number; body: string };

/** Request bodies above this are refused (API Gateway's own limit is 10 MB; nothing we take is near 1 MiB). */
export const MAX_BODY_BYTES = 1024 * 1024;

const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };

export function jsonResult(
  statusCode: number,
  body: unknown,
  headers: Record<string, string> = {},
): HttpResult {
  return {
    statusCode,
    headers: { ...JSON_HEADERS, ...headers },
    body: body === undefined ? '' : JSON.stringify(body),
  };
}

/** The one error shape of the API: `{ error: { status, code, message, details: [{ field, message }] } }`. */
export function errorResult(
  status: number,
  code: string,
  message: string,
  details: readonly FieldIssue[] = [],
  headers = {},
): HttpResult {
  return jsonResult(status, { error: { status, code, message, details } }, headers);
}

/**
 * Turns errors into the API's error shape. Only `DrError`s marked `expose` tell the client what went wrong;
 * anything else is logged (name and message only: causes may hold request data) and answered with a bare 500.
 */
export function errorResponse(logger: Logger): MiddlewareObj<HttpEvent, HttpResult> {
  return {
    onError: (request) => {
      const error = request.error;
      if (isDrError(error) && error.expose) {
        request.response = errorResult(error.status, error.code, error.message, error.details, error.headers);
        return;
      }
      logger.error('request failed', {
        requestId: request.event.requestContext?.requestId,
        route: `${request.event.requestContext?.http?.method} ${request.event.requestContext?.http?.path}`,
        error: error instanceof Error ? `${error.name}: ${error.message}` : 'non-error thrown',
      });
      request.response = errorResult(
        500,
        'InternalError',
        'The request could not be completed; it has been logged.',
      );
    },
  };
}

/** The caller's identity as established by API Gateway's authorizer (IAM or JWT) or the local runtime. */
export function identityOf(event: HttpEvent): string | undefined {
  const authorizer = event.requestContext.authorizer;
  const sub = authorizer?.jwt?.claims?.sub;
  return (
    authorizer?.iam?.userArn ?? (typeof sub === 'string' ? sub : undefined) ?? authorizer?.lambda?.principal
  );
}

export function actorOf(event: HttpEvent): Actor {
  return {
    principal: identityOf(event) ?? 'anonymous',
    ...(event.drRole ? { role: event.drRole } : {}),
    sourceIp: event.requestContext.http.sourceIp,
    userAgent: event.requestContext.http.userAgent,
  };
}

/**
 * Refuses requests that carry no identity. On AWS API Gateway has already authorized the call; this is the
 * second line, so that a route deployed without an authorizer by mistake is still closed.
 */
export function authenticate(isPublic: boolean): MiddlewareObj<HttpEvent, HttpResult> {
  return {
    before: (request) => {
      if (isPublic || identityOf(request.event) !== undefined) return;
      throw new UnauthorizedError('authentication required: send Authorization: Bearer <token>', {
        headers: { 'www-authenticate': 'Bearer realm="dr"' },
      });
    },
  };
}

/**
 * The caller's role: the local runtime's token says it; a JWT by its groups (`cognito:groups`, `groups`) or
 * scopes (`scope`, `scp`) named `dr:admin`, `dr:operator` or `dr:viewer`; an IAM caller by its principal's
 * `dr-automation:role` tag (`principalRole`). Anything else is a viewer.
 */
export async function roleOf(
  event: HttpEvent,
  principalRole?: (arn: string) => Promise<DrRole | undefined>,
): Promise<DrRole> {
  const authorizer = event.requestContext.authorizer;
  if (authorizer?.lambda?.role) return roleNamed([authorizer.lambda.role]) ?? 'viewer';
  const claims = authorizer?.jwt?.claims;
  if (claims) {
    // API Gateway hands array claims over as "[a b]"
    const names = ['cognito:groups', 'groups', 'scope', 'scp'].flatMap((claim) => {
      const value = claims[claim];
      if (Array.isArray(value)) return value.map(String);
      return typeof value === 'string' ? value.replace(/^\[|\]$/g, '').split(/[\s,]+/) : [];
    });
    return roleNamed(names) ?? 'viewer';
  }
  const arn = authorizer?.iam?.userArn;
  if (arn && principalRole) return (await principalRole(arn)) ?? 'viewer';
  return 'viewer';
}

/**
 * Refuses a caller whose role may not run the route (403, audited as `authz.refused`); reads are for viewers,
 * changes for operators, unless the route asks for more.
 */
export function authorize(
  needed: DrRole | undefined,
  options: {
    readonly audit: (actor: Actor, refused: { route: string; needed: DrRole }) => Promise<unknown>;
    readonly principalRole?: (arn: string) => Promise<DrRole | undefined>;
  },
): MiddlewareObj<HttpEvent, HttpResult> {
  return {
    before: async (request) => {
      const event = request.event;
      // Every caller may read: no role lookup (an IAM API call for IAM callers) on the routes that only read.
      if (needed === undefined || needed === 'viewer') return;
      event.drRole = await roleOf(event, options.principalRole);
      if (atLeast(event.drRole, needed)) return;
      const route = `${event.requestContext.http.method} ${event.rawPath}`;
      await options.audit(actorOf(event), { route, needed });
      throw new ForbiddenError(`${route} needs the ${needed} role; this caller is a ${event.drRole}`);
    },
  };
}

/** Parses a JSON request body: 415 for another media type, 413 when too large, 400 when malformed. */
export function jsonBody(): MiddlewareObj<HttpEvent, HttpResult> {
  return {
    before: (request) => {
      const event = request.event;
      const raw = event.body;
      if (raw === undefined || raw === '') return;
      const text = event.isBase64Encoded ? Buffer.from(raw, 'base64').toString('utf8') : raw;
      if (Buffer.byteLength(text, 'utf8') > MAX_BODY_BYTES)
        throw new PayloadTooLargeError(`request bodies are limited to ${MAX_BODY_BYTES} bytes`);
      const type = (event.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
      if (!/^application\/([\w.+-]+\+)?json$/.test(type)) {
        throw new UnsupportedMediaTypeError(
          `request bodies must be application/json${type === '' ? '' : `, not ${type}`}`,
        );
      }
      try {
        event.parsedBody = JSON.parse(text) as unknown;
      } catch (error) {
        throw new MalformedJsonError(`the request body is not valid JSON: ${(error as Error).message}`);
      }
    },
  };
}

/** Validates `value` against `schema`, naming every offending field. */
export function parseWith<S extends z.ZodType>(schema: S, value: unknown, root: string): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const details = result.error.issues.flatMap((issue): FieldIssue[] => {
    const base = fieldPath(issue.path);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({
        field: base === '' ? key : `${base}.${key}`,
        message: 'is not a known field',
      }));
    }
    return [{ field: base === '' ? root : base, message: issue.message }];
  });
  throw new ValidationError(details.map((d) => `${d.field}: ${d.message}`).join('; '), { details });
}

function fieldPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, part) => {
    if (typeof part === 'number') return `${acc}[${part}]`;
    return acc === '' ? String(part) : `${acc}.${String(part)}`;
  }, '');
}

/** `If-Match: "3"` (or W/"3", or 3) → 3; absent → undefined; anything else is a 400 naming the header. */
export function ifMatchVersion(event: HttpEvent): number | undefined {
  const header = event.headers['if-match'];
  if (header === undefined) return undefined;
  const match = /^(?:W\/)?"?(\d{1,15})"?$/.exec(header.trim());
  if (!match?.[1])
    throw ValidationError.forField('If-Match', 'must be the ETag of a previous response, such as "3"');
  return Number(match[1]);
}
