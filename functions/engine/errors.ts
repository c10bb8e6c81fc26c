/**
 * The engine's error vocabulary. Names are stable: the CLI maps them to exit codes, and the backup worker's
 * state machines match them in Retry/Catch.
 */
export class EngineError extends Error {
  override get name(): string {
    return 'EngineError';
  }
}

/** A stored object failed authentication or does not parse: `object` names it (a key, or `chunk <id>`). */
export class CorruptDataError extends EngineError {
  readonly object: string;
  constructor(message: string, object: string, options?: { cause?: unknown }) {
    super(message, options);
    this.object = object;
  }
  override get name(): string {
    return 'CorruptData';
  }
}

/** The master key does not open this repository, or is malformed or missing. */
export class WrongKeyError extends EngineError {
  override get name(): string {
    return 'WrongKey';
  }
}

export class RepositoryNotFoundError extends EngineError {
  override get name(): string {
    return 'RepositoryNotFound';
  }
}

export class BackupNotFoundError extends EngineError {
  override get name(): string {
    return 'BackupNotFound';
  }
}

/** Reading the source failed: pg_dump missing, connection refused, a dump that exited non-zero. */
export class SourceError extends EngineError {
  override get name(): string {
    return 'SourceError';
  }
}

/** Restoring is refused (destination not empty) or failed. */
export class RestoreError extends EngineError {
  override get name(): string {
    return 'RestoreError';
  }
}

/** Another operation holds the repository (a backup in progress while gc runs, for instance). */
export class RepositoryLockedError extends EngineError {
  override get name(): string {
    return 'RepositoryLocked';
  }
}
