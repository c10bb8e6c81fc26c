import type { BackupRecord } from './records.ts';

/**
 * What the services need from where they run, implemented locally (in process) and on AWS (Lambda, ECS,
 * S3): starting runs, and handing out download links.
 */
/** What starts the worker for a backup: in process locally, an asynchronous invocation on AWS. */
export interface RunLauncher {
  /** `workers` (more than 1): a FULL fanned out over that many workers (the backup-fanout workflow). */
  launch(backupId: string, options?: { workers?: number }): Promise<void>;
  /** Applies retention now (asynchronously, where the worker runs). */
  retention?(): Promise<void>;
  /** Exports a backup's download artifacts to the downloads bucket (AWS). */
  export?(backupId: string): Promise<void>;
  /** Measures the source database's change stream where it is reachable (asynchronously). */
  watch?(): Promise<void>;
}

/**
 * What a backup downloads as: the database as a plain SQL script for `psql` (the guide's way) and as a
 * custom-format archive for `pg_restore` (parallel jobs, picking tables), the files as a .tar.gz.
 */
export const ARTIFACTS = {
  database: { prefix: 'backup', extension: 'sql', contentType: 'application/sql' },
  archive: { prefix: 'backup', extension: 'dump', contentType: 'application/octet-stream' },
  files: { prefix: 'files', extension: 'tar.gz', contentType: 'application/gzip' },
} as const;

export type DownloadArtifact = keyof typeof ARTIFACTS;

/** `backup_2026-11-24.sql`: the guide's names, dated by the backup's start (its id). */
export function artifactFilename(artifact: DownloadArtifact, backupId: string): string {
  const day = `${backupId.slice(0, 4)}-${backupId.slice(4, 6)}-${backupId.slice(6, 8)}`;
  return `${ARTIFACTS[artifact].prefix}_${day}.${ARTIFACTS[artifact].extension}`;
}

export interface Artifact {
  readonly artifact: DownloadArtifact;
  readonly filename: string;
}

/** What a backup can be downloaded as. */
export function artifactsOf(record: Pick<BackupRecord, 'id' | 'database' | 'files'>): Artifact[] {
  const kinds: DownloadArtifact[] = [
    ...(record.database ? (['database', 'archive'] as const) : []),
    ...(record.files ? (['files'] as const) : []),
  ];
  return kinds.map((artifact) => ({ artifact, filename: artifactFilename(artifact, record.id) }));
}

export interface ArtifactLink {
  readonly url: string;
  readonly expiresAt: string;
}

/**
 * Makes time-limited links to a backup's artifacts: locally, signed links the runtime streams from at once;
 * on AWS, presigned S3 URLs once the worker has exported the artifacts to the downloads bucket (until then,
 * how long to wait before asking again).
 */
export interface DownloadLinks {
  links(
    backupId: string,
    artifacts: readonly Artifact[],
  ): Promise<{ ready: true; links: ArtifactLink[] } | { ready: false; retryAfterSeconds: number }>;
}

/** An RDS instance, as the config names it. */
export interface RdsInstance {
  readonly instanceIdentifier: string;
  readonly region?: string;
}

/** Free storage of an RDS instance in bytes (undefined when CloudWatch has no recent figure). */
export type FreeStorage = (instance: RdsInstance, now: Date) => Promise<number | undefined>;

/** An RDS instance or Aurora cluster, as `source.rds` names it. */
export interface RdsSource {
  readonly instanceIdentifier?: string;
  readonly clusterIdentifier?: string;
  readonly region?: string;
}

/** What RDS says of the source (`available`, `rebooting`, `failing-over`…; undefined when it is not found). */
export type DatabaseStatus = (source: RdsSource) => Promise<string | undefined>;
