import { createHash, randomUUID, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

/**
 * A Google Cloud Storage JSON-API test server. No GCS emulator installs here (none on npm or apt), so this
 * plays the service for the calls `@google-cloud/storage` makes, with the service's semantics where the
 * adapter depends on them:
 *
 * - resumable uploads: `POST /upload/storage/v1/b/B/o?uploadType=resumable&name=K` opens a session
 *   (`Location`), `PUT` requests carry `Content-Range: bytes a-b/total|*`; intermediate chunks answer 308 with
 *   `Range: bytes=0-n`, and the object exists only once the last byte of a known total is in;
 * - multipart uploads (`uploadType=multipart`), answering the object's metadata with `md5Hash` and `crc32c`
 *   (the library checks them);
 * - `GET …/o/K` (metadata), `GET …/o/K?alt=media` with `Range` (206, or 416 past the end), `GET …/o?prefix=`
 *   paged by `maxResults`/`pageToken`, `DELETE …/o/K`;
 * - with `token`, every request must carry `Authorization: Bearer <token>` (401 otherwise), and a token in
 *   `readOnlyTokens` gets 403 on writes.
 *
 * Objects and upload sessions live in a temporary directory and stream to and from disk.
 */
export interface TestGcs {
  readonly endpoint: string;
  /** Upload sessions opened that never completed. */
  openSessions(): number;
  /** Resumable-upload PUT requests that carried data, so far. */
  chunkRequests(): number;
  stop(): Promise<void>;
}

interface StoredObject {
  readonly file: string;
  readonly size: number;
  readonly md5Hash: string;
  readonly crc32c: string;
  readonly generation: string;
  readonly updated: string;
}

interface Session {
  readonly bucket: string;
  readonly name: string;
  readonly file: string;
  received: number;
  readonly md5: Hash;
  crc: number;
}

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC32C (Castagnoli), continued from `crc` (start with 0). */
export function crc32c(data: Buffer, crc = 0): number {
  let c = ~crc >>> 0;
  for (const byte of data) c = CRC32C_TABLE[(c ^ byte) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

function crcBase64(crc: number): string {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(crc >>> 0);
  return out.toString('base64');
}

export async function startGcs(
  buckets: readonly string[],
  options: { token?: string; readOnlyTokens?: readonly string[] } = {},
): Promise<TestGcs> {
  const home = await mkdtemp(join(tmpdir(), 'dr-gcs-'));
  await mkdir(join(home, 'objects'));
  await mkdir(join(home, 'sessions'));
  const objects = new Map<string, StoredObject>();
  const sessions = new Map<string, Session>();
  let generation = 1;
  let chunkRequests = 0;
  let endpoint = '';

  const fail = (response: ServerResponse, code: number, message: string, reason = 'invalid') => {
    response.writeHead(code, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ error: { code, message, errors: [{ reason, message }] } }));
  };
  const metadata = (bucket: string, name: string, object: StoredObject) => ({
    kind: 'storage#object',
    id: `${bucket}/${name}/${object.generation}`,
    bucket,
    name,
    size: String(object.size),
    md5Hash: object.md5Hash,
    crc32c: object.crc32c,
    generation: object.generation,
    contentType: 'application/octet-stream',
    updated: object.updated,
  });
  const json = (response: ServerResponse, status: number, body: unknown) => {
    response.writeHead(status, { 'content-type': 'application/json' });
    response.end(JSON.stringify(body));
  };
  const readBody = async (request: IncomingMessage) => {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  };

  async function finish(session: Session, id: string): Promise<StoredObject> {
    const file = join(home, 'objects', randomUUID());
    await rename(session.file, file);
    const object: StoredObject = {
      file,
      size: session.received,
      md5Hash: session.md5.digest('base64'),
      crc32c: crcBase64(session.crc),
      generation: String(generation++),
      updated: new Date().toISOString(),
    };
    const previous = objects.get(`${session.bucket}/${session.name}`);
    objects.set(`${session.bucket}/${session.name}`, object);
    if (previous) await rm(previous.file, { force: true });
    sessions.delete(id);
    return object;
  }

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', endpoint);
    const method = request.method ?? 'GET';
    if (options.token !== undefined) {
      const given = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1];
      if (given !== options.token && !options.readOnlyTokens?.includes(given ?? '')) {
        request.resume();
        return fail(response, 401, 'Invalid Credentials', 'authError');
      }
      if (given !== options.token && method !== 'GET') {
        request.resume();
        return fail(response, 403, 'does not have storage.objects.create access', 'forbidden');
      }
    }
    const upload = /^\/upload\/storage\/v1\/b\/([^/]+)\/o$/.exec(url.pathname);
    const object = /^\/storage\/v1\/b\/([^/]+)\/o(?:\/(.+))?$/.exec(url.pathname);
    const bucket = decodeURIComponent((upload ?? object)?.[1] ?? '');
    if ((upload || object) && !buckets.includes(bucket)) {
      request.resume();
      return fail(response, 404, 'The specified bucket does not exist.', 'notFound');
    }

    if (upload && method === 'POST' && url.searchParams.get('uploadType') === 'resumable') {
      const body = await readBody(request);
      const name =
        url.searchParams.get('name') ?? (JSON.parse(body.toString() || '{}') as { name?: string }).name;
      if (!name) return fail(response, 400, 'Required: name');
      const id = randomUUID();
      const file = join(home, 'sessions', id);
      await writeFile(file, '');
      sessions.set(id, { bucket, name, file, received: 0, md5: createHash('md5'), crc: 0 });
      response.writeHead(200, {
        location: `${endpoint}/upload/storage/v1/b/${encodeURIComponent(bucket)}/o?uploadType=resumable&name=${encodeURIComponent(name)}&upload_id=${id}`,
      });
      return void response.end();
    }

    if (upload && method === 'PUT' && url.searchParams.has('upload_id')) {
      const id = url.searchParams.get('upload_id')!;
      const session = sessions.get(id);
      if (!session) {
        request.resume();
        return fail(response, 404, 'No such upload session', 'notFound');
      }
      const range = request.headers['content-range'] ?? '';
      const chunk = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(range);
      const query = /^bytes \*\/(\d+|\*)$/.exec(range);
      if (!chunk && !query) {
        request.resume();
        return fail(response, 400, `bad Content-Range ${range}`);
      }
      const total = (chunk?.[3] ?? query?.[1]) === '*' ? undefined : Number(chunk?.[3] ?? query?.[1]);
      if (chunk) {
        chunkRequests++;
        const start = Number(chunk[1]);
        if (start !== session.received) {
          request.resume();
          return fail(response, 400, `expected the chunk at ${session.received}, got ${start}`);
        }
        const out = createWriteStream(session.file, { flags: 'a' });
        request.on('data', (data: Buffer) => {
          session.md5.update(data);
          session.crc = crc32c(data, session.crc);
          session.received += data.length;
        });
        // An interrupted request keeps what arrived; the client may resume from the 308's Range.
        await pipeline(request, out).catch(() => undefined);
      }
      if (total !== undefined && session.received === total) {
        const stored = await finish(session, id);
        return json(response, 200, metadata(session.bucket, session.name, stored));
      }
      response.writeHead(308, session.received > 0 ? { range: `bytes=0-${session.received - 1}` } : {});
      return void response.end();
    }

    if (upload && method === 'POST' && url.searchParams.get('uploadType') === 'multipart') {
      const boundary = /boundary="?([^";]+)"?/.exec(request.headers['content-type'] ?? '')?.[1];
      const body = await readBody(request);
      if (!boundary) return fail(response, 400, 'multipart upload without a boundary');
      const parts: Buffer[] = [];
      const delimiter = Buffer.from(`--${boundary}`);
      let at = body.indexOf(delimiter);
      while (at >= 0) {
        const next = body.indexOf(delimiter, at + delimiter.length);
        if (next < 0) break;
        const part = body.subarray(at + delimiter.length, next);
        const headerEnd = part.indexOf('\r\n\r\n');
        parts.push(part.subarray(headerEnd + 4, part.length - 2));
        at = next;
      }
      if (parts.length !== 2) return fail(response, 400, `multipart upload with ${parts.length} parts`);
      const described = JSON.parse(parts[0]!.toString()) as { name?: string };
      const name = url.searchParams.get('name') ?? described.name;
      if (!name) return fail(response, 400, 'Required: name');
      const id = randomUUID();
      const session: Session = {
        bucket,
        name,
        file: join(home, 'sessions', id),
        received: parts[1]!.length,
        md5: createHash('md5').update(parts[1]!),
        crc: crc32c(parts[1]!),
      };
      await writeFile(session.file, parts[1]!);
      const stored = await finish(session, id);
      return json(response, 200, metadata(bucket, name, stored));
    }

    if (object && object[2] !== undefined) {
      const name = decodeURIComponent(object[2]);
      const stored = objects.get(`${bucket}/${name}`);
      request.resume();
      if (!stored) return fail(response, 404, `No such object: ${bucket}/${name}`, 'notFound');
      if (method === 'DELETE') {
        objects.delete(`${bucket}/${name}`);
        await rm(stored.file, { force: true });
        response.writeHead(204);
        return void response.end();
      }
      if (method !== 'GET') return fail(response, 405, `${method} is not supported here`);
      if (url.searchParams.get('alt') !== 'media') return json(response, 200, metadata(bucket, name, stored));
      const range = /^bytes=(\d+)-(\d*)$/.exec(request.headers.range ?? '');
      if (range) {
        const start = Number(range[1]);
        const end = Math.min(range[2] ? Number(range[2]) : stored.size - 1, stored.size - 1);
        if (start >= stored.size) {
          response.writeHead(416, { 'content-range': `bytes */${stored.size}` });
          return void response.end();
        }
        response.writeHead(206, {
          'content-type': 'application/octet-stream',
          'content-length': String(end - start + 1),
          'content-range': `bytes ${start}-${end}/${stored.size}`,
        });
        return pipeline(createReadStream(stored.file, { start, end }), response).catch(() => undefined);
      }
      response.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(stored.size),
        'x-goog-hash': `crc32c=${stored.crc32c},md5=${stored.md5Hash}`,
      });
      return pipeline(createReadStream(stored.file), response).catch(() => undefined);
    }

    if (object && method === 'GET') {
      request.resume();
      const prefix = url.searchParams.get('prefix') ?? '';
      const maxResults = Math.min(Number(url.searchParams.get('maxResults') ?? 1000), 1000);
      const after = url.searchParams.get('pageToken');
      const names = [...objects.keys()]
        .filter((full) => full.startsWith(`${bucket}/`))
        .map((full) => full.slice(bucket.length + 1))
        .filter((name) => name.startsWith(prefix) && (after === null || name > after))
        .sort();
      const page = names.slice(0, maxResults);
      return json(response, 200, {
        kind: 'storage#objects',
        items: page.map((name) => metadata(bucket, name, objects.get(`${bucket}/${name}`)!)),
        ...(names.length > maxResults ? { nextPageToken: page.at(-1) } : {}),
      });
    }
    request.resume();
    fail(response, 404, `no route for ${method} ${url.pathname}`, 'notFound');
  }

  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      if (!response.headersSent) fail(response, 500, (error as Error).message, 'backendError');
      else response.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    endpoint,
    openSessions: () => sessions.size,
    chunkRequests: () => chunkRequests,
    stop: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await rm(home, { recursive: true, force: true });
    },
  };
}
