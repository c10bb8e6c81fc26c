import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
  type ChartConfiguration,
} from 'chart.js';
import annotationPlugin from 'chartjs-plugin-annotation';
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { RunProgress } from '../../functions/core/records.ts';
import { ApiError, bytes, duration } from './api.ts';

Chart.register(
  ...[BarController, BarElement, CategoryScale, Filler, Legend, LinearScale, LineController],
  ...[LineElement, PointElement, Tooltip, annotationPlugin],
);

/** What a running backup, restore or test reports (the API's `progress`). */
export type { RunProgress } from '../../functions/core/records.ts';

export function ProgressBar({ progress, label }: { progress?: RunProgress | undefined; label: string }) {
  if (!progress)
    return (
      <div class="progress">
        <progress aria-label={`${label}: starting`} />
        <small>starting…</small>
      </div>
    );
  return (
    <div class="progress" data-testid="progress">
      <progress
        aria-label={`${label}: ${progress.percent ?? 'unknown'} percent`}
        {...(progress.percent === undefined ? {} : { value: progress.percent, max: 100 })}
      />
      <small>
        {progress.phase}
        {progress.item ? ` · ${progress.item}` : ''} · {bytes(progress.bytes)}
        {progress.totalBytes ? ` of ${progress.estimated ? '≈ ' : ''}${bytes(progress.totalBytes)}` : ''}
        {progress.percent === undefined ? '' : ` (${progress.percent}%)`} · {bytes(progress.bytesPerSecond)}/s
        {progress.etaSeconds === undefined ? '' : ` · ${duration(progress.etaSeconds)} left`}
      </small>
    </div>
  );
}

/** A Chart.js chart, with its data as a table for screen readers and for copying. */
export function ChartView({
  id,
  title,
  config,
  table,
}: {
  id: string;
  title: string;
  config: ChartConfiguration;
  table: { head: readonly string[]; rows: readonly (readonly (string | number)[])[] };
}) {
  const canvas = useRef<HTMLCanvasElement>(null);
  useEffect(() => {
    if (!canvas.current) return undefined;
    const chart = new Chart(canvas.current, {
      ...config,
      options: { ...config.options, animation: false, responsive: true, maintainAspectRatio: false },
    });
    return () => chart.destroy();
  }, [JSON.stringify(config)]);
  return (
    <figure class="chart" data-testid={id}>
      <figcaption>
        <strong>{title}</strong>
      </figcaption>
      <div class="chart-box">
        <canvas ref={canvas} role="img" aria-label={title} />
      </div>
      <details>
        <summary>Data</summary>
        <table>
          <Head columns={table.head} />
          <tbody>
            {table.rows.map((row) => (
              <tr>
                {row.map((cell) => (
                  <td>{cell}</td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      </details>
    </figure>
  );
}

/** Loads `load()` now and every `everyMs` (0: once); `reload` to load again at once. */
export function usePolled<T>(load: () => Promise<T>, deps: readonly unknown[], everyMs = 0) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<Error | undefined>(undefined);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    const run = () =>
      load().then(
        (value) => {
          if (!live) return;
          setData(value);
          setError(undefined);
        },
        (failure: unknown) => live && setError(failure as Error),
      );
    void run();
    const timer = everyMs > 0 ? setInterval(() => void run(), everyMs) : undefined;
    return () => {
      live = false;
      if (timer) clearInterval(timer);
    };
  }, [...deps, tick]);
  return { data, error, reload: () => setTick((n) => n + 1) };
}

/** A table's header row. */
export function Head({ columns }: { columns: readonly string[] }) {
  return (
    <thead>
      <tr>
        {columns.map((column) => (
          <th scope="col">{column}</th>
        ))}
      </tr>
    </thead>
  );
}

export function Problem({ error }: { error: Error | undefined }) {
  if (!error) return null;
  return (
    <p role="alert" class="problem">
      {error.message}
      {error instanceof ApiError && error.fields.length > 0 ? (
        <ul>
          {error.fields.map((field) => (
            <li>
              <code>{field.field}</code>: {field.message}
            </li>
          ))}
        </ul>
      ) : null}
    </p>
  );
}

/** A status word, coloured by what it means (and readable without the colour). */
export function Status({ value }: { value: string }) {
  const tone = /FAIL|PARTIAL|ERROR|VIOLATED|NOT |OVERDUE|BROKEN|OPEN|NO RESTORE|DOWN/.test(value)
    ? 'bad'
    : /SUCCE|PASS|^OK$|PLANNED|^MET$|^UP$/.test(value)
      ? 'good'
      : 'busy';
  return <mark class={`status ${tone}`}>{value}</mark>;
}

export function Section({ title, children }: { title: string; children: ComponentChildren }) {
  return (
    <section>
      <h2>{title}</h2>
      {children}
    </section>
  );
}
