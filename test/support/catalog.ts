/**
 * Backup catalog entries for tests that build a history by hand (metrics, alerts): the shape the worker
 * writes, with a database, one target and the sizes the figures read.
 */
export function catalogEntry(options: {
  readonly id: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly status: string;
  readonly scheduleId?: string;
  readonly targetType?: string;
  readonly targetError?: string;
}): Record<string, unknown> & { id: string } {
  const scheduleId = options.scheduleId ?? 'hourly';
  return {
    id: options.id,
    scheduleId,
    scheduleName: scheduleId,
    requestedType: 'FULL',
    type: 'FULL',
    status: options.status,
    trigger: { kind: 'schedule' },
    startedAt: options.startedAt,
    heartbeatAt: options.finishedAt,
    finishedAt: options.finishedAt,
    restorePoint: options.startedAt,
    database: { name: 'app', serverVersion: '15', tables: 3 },
    sizes: { sourceBytes: 1000, storedBytes: 100, newBytes: 200, chunks: 1, newChunks: 1 },
    targets: [
      {
        targetId: 'primary',
        name: 'primary',
        targetType: options.targetType ?? 'LOCAL',
        status: options.status === 'FAILED' ? 'FAILED' : 'SUCCESS',
        bytesWritten: 100,
        ...(options.targetError
          ? { status: 'FAILED', error: { kind: 'permission', message: options.targetError } }
          : {}),
      },
    ],
  };
}

/** The guide's nightly FULL schedule on the given targets. */
export function nightlySchedule(targets: readonly string[]): Record<string, unknown> {
  return { id: 'nightly', name: 'nightly', scheduleType: 'FULL', cronExpression: '0 2 * * *', targets };
}

/**
 * A finished RESTORE_TEST entry as the workflow writes it (objectives RTO 4 h / RPO 2 h) that took 5 h: the
 * RTO violation the metrics and alerts must see.
 */
export function slowRestoreTest(options: {
  readonly id: string;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly rtoViolated?: boolean;
}): Record<string, unknown> & { id: string } {
  return {
    id: options.id,
    testType: 'RESTORE_TEST',
    targetEnvironment: 'STAGING',
    notifyOnCompletion: false,
    status: 'PASSED',
    mode: 'workflow',
    actor: 'ops',
    startedAt: options.startedAt,
    finishedAt: options.finishedAt,
    objectives: { rto: 4, rpo: 2 },
    results: {
      success: true,
      actualRTO: 5,
      actualRPO: 1,
      issues: [],
      participants: [],
      ...(options.rtoViolated === undefined ? {} : { rtoViolated: options.rtoViolated }),
    },
  };
}
