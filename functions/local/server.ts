import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Context } from 'aws-lambda';
import type { ApiHandler } from '../api/app.ts';
import { errorResult, MAX_BODY_BYTES, type HttpEvent, type HttpResult } from '../api/http.ts';
import type { Logger } from '../core/log.ts';

/**
 * Serves the API handler over plain HTTP, standing in for API Gateway: it turns each request into the
 * payload-format-2.0 event API Gateway would send, and plays the authorizer's part by checking the bearer
 * token and putting the caller's identity into `requestContext.authorizer`.
 */
export interface LocalServerOptions {
  readonly handler: ApiHandler;
  /** The operator's token: an admin. */
  readonly token: string;
  /** Further tokens with a lesser role (DR_OPERATOR_TOKEN, DR_VIEWER_TOKEN). */
  readonly roleTokens?: readonly { readonly token: string; readonly role: 'operator' | 'viewer' }[];
  readonly logger: Logger;
  readonly host?: string;
  readonly port?: number;
  /**
   * Answers requests the API handler cannot (streamed downloads behind signed links); returns false for
   * the others. Runs before authentication: what it serves carries its own signature.
   */
  readonly stream?: (request: IncomingMessage, response: ServerResponse, url: URL) => Promise<boolean>;
  /**
   * The dashboard's files by path (`/index.html`, `/app.js`…), served at `/` without authentication (they
   * hold no data: the page asks for the token and calls the API with it).
   */
  readonly dashboard?: ReadonlyMap<string, { readonly body: Buffer; readonly contentType: string }>;
}

/** The dashboard's own settings: the API on this origin, signed in with the API token. */
const DASHBOARD_CONFIG = Buffer.from(JSON.stringify({ apiBase: '', auth: { kind: 'token' } }));

/** What every dashboard file is sent with: scripts and styles from this origin only, never framed. */
const DASHBOARD_HEADERS = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

export interface RunningServer {
  readonly server: Server;
  readonly url: string;
  close(): Promise<void>;
}

export async function startServer(options: LocalServerOptions): Promise<RunningServer> {
  const expected: Caller[] = [
    { digest: digest(options.token), principal: 'local-operator', role: 'admin' },
    ...(options.roleTokens ?? []).map((entry) => ({
      digest: digest(entry.token),
      principal: `local-${entry.role}`,
      role: entry.role,
    })),
  ];
  const server = createServer((request, response) => {
    handle(request, response, options, expected).catch((error: unknown) => {
      options.logger.error('local server failure', {
        error: error instanceof Error ? error.message : String(error),
      });
      if (!response.headersSent)
        send(response, errorResult(500, 'InternalError', 'The request could not be completed.'));
    });
  });
  server.requestTimeout = 60_000;
  server.headersTimeout = 20_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 3000, options.host ?? '127.0.0.1', () => resolve());
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    url: `http://${host}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function handle(
  request: IncomingMessage,
  response: ServerResponse,
  options: LocalServerOptions,
  expected: readonly Caller[],
): Promise<void> {
  if (
    options.stream &&
    (await options.stream(request, response, new URL(request.url ?? '/', 'http://localhost')))
  )
    return;
  if (options.dashboard && serveDashboard(request, response, options.dashboard)) return;
  const body = await readBody(request);
  if (body === undefined) {
    send(
      response,
      errorResult(413, 'PayloadTooLarge', `request bodies are limited to ${MAX_BODY_BYTES} bytes`),
    );
    request.resume();
    return;
  }
  const url = new URL(request.url ?? '/', 'http://localhost');
  const event = toEvent(request, url, body);
  const caller = bearerCaller(request.headers.authorization, expected);
  if (caller !== undefined)
    event.requestContext.authorizer = { lambda: { principal: caller.principal, role: caller.role } };
  const context = {
    awsRequestId: event.requestContext.requestId,
    getRemainingTimeInMillis: () => 30_000,
  } as Context;
  send(response, await options.handler(event, context));
}

/** The dashboard at `/` (and `/dashboard`): its files and config.json; false for anything else. */
function serveDashboard(
  request: IncomingMessage,
  response: ServerResponse,
  files: NonNullable<LocalServerOptions['dashboard']>,
): boolean {
  if (request.method !== 'GET' && request.method !== 'HEAD') return false;
  const path = new URL(request.url ?? '/', 'http://localhost').pathname;
  if (path.startsWith('/api/')) return false;
  // The page is at / and at /dashboard/ (its files relative to it either way)
  const inside = path.replace(/^\/dashboard(?=\/|$)/, '') || '/';
  const name = inside === '/' ? '/index.html' : inside;
  const file =
    name === '/config.json' ? { body: DASHBOARD_CONFIG, contentType: 'application/json' } : files.get(name);
  if (!file) return false;
  response.writeHead(200, {
    ...DASHBOARD_HEADERS,
    'content-type': file.contentType,
    'content-length': String(file.body.length),
  });
  response.end(request.method === 'HEAD' ? undefined : file.body);
  request.resume();
  return true;
}

interface Caller {
  readonly digest: Buffer;
  readonly principal: string;
  readonly role: 'admin' | 'operator' | 'viewer';
}

/**
 * The local token stands for the operator who runs the runtime (an admin); further tokens for callers with a
 * lesser role. A wrong or missing token leaves the request anonymous. Every token is compared, in constant time.
 */
function bearerCaller(header: string | undefined, expected: readonly Caller[]): Caller | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!match?.[1]) return undefined;
  const given = digest(match[1]);
  let found: Caller | undefined;
  for (const caller of expected) if (timingSafeEqual(given, caller.digest) && !found) found = caller;
  return found;
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

/**
 * The body, or undefined when it exceeds the limit. The excess is drained and discarded rather than the
 * stream destroyed: destroying it would reset a keep-alive connection the client may reuse.
 */
function readBody(request: IncomingMessage): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    request.on('data', (chunk: Buffer) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        tooLarge = true;
        chunks.length = 0;
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => {
      if (!tooLarge) resolve(Buffer.concat(chunks).toString('utf8'));
    });
    request.on('error', reject);
  });
}

function toEvent(request: IncomingMessage, url: URL, body: string): HttpEvent {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (value !== undefined) headers[name.toLowerCase()] = Array.isArray(value) ? value.join(',') : value;
  }
  // API Gateway joins repeated query parameters with commas.
  const query: Record<string, string> = {};
  for (const [name, value] of url.searchParams)
    query[name] = name in query ? `${query[name]},${value}` : value;
  const method = (request.method ?? 'GET').toUpperCase();
  let path: string;
  try {
    path = decodeURIComponent(url.pathname);
  } catch {
    path = url.pathname;
  }
  const now = Date.now();
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: url.pathname,
    rawQueryString: url.search.slice(1),
    headers,
    ...(Object.keys(query).length > 0 ? { queryStringParameters: query } : {}),
    requestContext: {
      accountId: 'local',
      apiId: 'local',
      domainName: headers.host ?? 'localhost',
      domainPrefix: 'localhost',
      http: {
        method,
        path,
        protocol: `HTTP/${request.httpVersion}`,
        sourceIp: request.socket.remoteAddress ?? '127.0.0.1',
        userAgent: headers['user-agent'] ?? '',
      },
      requestId: randomUUID(),
      routeKey: '$default',
      stage: '$default',
      time: new Date(now).toISOString(),
      timeEpoch: now,
    },
    ...(body === '' ? {} : { body }),
    isBase64Encoded: false,
  };
}

function send(response: ServerResponse, result: HttpResult): void {
  response.writeHead(result.statusCode, result.headers as Record<string, string>);
  response.end(result.body);
}
