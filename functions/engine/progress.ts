/** What long operations (backup, restore, verify, export) report as they go. */
export interface ProgressEvent {
  readonly phase: 'database' | 'files' | 'finishing' | 'restore' | 'verify' | 'export';
  readonly item?: string;
  /** Source bytes read so far in this operation. */
  readonly bytes: number;
  /** The bytes the operation will have read when done, where it knows (restores do; backups do not). */
  readonly totalBytes?: number;
}

export type ProgressListener = (event: ProgressEvent) => void;
