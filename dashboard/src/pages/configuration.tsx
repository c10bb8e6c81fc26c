import { useState } from 'preact/hooks';
import { api, bytes, field, when } from '../api.ts';
import { Problem, Status, usePolled, Head } from '../components.tsx';

interface Config {
  source?: { database?: { url?: string; passwordSet?: boolean } };
  rto: number;
  rpo: number;
  backupRetentionDays: number;
  testFrequencyDays: number;
  autoFailover: boolean;
  notificationEmails?: string[];
  version: number;
}
interface Target {
  id: string;
  name: string;
  targetType: string;
  config: Record<string, unknown>;
}
interface Schedule {
  id: string;
  name: string;
  scheduleType: string;
  cronExpression: string;
  timezone: string;
  active: boolean;
  targets: string[];
  nextRuns: string[];
  warnings: string[];
}

/** The guide's ranges: the form refuses what the API would (the API checks again and says which field). */
const RANGES = {
  rpo: { min: 0.25, max: 24, step: 0.25, unit: 'hours' },
  rto: { min: 0.5, max: 72, step: 0.5, unit: 'hours' },
  backupRetentionDays: { min: 7, max: 365, step: 1, unit: 'days' },
  testFrequencyDays: { min: 30, max: 365, step: 1, unit: 'days' },
} as const;

const TEMPLATES: Record<string, object> = {
  LOCAL: { path: '/var/backups/dr' },
  S3: { bucket: 'my-dr-backups', region: 'eu-west-1' },
  AZURE: { accountName: 'myaccount', containerName: 'dr-backups', accountKey: '' },
  GCP: { bucket: 'my-dr-backups', projectId: 'my-project', credentials: '' },
  FTP: { host: 'ftp.example.com', port: 21, username: 'dr', password: '', directory: '/dr' },
  SFTP: { host: 'sftp.example.com', port: 22, username: 'dr', password: '', directory: '/dr' },
};

export function Configuration() {
  // One list for both sections: a target added here is offered to a new schedule at once
  const targets = usePolled(() => api<{ items: Target[] }>('/api/dr/targets'), []);
  return (
    <>
      <h1>Configuration</h1>
      <ConfigForm />
      <SourceForm />
      <Targets targets={targets} />
      <Schedules targets={targets.data?.items ?? []} />
    </>
  );
}

