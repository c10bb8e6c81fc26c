import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createSecretKey,
  randomBytes,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { constants, zstdCompress, zstdDecompressSync } from 'node:zlib';
import { CorruptDataError, WrongKeyError } from './errors.ts';

/**
 * The repository's cryptography (specified in docs/repository-format.md):
 * - a 32-byte master key, held by the operator (key file or environment) or, on AWS, by KMS;
 * - per repository, random key material wrapped (sealed) under the master key in `keys/<id>`:
 *   `encryptionKey` (AES-256-GCM for every stored object), `idKey` (HMAC-SHA256 chunk ids), `chunkerKey`
 *   (the chunker's gear table);
 * - sealed framing: nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes), with associated data that binds each
 *   sealed object to its role and name, so that objects cannot be swapped or replayed under another name.
 */
export const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

export interface KeyMaterial {
  readonly encryptionKey: Buffer;
  readonly idKey: Buffer;
  readonly chunkerKey: Buffer;
}

export function newKeyMaterial(): KeyMaterial {
  return {
    encryptionKey: randomBytes(KEY_BYTES),
    idKey: randomBytes(KEY_BYTES),
    chunkerKey: randomBytes(KEY_BYTES),
  };
}

export function seal(key: Buffer, plaintext: Buffer, aad: string): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

/** A key's KeyObject, made once: a restore opens every chunk under one key (a raw key is imported per call). */
const keyObjects = new WeakMap<Buffer, KeyObject>();
function keyObject(key: Buffer): KeyObject {
  let object = keyObjects.get(key);
  if (!object) keyObjects.set(key, (object = createSecretKey(key)));
  return object;
}

/** @throws CorruptDataError when the object was altered, or sealed under another key or name. */
export function unseal(key: Buffer, sealed: Buffer, aad: string, what: string): Buffer {
  if (sealed.length < NONCE_BYTES + TAG_BYTES)
    throw new CorruptDataError(`${what} is truncated (${sealed.length} bytes)`, what);
  const decipher = createDecipheriv('aes-256-gcm', keyObject(key), sealed.subarray(0, NONCE_BYTES));
  decipher.setAAD(Buffer.from(aad, 'utf8'));
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  try {
    const plaintext = decipher.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES));
    decipher.final(); // GCM: checks the tag, and returns no bytes
    return plaintext;
  } catch {
    throw new CorruptDataError(`${what} failed authentication (altered or damaged)`, what);
  }
}

/** Chunk ids are keyed, so stored names say nothing about content (no confirmation-of-file attacks). */
export function chunkId(idKey: Buffer, data: Buffer): string {
  return createHmac('sha256', keyObject(idKey)).update(data).digest('hex');
}

export function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

const compress = promisify(zstdCompress);
const RAW = 0;
const ZSTD = 1;

/** Per-chunk compression: zstd level 3 on zlib's thread pool; kept raw when that is not smaller. */
export async function encodeChunk(data: Buffer): Promise<Buffer> {
  const packed = await compress(data, { params: { [constants.ZSTD_c_compressionLevel]: 3 } });
  return packed.length + 1 < data.length
    ? Buffer.concat([Buffer.of(ZSTD), packed])
    : Buffer.concat([Buffer.of(RAW), data]);
}

/**
 * Synchronously: measured on a restore, zlib's asynchronous API (a hop to its thread pool and back per chunk)
 * cost more CPU than decompressing the chunk.
 */
export function decodeChunk(encoded: Buffer, what: string): Buffer {
  const body = encoded.subarray(1);
  if (encoded[0] === RAW) return body;
  if (encoded[0] === ZSTD)
    // Output in one buffer of the size the frame states, not 16 KiB pieces joined (half the time, measured)
    return zstdDecompressSync(body, {
      maxOutputLength: 64 * 1024 * 1024,
      chunkSize: Math.min(Math.max((zstdContentSize(body) ?? 0) + 1, 16 * 1024), 1024 * 1024),
    });
  throw new CorruptDataError(`${what} has an unknown encoding ${String(encoded[0])}`, what);
}

/**
 * The size a zstd frame's header states for its content (RFC 8878 §3.1.1.1; zstd states it when it is told the
 * input's size, as ours always is), or undefined. Only a hint: the frame's decompression checks it.
 */
export function zstdContentSize(frame: Buffer): number | undefined {
  if (frame.length < 6 || frame.readUInt32LE(0) !== 0xfd2fb528) return undefined;
  const descriptor = frame[4]!;
  const singleSegment = (descriptor >> 5) & 1;
  const sizeBytes = [singleSegment, 2, 4, 8][descriptor >> 6]!;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][descriptor & 3]!;
  if (sizeBytes === 0 || frame.length < at + sizeBytes) return undefined;
  if (sizeBytes === 1) return frame[at];
  if (sizeBytes === 2) return frame.readUInt16LE(at) + 256;
  if (sizeBytes === 4) return frame.readUInt32LE(at);
  const size = frame.readBigUInt64LE(at);
  return size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(size) : undefined;
}

// ---------------------------------------------------------------------------------------------- master key

export interface MasterKey {
  readonly key: Buffer;
  /** A public fingerprint: which master key a key file was sealed under. */
  readonly id: string;
}

export function masterKeyFrom(bytes: Buffer): MasterKey {
  if (bytes.length !== KEY_BYTES)
    throw new WrongKeyError(`a master key is ${KEY_BYTES} bytes; this one is ${bytes.length}`);
  return {
    key: bytes,
    id: createHmac('sha256', bytes).update('dr-master-key-id').digest('hex').slice(0, 16),
  };
}

/** Parses a key as written by `drctl key generate`: 64 hex digits or base64 of 32 bytes, surrounding space ignored. */
export function parseMasterKey(text: string): MasterKey {
  const value = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(value)) return masterKeyFrom(Buffer.from(value, 'hex'));
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(value))
    return masterKeyFrom(
      Buffer.from(value, value.includes('-') || value.includes('_') ? 'base64url' : 'base64'),
    );
  throw new WrongKeyError('a master key must be 64 hex digits or base64 of 32 bytes');
}

/** The key provider for the CLI and the local runtime: a key file, or DR_MASTER_KEY. */
export async function loadMasterKey(options: {
  keyFile?: string | undefined;
  env?: NodeJS.ProcessEnv;
}): Promise<MasterKey> {
  if (options.keyFile !== undefined) {
    let text: string;
    try {
      text = await readFile(options.keyFile, 'utf8');
    } catch (error) {
      throw new WrongKeyError(`cannot read the key file ${options.keyFile}: ${(error as Error).message}`);
    }
    return parseMasterKey(text);
  }
  const fromEnv = (options.env ?? process.env).DR_MASTER_KEY;
  if (fromEnv === undefined || fromEnv.trim() === '')
    throw new WrongKeyError('no master key: give --key-file or set DR_MASTER_KEY');
  return parseMasterKey(fromEnv);
}

export function generateMasterKey(): string {
  return randomBytes(KEY_BYTES).toString('hex');
}
