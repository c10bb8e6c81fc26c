import type { ChartConfiguration } from 'chart.js';
import { useState } from 'preact/hooks';
import { api, bytes, duration, field, when } from '../api.ts';
import { ChartView, Problem, usePolled } from '../components.tsx';

interface Series {
  objectives: { rpo: number; rto: number };
  targets: string[];
  targetNames: Record<string, string>;
  days: {
    date: string;
    backups: number;
    succeeded: number;
    failed: number;
    successRate: number | null;
    durationAverageSeconds: number | null;
    durationP95Seconds: number | null;
    storedBytes: Record<string, number>;
  }[];
  rpoAge: { at: string; ageHours: number }[];
  violations: { kind: 'RPO' | 'RTO'; start: string; end?: string; ongoing: boolean; achieved: number }[];
  rto: { testId: string; testType: string; finishedAt: string; actualRTO: number; objectiveRTO: number }[];
}
interface Summary {
  backupSuccessRate: { total: number; rate: number | null };
  backupDuration: { average: number | null; p95: number | null };
  rpoViolations: number;
  rtoViolations: number;
  storage: Record<string, { bytesStored: number; bytesProtected: number }>;
}

const day = (offset: number) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);
const palette = ['#1f6feb', '#d97706', '#059669', '#9333ea', '#dc2626', '#0891b2'];

/** The guide's key figures over a chosen range, as charts (each with its data as a table). */
export function Metrics() {
  const [range, setRange] = useState({ start: day(-13), end: day(1) });
  const query = `startDate=${range.start}&endDate=${range.end}`;
  const series = usePolled(() => api<Series>(`/api/dr/metrics/series?${query}`), [query], 15_000);
  const summary = usePolled(() => api<Summary>(`/api/dr/metrics?${query}`), [query], 15_000);
  const data = series.data;

  return (
    <>
      <h1>Metrics</h1>
      <form
        class="grid range"
        onSubmit={(event) => {
          event.preventDefault();
          const form = new FormData(event.currentTarget);
          setRange({ start: field(form, 'start'), end: field(form, 'end') });
        }}
      >
        <label>
          From
          <input type="date" name="start" value={range.start} required />
        </label>
        <label>
          To
          <input type="date" name="end" value={range.end} required />
        </label>
        <button type="submit">Show</button>
      </form>
      <Problem error={series.error ?? summary.error} />
      {summary.data ? (
        <div class="grid figures" data-testid="key-figures">
          <article>
            <header>Backup success rate</header>
            {summary.data.backupSuccessRate.rate === null
              ? '–'
              : `${(summary.data.backupSuccessRate.rate * 100).toFixed(1)}%`}{' '}
            of {summary.data.backupSuccessRate.total}
          </article>
          <article>
            <header>Average backup duration</header>
            {duration(summary.data.backupDuration.average)} (p95 {duration(summary.data.backupDuration.p95)})
          </article>
          <article>
            <header>Storage</header>
            {bytes(Object.values(summary.data.storage).reduce((sum, target) => sum + target.bytesStored, 0))}
          </article>
          <article>
            <header>Violations</header>
            RPO {summary.data.rpoViolations} · RTO {summary.data.rtoViolations}
          </article>
        </div>
      ) : null}
      {data ? <Charts data={data} /> : <p aria-busy="true">Loading…</p>}
    </>
  );
}

/** The objective as a dashed line across a chart, labelled. */
function objectiveLine(hours: number, name: string) {
  return {
    type: 'line' as const,
    yMin: hours,
    yMax: hours,
    borderColor: '#dc2626',
    borderDash: [6, 4],
    label: { display: true, content: `${name} ${hours} h`, position: 'end' as const },
  };
}

