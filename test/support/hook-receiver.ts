import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** A webhook call as the application's receiver saw it, its signature checked with the shared secret. */
export interface HookDelivery {
  readonly path: string;
  readonly event: string;
  readonly body: any;
  /** X-DR-Signature is the HMAC-SHA256 of "<X-DR-Timestamp>.<body>" under the secret. */
  readonly signed: boolean;
  readonly delivery: string;
}

/**
 * The receiving end of webhook hooks, on loopback: it records every call and answers the next status of
 * `answers` (204 once they are used up).
 */
export async function startHookReceiver(secret: string): Promise<{
  readonly url: string;
  readonly received: HookDelivery[];
  readonly answers: number[];
  close(): Promise<void>;
}> {
  const received: HookDelivery[] = [];
  const answers: number[] = [];
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const timestamp = String(request.headers['x-dr-timestamp']);
      const signature = createHmac('sha256', secret).update(`${timestamp}.${text}`).digest('hex');
      const body = JSON.parse(text);
      received.push({
        path: request.url ?? '',
        event: body.event,
        body,
        signed: request.headers['x-dr-signature'] === `sha256=${signature}`,
        delivery: String(request.headers['x-dr-delivery']),
      });
      response.writeHead(answers.shift() ?? 204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    answers,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
