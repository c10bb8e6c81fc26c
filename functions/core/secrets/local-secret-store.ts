import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SecretStoreError } from '../errors.ts';
import type { SecretStore } from './secret-store.ts';

const KEY_BYTES = 32;
const IV_BYTES = 12;
const FORMAT = 'dr-secret-v1';

interface Envelope {
  readonly format: typeof FORMAT;
  readonly iv: string;
  readonly tag: string;
  readonly ciphertext: string;
}

/**
 * The local runtime's secret store: one file per secret under `dir`, each sealed with AES-256-GCM under a
 * 256-bit key, with the secret's name as additional authenticated data (a file moved to another name does
 * not decrypt). File names are hashes of the secret names, so the directory listing says nothing either.
 * Writes are atomic: temporary file, fsync, rename.
 */
export class LocalSecretStore implements SecretStore {
  private readonly dir: string;
  private readonly key: Buffer;

  constructor(dir: string, key: Buffer) {
    if (key.length !== KEY_BYTES)
      throw new SecretStoreError(`the local secret key must be ${KEY_BYTES} bytes`);
    this.dir = dir;
    this.key = key;
  }

  /**
   * Loads the key from `keyFile`, creating it (mode 0600) with a fresh random key on first start, unless a
   * base64 key is given (DR_SECRET_KEY).
   */
  static async open(dir: string, keyFile: string, keyFromEnv?: string): Promise<LocalSecretStore> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    if (keyFromEnv !== undefined && keyFromEnv !== '') {
      return new LocalSecretStore(dir, Buffer.from(keyFromEnv, 'base64'));
    }
    try {
      return new LocalSecretStore(dir, Buffer.from((await readFile(keyFile, 'utf8')).trim(), 'base64'));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    const key = randomBytes(KEY_BYTES);
    await writeAtomically(keyFile, `${key.toString('base64')}\n`);
    return new LocalSecretStore(dir, key);
  }

  async put(name: string, values: Readonly<Record<string, string>>): Promise<void> {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    cipher.setAAD(Buffer.from(name, 'utf8'));
    const ciphertext = Buffer.concat([cipher.update(JSON.stringify(values), 'utf8'), cipher.final()]);
    const envelope: Envelope = {
      format: FORMAT,
      iv: iv.toString('base64'),
      tag: cipher.getAuthTag().toString('base64'),
      ciphertext: ciphertext.toString('base64'),
    };
    await writeAtomically(this.fileOf(name), JSON.stringify(envelope));
  }

  async get(name: string): Promise<Record<string, string> | undefined> {
    let raw: string;
    try {
      raw = await readFile(this.fileOf(name), 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new SecretStoreError(`secret ${name} could not be read`, { cause: error });
    }
    try {
      const envelope = JSON.parse(raw) as Envelope;
      if (envelope.format !== FORMAT) throw new Error(`unknown format ${String(envelope.format)}`);
      const decipher = createDecipheriv('aes-256-gcm', this.key, Buffer.from(envelope.iv, 'base64'));
      decipher.setAAD(Buffer.from(name, 'utf8'));
      decipher.setAuthTag(Buffer.from(envelope.tag, 'base64'));
      const plain = Buffer.concat([
        decipher.update(Buffer.from(envelope.ciphertext, 'base64')),
        decipher.final(),
      ]);
      return JSON.parse(plain.toString('utf8')) as Record<string, string>;
    } catch (error) {
      // Wrong key or tampered file: say which secret, never what was in it.
      throw new SecretStoreError(`secret ${name} could not be decrypted (wrong key or damaged file)`, {
        cause: error instanceof Error ? new Error(error.message) : undefined,
      });
    }
  }

  async delete(name: string): Promise<void> {
    await rm(this.fileOf(name), { force: true });
  }

  private fileOf(name: string): string {
    return join(this.dir, `${createHash('sha256').update(name).digest('hex')}.json`);
  }
}

/** temp file → fsync → rename: a crash leaves the old file or the new one, never half of one. */
export async function writeAtomically(file: string, contents: string): Promise<void> {
  const temporary = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(contents, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, file);
}