function Charts({ data }: { data: Series }) {
  const labels = data.days.map((entry) => entry.date);
  const success: ChartConfiguration = {
    type: 'bar',
    data: {
      labels,
      datasets: [
        { label: 'succeeded', data: data.days.map((d) => d.succeeded), backgroundColor: '#059669' },
        { label: 'failed or partial', data: data.days.map((d) => d.failed), backgroundColor: '#dc2626' },
      ],
    },
    options: {
      scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
    },
  };
  const durations: ChartConfiguration = {
    type: 'line',
    data: {
      labels,
      datasets: [
        {
          label: 'average (s)',
          data: data.days.map((d) => d.durationAverageSeconds),
          borderColor: palette[0],
          spanGaps: true,
        },
        {
          label: 'p95 (s)',
          data: data.days.map((d) => d.durationP95Seconds),
          borderColor: palette[1],
          spanGaps: true,
        },
      ],
    },
    options: { scales: { y: { beginAtZero: true } } },
  };
  const storage: ChartConfiguration = {
    type: 'line',
    data: {
      labels,
      datasets: data.targets.map((target, index) => ({
        label: data.targetNames[target] ?? target,
        data: data.days.map((d) => (d.storedBytes[target] ?? 0) / 1e6),
        borderColor: palette[index % palette.length],
      })),
    },
    options: { scales: { y: { beginAtZero: true, title: { display: true, text: 'MB stored' } } } },
  };
  const times = data.rpoAge.map((point) => Date.parse(point.at));
  const rpoViolations = data.violations.filter((violation) => violation.kind === 'RPO');
  const rpoChart: ChartConfiguration = {
    type: 'line',
    data: {
      datasets: [
        {
          label: 'restore point age (h)',
          data: data.rpoAge.map((point) => ({ x: Date.parse(point.at), y: point.ageHours })),
          borderColor: palette[0],
          pointRadius: 0,
        },
      ],
    },
    options: {
      scales: {
        x: {
          type: 'linear',
          ...(times.length > 0 ? { min: Math.min(...times), max: Math.max(...times) } : {}),
          ticks: { callback: (value) => new Date(Number(value)).toLocaleString() },
        },
        y: { beginAtZero: true, title: { display: true, text: 'hours' } },
      },
      plugins: {
        annotation: {
          annotations: {
            objective: objectiveLine(data.objectives.rpo, 'RPO'),
            ...Object.fromEntries(
              rpoViolations.map((violation, index) => [
                `violation${index}`,
                {
                  type: 'box',
                  xMin: Date.parse(violation.start),
                  xMax: violation.end ? Date.parse(violation.end) : Math.max(...times, Date.now()),
                  backgroundColor: 'rgba(220, 38, 38, 0.15)',
                  borderWidth: 0,
                },
              ]),
            ),
          },
        },
      },
    },
  };
  const rtoChart: ChartConfiguration = {
    type: 'bar',
    data: {
      labels: data.rto.map((test) => `${test.testType} ${new Date(test.finishedAt).toLocaleDateString()}`),
      datasets: [
        {
          label: 'measured RTO (h)',
          data: data.rto.map((test) => test.actualRTO),
          backgroundColor: data.rto.map((test) =>
            test.actualRTO <= test.objectiveRTO ? '#059669' : '#dc2626',
          ),
        },
      ],
    },
    options: {
      scales: { y: { beginAtZero: true, suggestedMax: data.objectives.rto * 1.2 } },
      plugins: {
        annotation: {
          annotations: {
            objective: objectiveLine(data.objectives.rto, 'RTO'),
          },
        },
      },
    },
  };
  return (
    <div class="charts">
      <ChartView
        id="chart-success"
        title="Backups per day: succeeded and failed"
        config={success}
        table={{
          head: ['day', 'backups', 'succeeded', 'failed or partial', 'success rate'],
          rows: data.days.map((d) => [
            d.date,
            d.backups,
            d.succeeded,
            d.failed,
            d.successRate === null ? '–' : `${(d.successRate * 100).toFixed(1)}%`,
          ]),
        }}
      />
      <ChartView
        id="chart-duration"
        title="Backup duration per day: average and p95"
        config={durations}
        table={{
          head: ['day', 'average', 'p95'],
          rows: data.days.map((d) => [
            d.date,
            duration(d.durationAverageSeconds),
            duration(d.durationP95Seconds),
          ]),
        }}
      />
      <ChartView
        id="chart-storage"
        title="Storage per target"
        config={storage}
        table={{
          head: ['day', ...data.targets.map((target) => data.targetNames[target] ?? target)],
          rows: data.days.map((d) => [
            d.date,
            ...data.targets.map((target) => bytes(d.storedBytes[target] ?? 0)),
          ]),
        }}
      />
      <ChartView
        id="chart-rpo"
        title={`Restore point age against the RPO (${data.objectives.rpo} h); violations shaded`}
        config={rpoChart}
        table={{
          head: ['at', 'age (h)', 'violation'],
          rows: [
            ...data.rpoAge.map((point) => [
              when(point.at),
              point.ageHours.toFixed(2),
              point.ageHours > data.objectives.rpo ? 'yes' : '',
            ]),
            ...rpoViolations.map((violation) => [
              `${when(violation.start)} – ${violation.end ? when(violation.end) : 'ongoing'}`,
              violation.achieved.toFixed(2),
              'RPO violation',
            ]),
          ],
        }}
      />
      <ChartView
        id="chart-rto"
        title={`RTO measured by each DR test against the objective (${data.objectives.rto} h)`}
        config={rtoChart}
        table={{
          head: ['test', 'finished', 'measured RTO (h)', 'objective (h)'],
          rows: data.rto.map((test) => [
            test.testType,
            when(test.finishedAt),
            test.actualRTO.toFixed(3),
            test.objectiveRTO,
          ]),
        }}
      />
    </div>
  );
}
