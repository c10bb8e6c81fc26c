import type { TargetDriver } from './driver.ts';
import { azureDriver } from './azure/driver.ts';
import { ftpDriver } from './ftp/driver.ts';
import { gcsDriver } from './gcs/driver.ts';
import { localDriver } from './local/driver.ts';
import { s3Driver } from './s3/driver.ts';
import { sftpDriver } from './sftp/driver.ts';

/**
 * Every target type, by its API name. A new type is a folder with its driver and one line here: the API
 * schema, the OpenAPI document, the target service and drctl all read this.
 */
export const DRIVERS = {
  LOCAL: localDriver,
  S3: s3Driver,
  AZURE: azureDriver,
  GCP: gcsDriver,
  FTP: ftpDriver,
  SFTP: sftpDriver,
} as const satisfies Record<string, TargetDriver>;

export type TargetType = keyof typeof DRIVERS;
export const TARGET_TYPES = Object.keys(DRIVERS) as TargetType[];

/** The driver of a type, or undefined for a type no driver has. */
export function driverOf(type: string): TargetDriver | undefined {
  return Object.hasOwn(DRIVERS, type) ? DRIVERS[type as TargetType] : undefined;
}
