/**
 * The manifest of one backup: everything needed to restore it, and to check a restore against what was
 * read. Every chunk list is complete, for an INCREMENTAL too (its unchanged chunks are simply the ones its
 * parent stored), so any backup restores by its id alone.
 */
export type BackupType = 'FULL' | 'INCREMENTAL' | 'SCHEMA';

export interface Manifest {
  readonly format: 'dr-backup';
  readonly version: 1;
  readonly id: string;
  readonly type: BackupType;
  /** The backup this one deduplicated against (INCREMENTAL), for chains and retention. */
  readonly parent?: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  /** The instant the data is consistent to: the snapshot's time for a database, the start for files. */
  readonly restorePoint: string;
  readonly database?: DatabaseManifest;
  readonly files?: FilesManifest;
  /** Change-stream mode: where the stream stands, and (INCREMENTAL) the change sets since the FULL. */
  readonly changes?: ChangesManifest;
  readonly stats: {
    readonly chunks: number;
    readonly newChunks: number;
    readonly bytesRead: number;
    readonly bytesNew: number;
    readonly bytesStored: number;
    readonly packs: number;
  };
  /** Set when the backup looks wrong (empty, or much smaller than its parent): kept, never taken as the newest good one. */
  /**
   * Set when the backup looked wrong when taken (empty, or far smaller than the one before): it is no
   * restore point until an operator confirms it (`confirmed`: when and by whom).
   */
  readonly review?: {
    readonly reason: string;
    readonly confirmed?: { readonly at: string; readonly by: string };
  };
  readonly tags?: Readonly<Record<string, string>>;
}

/** A byte stream, stored as chunks. */
export interface StreamRecord {
  readonly chunks: readonly string[];
  readonly size: number;
  /** SHA-256 of the whole stream. */
  readonly sha256: string;
}

export interface TableRecord extends StreamRecord {
  readonly schema: string;
  readonly name: string;
  /** Column names in COPY order (generated columns excluded). */
  readonly columns: readonly string[];
  /** The key the rows were read in, or empty when the table has none (physical order). */
  readonly orderBy: readonly string[];
  readonly rows: number;
  /** Names of the table's indexes (to pick its post-data items in a partial restore). */
  readonly indexes: readonly string[];
  /**
   * A large table read in key ranges (several COPYs at once), in key order. Then `chunks` is the ranges'
   * chunks in order (the same bytes as one COPY of the table), `size` and `rows` their sums, and `sha256` is
   * the SHA-256 of the ranges' SHA-256s (hex, concatenated in order), since no one read the table whole:
   * readers check each range against its own (`rangeStreams`).
   */
  readonly ranges?: readonly RangeRecord[];
}

/**
 * One key range of a table: the rows with a key above `after` and at most `upTo` (each absent: open); its
 * stream is the next `chunkCount` of the table's chunks.
 */
export interface RangeRecord {
  readonly after?: string;
  readonly upTo?: string;
  readonly chunkCount: number;
  readonly size: number;
  readonly sha256: string;
  readonly rows: number;
}

/** A table's streams: the whole table, or each key range with its slice of the table's chunks. */
export function rangeStreams(
  table: TableRecord,
): (StreamRecord & { rows: number; range?: Pick<RangeRecord, 'after' | 'upTo'> })[] {
  if (!table.ranges) return [table];
  let start = 0;
  return table.ranges.map(({ chunkCount, size, sha256, rows, after, upTo }) => {
    const chunks = table.chunks.slice(start, (start += chunkCount));
    return {
      chunks,
      size,
      sha256,
      rows,
      range: { ...(after === undefined ? {} : { after }), ...(upTo === undefined ? {} : { upTo }) },
    };
  });
}

/** What one COPY of a backup stored: a table, or one key range of it (a fan-out part's index file). */
export interface PieceRecord {
  /** `schema.name` of its table. */
  readonly table: string;
  readonly range?: number;
  readonly stream: StreamRecord;
  readonly rows: number;
}

export interface SequenceRecord {
  readonly schema: string;
  readonly name: string;
  readonly lastValue: string;
  readonly isCalled: boolean;
}

