import { api, when } from '../api.ts';
import { ProgressBar, Problem, Section, Status, usePolled, type RunProgress, Head } from '../components.tsx';

interface Summary {
  objectives: { rpo: number; rto: number };
  lastRestorePoint: Record<string, { backupId: string; restorePoint: string; ageHours: number } | null>;
  ongoingRpoViolation: boolean;
  testCompliance: Record<string, { overdue: boolean; dueAt?: string; lastPassed?: string }>;
}
interface Alert {
  key: string;
  active: boolean;
  since: string;
  subject?: string;
}
interface Running {
  id: string;
  status: string;
  progress?: RunProgress;
  startedAt: string;
  scheduleName?: string;
  testType?: string;
  type?: string;
}
interface ComplianceRow {
  scheduleId: string;
  compliant: boolean;
  copies: number;
  media: number;
  offsite: number;
  missing: string[];
}
interface Test {
  id: string;
  testType: string;
  status: string;
  finishedAt?: string;
  results?: { actualRTO?: number };
  objectives?: { rto: number };
}

/** Whether the objectives are met now, what is open, what is due, what is running. */
export function Overview() {
  const summary = usePolled(() => api<Summary>('/api/dr/metrics'), [], 10_000);
  const alerts = usePolled(() => api<{ items: Alert[] }>('/api/dr/alerts'), [], 10_000);
  const compliance = usePolled(() => api<{ items: ComplianceRow[] }>('/api/dr/metrics/compliance'), []);
  const schedules = usePolled(
    () => api<{ items: { id: string; name: string }[] }>('/api/dr/schedules?limit=100'),
    [],
  );
  const scheduleName = (id: string) =>
    schedules.data?.items.find((schedule) => schedule.id === id)?.name ?? id;
  const tests = usePolled(() => api<{ items: Test[] }>('/api/dr/test?limit=50'), [], 5_000);
  const primary = usePolled(
    () =>
      api<{
        state: string;
        consecutiveFailures?: number;
        lastProbe?: { at: string; ms: number; error?: string };
        autoFailover?: boolean;
        failedOver?: { failoverId: string; since: string };
        decision?: { failoverId?: string; refused?: string };
      }>('/api/dr/health/primary'),
    [],
    10_000,
  );
  const running = usePolled(
    async () => {
      const [backups, restores, runningTests] = await Promise.all([
        api<{ items: Running[] }>('/api/dr/backups?status=RUNNING'),
        api<{ items: Running[] }>('/api/dr/restore?status=RUNNING'),
        api<{ items: Running[] }>('/api/dr/test?status=RUNNING'),
      ]);
      return [
        ...backups.items.map((item) => ({ ...item, kind: `Backup (${item.scheduleName ?? item.type})` })),
        ...restores.items.map((item) => ({ ...item, kind: 'Restore' })),
        ...runningTests.items.map((item) => ({ ...item, kind: `DR test ${item.testType}` })),
      ];
    },
    [],
    2_000,
  );

  const points = Object.values(summary.data?.lastRestorePoint ?? {}).filter((point) => point !== null);
  const newest = points.sort((a, b) => a.ageHours - b.ageHours)[0];
  const rpo = summary.data?.objectives.rpo;
  const rto = summary.data?.objectives.rto;
  const measured = (tests.data?.items ?? []).find((test) => test.results?.actualRTO !== undefined);
  const open = (alerts.data?.items ?? []).filter((alert) => alert.active);
  const due = Object.entries(summary.data?.testCompliance ?? {}).filter(([, value]) => value.overdue);

  return (
    <>
      <h1>Overview</h1>
      <Problem error={summary.error ?? alerts.error ?? running.error} />
      <div class="grid objectives">
        <article data-testid="rpo-now">
          <header>Recovery point objective</header>
          {newest && rpo !== undefined ? (
            <p>
              <Status value={newest.ageHours <= rpo ? 'MET' : 'VIOLATED'} /> newest restore point{' '}
              {newest.ageHours.toFixed(2)} h old (objective {rpo} h), {when(newest.restorePoint)}
            </p>
          ) : (
            <p>
              <Status value="NO RESTORE POINT" />
            </p>
          )}
        </article>
        <article data-testid="rto-now">
          <header>Recovery time objective</header>
          {measured && rto !== undefined ? (
            <p>
              <Status value={measured.results!.actualRTO! <= rto ? 'MET' : 'VIOLATED'} /> {measured.testType}{' '}
              measured {measured.results!.actualRTO!.toFixed(3)} h (objective {rto} h),{' '}
              {when(measured.finishedAt)}
            </p>
          ) : (
            <p>
              <Status value="NOT MEASURED" /> run a RESTORE_TEST or RECOVERY_TIME_TEST
            </p>
          )}
        </article>
        <article data-testid="primary-now">
          <header>Primary database</header>
          {primary.data ? (
            <p>
              <Status value={primary.data.state} />{' '}
              {primary.data.lastProbe
                ? `last probe ${when(primary.data.lastProbe.at)}${
                    primary.data.lastProbe.error
                      ? `: ${primary.data.lastProbe.error} (${primary.data.consecutiveFailures} in a row)`
                      : `, ${primary.data.lastProbe.ms} ms`
                  }`
                : 'not probed yet (the checks probe it every minute)'}
            </p>
          ) : null}
          {primary.data?.failedOver ? (
            <p data-testid="failed-over">
              Failed over {when(primary.data.failedOver.since)}: the standby is the primary (failover{' '}
              <code>{primary.data.failedOver.failoverId}</code>; fail back with POST /api/dr/failover/
              {primary.data.failedOver.failoverId}/failback).
            </p>
          ) : null}
          {primary.data?.decision?.refused ? (
            <p>Automatic failover refused: {primary.data.decision.refused}</p>
          ) : null}
          {primary.data ? <small>autoFailover {primary.data.autoFailover ? 'on' : 'off'}</small> : null}
        </article>
      </div>

      <Section title="Running now">
        {(running.data ?? []).length === 0 ? (
          <p>Nothing is running.</p>
        ) : (
          <ul class="running">
            {running.data!.map((item) => (
              <li data-testid={`running-${item.id}`}>
                <strong>{item.kind}</strong> <code>{item.id}</code> since {when(item.startedAt)}
                <ProgressBar progress={item.progress} label={`${item.kind} ${item.id}`} />
              </li>
            ))}
          </ul>
        )}
      </Section>

      <Section title="Open alerts">
        {open.length === 0 ? (
          <p>No open alerts.</p>
        ) : (
          <ul>
            {open.map((alert) => (
              <li>
                <Status value="OPEN" /> {alert.subject ?? alert.key} (since {when(alert.since)})
              </li>
            ))}
          </ul>
        )}
      </Section>

      <Section title="3-2-1 per schedule">
        <Problem error={compliance.error} />
        <table>
          <Head columns={['Schedule', 'Status', 'Copies', 'Media', 'Off-site', 'Missing']} />
          <tbody>
            {(compliance.data?.items ?? []).map((row) => (
              <tr>
                <td>{scheduleName(row.scheduleId)}</td>
                <td>
                  <Status value={row.compliant ? 'OK' : 'NOT MET'} />
                </td>
                <td>{row.copies}</td>
                <td>{row.media}</td>
                <td>{row.offsite}</td>
                <td>{row.missing.join('; ') || '–'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>

      <Section title="DR tests due">
        {due.length === 0 ? (
          <p>No test type is overdue.</p>
        ) : (
          <ul>
            {due.map(([type, value]) => (
              <li>
                <Status value="OVERDUE" /> {type}
                {value.dueAt ? ` (due ${when(value.dueAt)})` : ''}
              </li>
            ))}
          </ul>
        )}
      </Section>
    </>
  );
}
