import { awsControlPlane } from '../aws/control-plane.ts';
import { VERSION } from '../core/version.ts';
import { createApiHandler } from './app.ts';

/**
 * The API Lambda (API Gateway HTTP API, payload format 2.0). Clients are created once per container, from
 * environment variables that the CDK stack sets; `execute` and retention start the worker through the launcher
 * (WORKER_FUNCTION, WORKER_RUNNER).
 */
export const handler = createApiHandler(awsControlPlane(), { version: VERSION, mode: 'aws' });
