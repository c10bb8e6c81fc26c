import type { ProgressEvent } from '../engine/progress.ts';
import type { RunProgress } from './records.ts';

/**
 * What a running backup, restore or test shows of its progress (the API's entries, the dashboard's bars):
 * the engine's event with the rate since the run started and, where the total is known or estimated, the
 * share done and the time left at that rate.
 */
export function progressOf(
  event: ProgressEvent,
  startedAt: number,
  now: number,
  estimatedBytes?: number,
): RunProgress {
  const seconds = Math.max((now - startedAt) / 1000, 0.001);
  const bytesPerSecond = Math.round(event.bytes / seconds);
  const total = event.totalBytes ?? estimatedBytes;
  const known = total !== undefined && total > 0;
  const left = known ? Math.max(total - event.bytes, 0) : undefined;
  return {
    phase: event.phase,
    ...(event.item === undefined ? {} : { item: event.item }),
    bytes: event.bytes,
    ...(known ? { totalBytes: total, estimated: event.totalBytes === undefined } : {}),
    bytesPerSecond,
    ...(known ? { percent: Math.min(100, Math.round((event.bytes / total) * 1000) / 10) } : {}),
    ...(left !== undefined && bytesPerSecond > 0 ? { etaSeconds: Math.round(left / bytesPerSecond) } : {}),
    updatedAt: new Date(now).toISOString(),
  };
}

/**
 * Writes the newest progress at most every `everyMs`, one write at a time (a slow store never queues them
 * up); `flush` waits for the write under way, then writes the newest if it was not (the entry ends showing
 * where the run ended). A failed write is reported and the run goes on: progress is shown, never
 * load-bearing.
 */
export function progressWriter(
  write: (progress: RunProgress) => Promise<void>,
  onError: (error: unknown) => void,
  everyMs = 2000,
): { report(progress: RunProgress): void; flush(): Promise<void> } {
  let newest: RunProgress | undefined;
  let written: RunProgress | undefined;
  let last = 0;
  let writing: Promise<void> | undefined;
  const start = () => {
    last = Date.now();
    const value = newest!;
    written = value;
    writing = write(value)
      .catch(onError)
      .finally(() => {
        writing = undefined;
      });
  };
  return {
    report: (progress) => {
      newest = progress;
      if (!writing && Date.now() - last >= everyMs) start();
    },
    flush: async () => {
      await writing;
      if (newest !== undefined && newest !== written) {
        start();
        await writing;
      }
    },
  };
}