/** The source database: its URL without the password, and the password write-only (never shown again). */
function SourceForm() {
  const config = usePolled(() => api<Config>('/api/dr/config'), []);
  const [error, setError] = useState<Error | undefined>();
  const [saved, setSaved] = useState(false);
  const database = config.data?.source?.database;
  if (!config.data) return null;
  return (
    <section>
      <h2>Source database</h2>
      <form
        key={config.data.version}
        aria-label="Source database"
        onSubmit={(event) => {
          event.preventDefault();
          const form = new FormData(event.currentTarget);
          const password = field(form, 'password');
          setError(undefined);
          setSaved(false);
          api('/api/dr/config', {
            method: 'PATCH',
            body: { source: { database: { url: field(form, 'url'), ...(password ? { password } : {}) } } },
          }).then(
            () => {
              setSaved(true);
              config.reload();
            },
            (failure: unknown) => setError(failure as Error),
          );
        }}
      >
        <div class="grid">
          <label>
            URL (postgres://user@host:port/database)
            <input name="url" required defaultValue={database?.url ?? ''} />
          </label>
          <label>
            Password {database?.passwordSet ? '(set: leave empty to keep it)' : '(not set)'}
            <input name="password" type="password" autocomplete="new-password" />
          </label>
        </div>
        <Problem error={error} />
        <button type="submit">Save source</button>
        {saved ? <p role="status">Source saved.</p> : null}
      </form>
    </section>
  );
}

type Polled<T> = ReturnType<typeof usePolled<T>>;

function ConfigForm() {
  const config = usePolled(() => api<Config>('/api/dr/config'), []);
  const [error, setError] = useState<Error | undefined>();
  const [saved, setSaved] = useState(false);
  // The form appears once the stored values are in (what is typed before would be replaced by them)
  if (!config.data && !config.error) return <p aria-busy="true">Loading the configuration…</p>;
  return (
    <section>
      <h2>Objectives and policy</h2>
      {config.error && !config.data ? <p>No DR config yet: save one below.</p> : null}
      <form
        key={config.data?.version ?? 0}
        aria-label="DR configuration"
        onSubmit={(event) => {
          event.preventDefault();
          const form = new FormData(event.currentTarget);
          const body = {
            rpo: Number(field(form, 'rpo')),
            rto: Number(field(form, 'rto')),
            backupRetentionDays: Number(field(form, 'backupRetentionDays')),
            testFrequencyDays: Number(field(form, 'testFrequencyDays')),
            autoFailover: form.get('autoFailover') === 'on',
            notificationEmails: field(form, 'notificationEmails')
              .split(/[\s,]+/)
              .filter((value) => value !== ''),
          };
          setError(undefined);
          setSaved(false);
          (config.data
            ? api('/api/dr/config', { method: 'PATCH', body })
            : api('/api/dr/config', { method: 'POST', body })
          ).then(
            () => {
              setSaved(true);
              config.reload();
            },
            (failure: unknown) => setError(failure as Error),
          );
        }}
      >
        <div class="grid">
          {(Object.keys(RANGES) as (keyof typeof RANGES)[]).map((field) => (
            <label>
              {field} ({RANGES[field].unit}, {RANGES[field].min}–{RANGES[field].max})
              <input
                type="number"
                name={field}
                required
                min={RANGES[field].min}
                max={RANGES[field].max}
                step={RANGES[field].step}
                defaultValue={String(
                  config.data?.[field] ??
                    { rpo: 1, rto: 4, backupRetentionDays: 30, testFrequencyDays: 90 }[field],
                )}
              />
            </label>
          ))}
        </div>
        <label>
          Notification emails (comma separated)
          <input
            name="notificationEmails"
            defaultValue={(config.data?.notificationEmails ?? []).join(', ')}
          />
        </label>
        <label>
          <input
            type="checkbox"
            role="switch"
            name="autoFailover"
            defaultChecked={config.data?.autoFailover ?? false}
          />
          Automatic failover
        </label>
        <Problem error={error} />
        <button type="submit">Save configuration</button>
        {saved ? <p role="status">Saved.</p> : null}
      </form>
    </section>
  );
}

function Targets({ targets }: { targets: Polled<{ items: Target[] }> }) {
  const [type, setType] = useState('LOCAL');
  const [text, setText] = useState(JSON.stringify(TEMPLATES.LOCAL, null, 2));
  const [error, setError] = useState<Error | undefined>();
  const [checks, setChecks] = useState<Record<string, string>>({});
  const check = async (id: string) => {
    setChecks({ ...checks, [id]: 'checking…' });
    try {
      const [probe, usage] = await Promise.all([
        api<{ ok: boolean; error?: { message: string } }>(`/api/dr/targets/${id}/check`, { method: 'POST' }),
        api<{ ok: boolean; bytesStored?: number; bytesFree?: number }>(`/api/dr/targets/${id}/usage`),
      ]);
      setChecks({
        ...checks,
        [id]: probe.ok
          ? `reachable · ${bytes(usage.bytesStored)} stored${usage.bytesFree === undefined ? '' : ` · ${bytes(usage.bytesFree)} free`}`
          : `not reachable: ${probe.error?.message ?? 'unknown'}`,
      });
    } catch (failure) {
      setChecks({ ...checks, [id]: (failure as Error).message });
    }
  };
  return (
    <section>
      <h2>Targets</h2>
      <Problem error={targets.error} />
      <table data-testid="targets">
        <Head columns={['Name', 'Type', 'Where', 'Live check']} />
        <tbody>
          {(targets.data?.items ?? []).map((target) => (
            <tr>
              <td>
                {target.name} <code>{target.id}</code>
              </td>
              <td>{target.targetType}</td>
              <td>
                <code>
                  {[
                    target.config.path,
                    target.config.bucket,
                    target.config.host,
                    target.config.containerName,
                  ].find((value): value is string => typeof value === 'string') ?? ''}
                </code>
              </td>
              <td>
                <button type="button" class="secondary" onClick={() => void check(target.id)}>
                  Check {target.name}
                </button>{' '}
                <span data-testid={`check-${target.id}`}>{checks[target.id] ?? ''}</span>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <form
        aria-label="Add a target"
        onSubmit={(event) => {
          event.preventDefault();
          const form = new FormData(event.currentTarget);
          setError(undefined);
          let config: unknown;
          try {
            config = JSON.parse(text);
          } catch {
            setError(new Error('config: is not JSON'));
            return;
          }
          api('/api/dr/targets', {
            method: 'POST',
            body: { name: field(form, 'name'), targetType: type, config },
          }).then(
            () => targets.reload(),
            (failure: unknown) => setError(failure as Error),
          );
        }}
      >
        <h3>Add a target</h3>
        <div class="grid">
          <label>
            Name
            <input name="name" required />
          </label>
          <label>
            Type
            <select
              name="targetType"
              value={type}
              onChange={(event) => {
                setType(event.currentTarget.value);
                setText(JSON.stringify(TEMPLATES[event.currentTarget.value], null, 2));
              }}
            >
              {Object.keys(TEMPLATES).map((name) => (
                <option>{name}</option>
              ))}
            </select>
          </label>
        </div>
        <label>
          Settings (JSON; secrets are stored write-only and never shown again)
          <textarea
            name="config"
            rows={5}
            value={text}
            onInput={(event) => setText(event.currentTarget.value)}
          />
        </label>
        <Problem error={error} />
        <button type="submit">Add target</button>
      </form>
    </section>
  );
}

function Schedules({ targets }: { targets: readonly Target[] }) {
  const schedules = usePolled(() => api<{ items: Schedule[] }>('/api/dr/schedules'), []);
  const [error, setError] = useState<Error | undefined>();
  const [ran, setRan] = useState<string | undefined>();
  return (
    <section>
      <h2>Schedules</h2>
      <Problem error={schedules.error} />
      <table data-testid="schedules">
        <Head columns={['Name', 'Type', 'Cron', 'Next runs', 'Targets', 'Actions']} />
        <tbody>
          {(schedules.data?.items ?? []).map((schedule) => (
            <tr>
              <td>
                {schedule.name} <code>{schedule.id}</code> {schedule.active ? '' : <Status value="PAUSED" />}
                {schedule.warnings.map((warning) => (
                  <small class="problem"> {warning}</small>
                ))}
              </td>
              <td>{schedule.scheduleType}</td>
              <td>
                <code>{schedule.cronExpression}</code> ({schedule.timezone})
              </td>
              <td>
                <ul class="compact">
                  {schedule.nextRuns.slice(0, 3).map((at) => (
                    <li>{when(at)}</li>
                  ))}
                </ul>
              </td>
              <td>{schedule.targets.join(', ')}</td>
              <td>
                <button
                  type="button"
                  onClick={() => {
                    api<{ id: string }>(`/api/dr/schedules/${schedule.id}/execute`, { method: 'POST' }).then(
                      (answer) => setRan(answer.id),
                      (failure: unknown) => setError(failure as Error),
                    );
                  }}
                >
                  Run {schedule.name} now
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {ran ? (
        <p role="status">
          Backup <code>{ran}</code> started: see Overview or Backups for its progress.
        </p>
      ) : null}
      <form
        aria-label="Add a schedule"
        onSubmit={(event) => {
          event.preventDefault();
          const form = new FormData(event.currentTarget);
          setError(undefined);
          api('/api/dr/schedules', {
            method: 'POST',
            body: {
              name: field(form, 'name'),
              scheduleType: field(form, 'scheduleType'),
              cronExpression: field(form, 'cronExpression'),
              timezone: field(form, 'timezone') || 'UTC',
              targets: form.getAll('targets').filter((value): value is string => typeof value === 'string'),
            },
          }).then(
            () => schedules.reload(),
            (failure: unknown) => setError(failure as Error),
          );
        }}
      >
        <h3>Add a schedule</h3>
        <div class="grid">
          <label>
            Name
            <input name="name" required />
          </label>
          <label>
            Type
            <select name="scheduleType">
              <option>FULL</option>
              <option>INCREMENTAL</option>
              <option>SCHEMA</option>
            </select>
          </label>
          <label>
            Cron (minute hour day month weekday)
            <input name="cronExpression" required defaultValue="0 2 * * *" />
          </label>
          <label>
            Time zone
            <input name="timezone" defaultValue="UTC" />
          </label>
        </div>
        <fieldset>
          <legend>Targets</legend>
          {targets.map((target) => (
            <label>
              <input type="checkbox" name="targets" value={target.id} />
              {target.name}
            </label>
          ))}
        </fieldset>
        <Problem error={error} />
        <button type="submit">Add schedule</button>
      </form>
    </section>
  );
}
