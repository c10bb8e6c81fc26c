import middy from '@middy/core';
import httpRouterHandler from '@middy/http-router';
import type { Context } from 'aws-lambda';
import type { ControlPlane } from '../core/context.ts';
import { MethodNotAllowedError, NotFoundError } from '../core/errors.ts';
import {
  authenticate,
  authorize,
  errorResponse,
  jsonBody,
  jsonResult,
  type HttpEvent,
  type HttpResult,
} from './http.ts';
import { openApiDocument } from './openapi.ts';
import { buildRoutes, neededRole, runRoute, type ApiInfo, type Route } from './routes.ts';

export type ApiHandler = (event: HttpEvent, context: Context) => Promise<HttpResult>;

/**
 * The whole /api/dr API as one handler: the Lambda entry point wraps it, and the local runtime calls it
 * directly with the same events API Gateway would send (payload format 2.0).
 */
export function createApiHandler(cp: ControlPlane, info: ApiInfo): ApiHandler {
  let document: object | undefined;
  const routes = buildRoutes(cp, info, () => (document ??= openApiDocument(routes, info.version)));

  const handlers = routes.map((route) => ({
    method: route.method,
    path: route.path,
    handler: middy<HttpEvent, HttpResult>()
      .use(authenticate(route.public === true))
      .use(
        authorize(route.public ? undefined : neededRole(route), {
          audit: (actor, refused) =>
            cp.audit.append(actor, {
              action: 'authz.refused',
              resource: refused.route,
              details: { role: actor.role, needed: refused.needed },
            }),
          ...(cp.principalRole ? { principalRole: cp.principalRole } : {}),
        }),
      )
      .use(jsonBody())
      .handler(async (event: HttpEvent) => {
        const response = await runRoute(route, event);
        return jsonResult(response.status, response.body, response.headers);
      }),
  }));
  // middy's router types assume REST (v1) events; ours are HTTP API v2 events, which it also routes.
  type RouterOptions = Parameters<typeof httpRouterHandler>[0];
  const router = httpRouterHandler({
    routes: handlers,
    notFoundResponse: ({ method, path }: { method: string; path: string }) => {
      throw notFound(routes, method, path);
    },
  } as unknown as RouterOptions);

  return middy<HttpEvent, HttpResult>(router as never).use(errorResponse(cp.logger));
}

/** 405 (with Allow) when the path exists under other methods, else 404. */
function notFound(routes: readonly Route[], method: string, path: string): Error {
  const allowed = routes.filter((route) => pathPattern(route.path).test(path)).map((route) => route.method);
  if (allowed.length > 0) {
    return new MethodNotAllowedError(`${method} is not allowed on ${path}; use ${allowed.join(', ')}`, {
      headers: { allow: allowed.join(', ') },
    });
  }
  return new NotFoundError(`no route ${method} ${path}`);
}

function pathPattern(template: string): RegExp {
  const escaped = template.replace(/[.+?^$()|[\]\\]/g, '\\$&').replace(/\{[^/]+\}/g, '[^/]+');
  return new RegExp(`^${escaped}/?$`);
}
