import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { guardedAgents, type EgressPolicy } from '../storage/egress.ts';

/**
 * One HTTP request to a URL an operator configured (a hook, the application's health URL): through the egress
 * policy to that URL's host only (a redirect is not followed: its status is the answer), with a time limit.
 * Answers the status; the body is read up to 64 KiB and dropped.
 */
export async function requestStatus(
  url: URL,
  options: {
    readonly method: 'GET' | 'POST';
    readonly egress: EgressPolicy | undefined;
    readonly timeoutMs: number;
    readonly headers?: Readonly<Record<string, string>>;
    readonly body?: string;
  },
): Promise<number> {
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  const agents = guardedAgents(
    { policy: options.egress ?? {}, hosts: [`${url.hostname}:${port}`] },
    { keepAlive: false },
  );
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: options.method,
        agent: url.protocol === 'https:' ? agents.https : agents.http,
        headers: {
          ...options.headers,
          ...(options.body === undefined
            ? {}
            : { 'content-length': String(Buffer.byteLength(options.body)) }),
        },
        timeout: options.timeoutMs,
      },
      (response: IncomingMessage) => {
        let seen = 0;
        response.on('data', (chunk: Buffer) => {
          seen += chunk.length;
          if (seen > 65_536) response.destroy();
        });
        response.on('end', () => resolve(response.statusCode ?? 0));
        response.on('error', () => resolve(response.statusCode ?? 0));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`timed out after ${options.timeoutMs / 1000} s`)));
    req.on('error', reject);
    req.end(options.body);
  });
}