export interface DatabaseManifest {
  readonly serverVersion: string;
  readonly database: string;
  /** now() inside the exported snapshot. */
  readonly snapshotTime: string;
  /** pg_dump -Fc archives: `--section=pre-data` and `--section=post-data`, or `--schema-only` for SCHEMA. */
  readonly preData?: StreamRecord;
  readonly postData?: StreamRecord;
  readonly schemaOnly?: StreamRecord;
  readonly tables: readonly TableRecord[];
  readonly sequences: readonly SequenceRecord[];
}

/** The changes one INCREMENTAL read from the slot: every transaction committed in (startLsn, endLsn]. */
export interface ChangeSet {
  /** The backup that stored this set. */
  readonly backupId: string;
  readonly startLsn: string;
  readonly endLsn: string;
  /** JSON lines: relation definitions, then begin / changes / commit per transaction, in commit order. */
  readonly records: StreamRecord;
  readonly transactions: number;
  readonly changes: number;
  readonly firstCommit?: { readonly lsn: string; readonly time: string };
  readonly lastCommit?: { readonly lsn: string; readonly time: string; readonly xid: number };
  /** Sequence values read after the changes (sequences are not in the stream). */
  readonly sequences: readonly SequenceRecord[];
}

/**
 * A backup in change-stream mode. The FULL records the slot and where it started; each INCREMENTAL carries
 * the FULL's `database` record and the ordered list of every change set since it (its own last), so it
 * restores by its id alone: the FULL, then the sets.
 */
export interface ChangesManifest {
  readonly slot: string;
  readonly publication: string;
  /** The FULL the chain starts from (this backup's own id for the FULL). */
  readonly base: string;
  /** The slot's consistent point: the FULL's snapshot. */
  readonly startLsn: string;
  /** The stream is stored up to here. */
  readonly endLsn: string;
  /** Schema fingerprint when the FULL was taken: an INCREMENTAL with another one is taken as a FULL. */
  readonly schema: string;
  readonly sets: readonly ChangeSet[];
}

export interface FileEntry {
  /** Relative, '/'-separated. */
  readonly path: string;
  readonly type: 'file' | 'dir' | 'symlink';
  readonly mode: number;
  readonly mtimeMs: number;
  readonly size: number;
  readonly chunks?: readonly string[];
  readonly sha256?: string;
  readonly target?: string;
}

export interface FilesManifest {
  readonly root: string;
  readonly entries: readonly FileEntry[];
}

/** Backup ids sort by time, to the millisecond: 20261124T181500123Z-1a2b3c. */
/** What `newBackupId` makes: the start time to the millisecond, then 6 random hex digits. */
export function isBackupId(value: string): boolean {
  return /^\d{8}T\d{9}Z-[0-9a-f]{6}$/.test(value);
}

export function newBackupId(now: Date = new Date()): string {
  const stamp = now.toISOString().replace(/[-:.]/g, '');
  const suffix = Math.floor(Math.random() * 0xffffff)
    .toString(16)
    .padStart(6, '0');
  return `${stamp}-${suffix}`;
}

/** Flagged for review and not confirmed since: never taken as a restore point or a parent. */
export function isFlagged(manifest: Pick<Manifest, 'review'>): boolean {
  return manifest.review !== undefined && manifest.review.confirmed === undefined;
}

/**
 * The bytes a backup restores, whatever it read to make them: its schema archives, tables, files and change
 * sets (an INCREMENTAL that read nothing new still protects all of it).
 */
export function protectedBytes(manifest: Manifest): number {
  const database = manifest.database;
  const streams = [
    database?.preData,
    database?.postData,
    database?.schemaOnly,
    ...(database?.tables ?? []),
    ...(manifest.changes?.sets.map((set) => set.records) ?? []),
  ];
  return (
    streams.reduce((sum, record) => sum + (record?.size ?? 0), 0) +
    (manifest.files?.entries ?? []).reduce((sum, entry) => sum + (entry.size ?? 0), 0)
  );
}
