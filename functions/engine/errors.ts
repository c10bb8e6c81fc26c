/**
 * The engine's error vocabulary. Names are stable: the CLI maps them to exit codes, and the backup worker's
 * state machines match them in Retry/Catch.
 */
export class EngineError extends Error {
  override get name(): string {
    return 'EngineError';
  }
}

/** A class of engine error whose `name` (what the CLI and the state machines match on) is `name`. */
function named(name: string) {
  return class extends EngineError {
    override get name(): string {
      return name;
    }
  };
}

/** A stored object failed authentication or does not parse: `object` names it (a key, or `chunk <id>`). */
export class CorruptDataError extends named('CorruptData') {
  readonly object: string;
  constructor(message: string, object: string, options?: { cause?: unknown }) {
    super(message, options);
    this.object = object;
  }
}

/** The master key does not open this repository, or is malformed or missing. */
export class WrongKeyError extends named('WrongKey') {}

export class RepositoryNotFoundError extends named('RepositoryNotFound') {}

export class BackupNotFoundError extends named('BackupNotFound') {}

/** Reading the source failed: pg_dump missing, connection refused, a dump that exited non-zero. */
export class SourceError extends named('SourceError') {}

/** Restoring is refused (destination not empty) or failed. */
export class RestoreError extends named('RestoreError') {}

/** Another operation holds the repository (a backup in progress while gc runs, for instance). */
export class RepositoryLockedError extends named('RepositoryLocked') {}
