import { z } from 'zod';

/**
 * The field rules target configs are made of (and the API's other schemas reuse): checked at the edge so
 * that nothing unchecked reaches a filesystem path, an object name or a host.
 */
export const range = (min: number, max: number, unit: string) =>
  z
    .number({ error: `must be a number of ${unit}` })
    .min(min, { error: `must be at least ${min} ${unit}` })
    .max(max, { error: `must be at most ${max} ${unit}` });

export const wholeRange = (min: number, max: number, unit: string) =>
  range(min, max, unit).int({ error: `must be a whole number of ${unit}` });

/** A secret value. On update: omitted keeps the stored one, `null` removes it. */
export const secret = z
  .string()
  .min(1, { error: 'must not be empty' })
  .max(65_536, { error: 'must be at most 64 KiB' })
  .nullable()
  .optional();

export const hostname = z
  .string()
  .min(1)
  .max(253)
  .regex(
    /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$/,
    {
      error: 'must be a host name or an IP address',
    },
  );

export const port = z
  .number()
  .int({ error: 'must be a whole number' })
  .min(1, { error: 'must be between 1 and 65535' })
  .max(65_535, { error: 'must be between 1 and 65535' });

/**
 * An absolute POSIX path with no `..` segment and no control character: it will reach the filesystem, so
 * it is checked here rather than trusted.
 */
export const absolutePath = z
  .string()
  .max(4096)
  .refine((value) => value.startsWith('/'), { error: 'must be an absolute path' })
  .refine((value) => !value.split('/').includes('..'), { error: "must not contain a '..' segment" })
  // eslint-disable-next-line no-control-regex -- control characters are exactly what this rejects
  .refine((value) => !/[\u0000-\u001f]/.test(value), { error: 'must not contain control characters' });

/** A remote directory on an FTP or SFTP server (relative paths are relative to the login directory). */
export const remotePath = z
  .string()
  .min(1)
  .max(1024)
  .refine((value) => !value.split('/').includes('..'), { error: "must not contain a '..' segment" })
  // eslint-disable-next-line no-control-regex -- control characters are exactly what this rejects
  .refine((value) => !/[\u0000-\u001f]/.test(value), { error: 'must not contain control characters' });

export const objectPrefix = z
  .string()
  .max(512)
  .refine((value) => !value.startsWith('/'), { error: "must not start with '/'" })
  .refine((value) => !value.split('/').includes('..'), { error: "must not contain a '..' segment" });

export const awsRegion = z
  .string()
  .regex(/^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d{1,2}$/, { error: 'must be an AWS region such as us-east-1' });

/** S3 bucket naming rules (the subset that matters for validation). */
export const s3Bucket = z
  .string()
  .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, {
    error:
      'must be 3-63 characters of lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit',
  })
  .refine((value) => !value.includes('..') && !/^\d+\.\d+\.\d+\.\d+$/.test(value), {
    error: 'must not contain two adjacent dots or look like an IP address',
  });

export const httpUrl = z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' });
