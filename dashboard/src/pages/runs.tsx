import { useState } from 'preact/hooks';
import { api, bytes, duration, when } from '../api.ts';
import { ProgressBar, Problem, Status, usePolled, type RunProgress } from '../components.tsx';

interface Step {
  task: string;
  status: string;
  startedAt: string;
  seconds?: number;
  error?: string;
}
interface Restore {
  id: string;
  status: string;
  startedAt: string;
  finishedAt?: string;
  request: { backupId?: string; dryRun: boolean; destination: { environment: string; database?: string } };
  plan?: { backupId?: string; restorePoint: string; chain: string[]; bytes: number; type?: string };
  result?: { database?: { tables: number; rows: number; bytes: number }; seconds?: number };
  progress?: RunProgress;
  steps?: Step[];
  error?: string;
}
interface Test {
  id: string;
  testType: string;
  targetEnvironment: string;
  status: string;
  startedAt: string;
  finishedAt?: string;
  results?: { success: boolean; actualRTO?: number; actualRPO?: number; issues: string[] };
  progress?: RunProgress;
  steps?: Step[];
}

const TEST_TYPES = ['BACKUP_VERIFICATION', 'RESTORE_TEST', 'RECOVERY_TIME_TEST', 'FAILOVER_TEST'];

/** Start a restore (a dry run first, then an explicit confirmation) or a DR test; follow them step by step. */
export function Runs({ backupId }: { backupId?: string | undefined }) {
  const restores = usePolled(() => api<{ items: Restore[] }>('/api/dr/restore?limit=20'), [], 2_000);
  const tests = usePolled(() => api<{ items: Test[] }>('/api/dr/test?limit=20'), [], 2_000);
  return (
    <>
      <h1>Restores and DR tests</h1>
      <div class="grid two">
        <RestoreForm backupId={backupId} started={restores.reload} />
        <TestForm started={tests.reload} />
      </div>
      <h2>Restores</h2>
      <Problem error={restores.error} />
      {(restores.data?.items ?? []).map((restore) => (
        <article data-testid={`restore-${restore.id}`}>
          <header>
            <Status value={restore.status} /> <code>{restore.id}</code> from{' '}
            <code>{restore.plan?.backupId ?? restore.request.backupId ?? '–'}</code> into{' '}
            {restore.request.destination.environment}
            {restore.request.destination.database ? ` / ${restore.request.destination.database}` : ''}
            {restore.request.dryRun ? ' (dry run)' : ''} · {when(restore.startedAt)}
          </header>
          {restore.status === 'RUNNING' ? (
            <ProgressBar progress={restore.progress} label={`restore ${restore.id}`} />
          ) : null}
          {restore.plan ? (
            <p>
              Plan: restore point {when(restore.plan.restorePoint)}, {restore.plan.type ?? ''} backup of{' '}
              {bytes(restore.plan.bytes)}, chain of {restore.plan.chain.length}
            </p>
          ) : null}
          {restore.result?.database ? (
            <p>
              Restored {restore.result.database.tables} tables, {restore.result.database.rows} rows in{' '}
              {duration(restore.result.seconds)}
            </p>
          ) : null}
          {restore.error ? <p class="problem">{restore.error}</p> : null}
          <Steps steps={restore.steps} />
        </article>
      ))}
      <h2>DR tests</h2>
      <Problem error={tests.error} />
      {(tests.data?.items ?? []).map((test) => (
        <article data-testid={`test-${test.id}`}>
          <header>
            <Status value={test.status} /> {test.testType} on {test.targetEnvironment} ·{' '}
            <code>{test.id}</code> · {when(test.startedAt)}
          </header>
          {test.status === 'RUNNING' ? (
            <ProgressBar progress={test.progress} label={`test ${test.id}`} />
          ) : null}
          {test.results ? (
            <p>
              {test.results.actualRTO === undefined ? '' : `RTO ${test.results.actualRTO.toFixed(3)} h · `}
              {test.results.actualRPO === undefined ? '' : `RPO ${test.results.actualRPO.toFixed(3)} h · `}
              {test.results.issues.length === 0 ? 'no issues' : test.results.issues.join('; ')}
            </p>
          ) : null}
          <Steps steps={test.steps} />
        </article>
      ))}
    </>
  );
}

function Steps({ steps }: { steps?: Step[] | undefined }) {
  if (!steps || steps.length === 0) return null;
  return (
    <details>
      <summary>Workflow: {steps.length} steps</summary>
      <ol class="steps">
        {steps.map((step) => (
          <li>
            <Status value={step.status} /> <code>{step.task}</code> {when(step.startedAt)}
            {step.seconds === undefined ? '' : ` · ${duration(step.seconds)}`}
            {step.error ? <small class="problem"> {step.error}</small> : null}
          </li>
        ))}
      </ol>
    </details>
  );
}

function RestoreForm({ backupId, started }: { backupId?: string | undefined; started: () => void }) {
  const [form, setForm] = useState({
    backupId: backupId ?? '',
    environment: 'STAGING',
    database: '',
    database_: true,
    files: false,
    overwrite: false,
  });
  const [plan, setPlan] = useState<Restore | undefined>();
  const [confirm, setConfirm] = useState('');
  const [error, setError] = useState<Error | undefined>();
  const [done, setDone] = useState<string | undefined>();
  const request = (dryRun: boolean) => ({
    backupId: form.backupId,
    scope: { database: form.database_, files: form.files },
    destination: {
      environment: form.environment,
      ...(form.database ? { database: form.database } : {}),
    },
    overwrite: form.overwrite,
    dryRun,
    ...(dryRun || confirm === '' ? {} : { confirm }),
  });
  const destination = form.database || `the ${form.environment} database`;
  const submit = async (dryRun: boolean) => {
    setError(undefined);
    setDone(undefined);
    try {
      const answer = await api<{ restoreId: string; restore: Restore }>('/api/dr/restore', {
        method: 'POST',
        body: request(dryRun),
      });
      if (dryRun) {
        // The plan is made by the workflow's first steps: wait for it
        for (let i = 0; i < 60; i++) {
          const current = await api<Restore>(`/api/dr/restore/${answer.restoreId}`);
          if (current.status !== 'RUNNING') {
            setPlan(current);
            break;
          }
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
      } else {
        setDone(answer.restoreId);
        setPlan(undefined);
        setConfirm('');
      }
      started();
    } catch (failure) {
      setError(failure as Error);
    }
  };
  const needsConfirm = form.environment === 'PRODUCTION' || form.overwrite;
  return (
    <form
      aria-labelledby="restore-title"
      onSubmit={(event) => {
        event.preventDefault();
        void submit(true);
      }}
    >
      <h2 id="restore-title">Restore a backup</h2>
      <label>
        Backup id
        <input
          name="backupId"
          required
          value={form.backupId}
          onInput={(event) => {
            setForm({ ...form, backupId: event.currentTarget.value.trim() });
            setPlan(undefined);
          }}
        />
      </label>
      <div class="grid">
        <label>
          Destination
          <select
            name="environment"
            value={form.environment}
            onChange={(event) => {
              setForm({ ...form, environment: event.currentTarget.value });
              setPlan(undefined);
            }}
          >
            <option>STAGING</option>
            <option>PRODUCTION</option>
          </select>
        </label>
        <label>
          Database (empty: the environment's)
          <input
            name="database"
            value={form.database}
            onInput={(event) => {
              setForm({ ...form, database: event.currentTarget.value.trim() });
              setPlan(undefined);
            }}
          />
        </label>
      </div>
      <fieldset>
        <legend>What</legend>
        <label>
          <input
            type="checkbox"
            checked={form.database_}
            onChange={(event) => setForm({ ...form, database_: event.currentTarget.checked })}
          />
          Database
        </label>
        <label>
          <input
            type="checkbox"
            checked={form.files}
            onChange={(event) => setForm({ ...form, files: event.currentTarget.checked })}
          />
          Files
        </label>
        <label>
          <input
            type="checkbox"
            checked={form.overwrite}
            onChange={(event) => setForm({ ...form, overwrite: event.currentTarget.checked })}
          />
          Overwrite what exists
        </label>
      </fieldset>
      <Problem error={error} />
      <button type="submit">Dry run</button>
      {plan ? (
        <div data-testid="restore-plan">
          <p>
            <Status value={plan.status} /> Dry run: backup <code>{plan.plan?.backupId ?? '–'}</code>, restore
            point {when(plan.plan?.restorePoint)}, {bytes(plan.plan?.bytes)}
            {plan.error ? ` — ${plan.error}` : ''}
          </p>
          {plan.status === 'PLANNED' ? (
            <>
              {needsConfirm ? (
                <label>
                  Type the name of the database this overwrites to confirm
                  <input
                    name="confirm"
                    value={confirm}
                    onInput={(event) => setConfirm(event.currentTarget.value)}
                  />
                </label>
              ) : null}
              <button
                type="button"
                class="contrast"
                disabled={needsConfirm && confirm === ''}
                onClick={() => void submit(false)}
              >
                Restore into {destination}
              </button>
            </>
          ) : null}
        </div>
      ) : null}
      {done ? (
        <p role="status">
          Restore <code>{done}</code> started.
        </p>
      ) : null}
    </form>
  );
}

function TestForm({ started }: { started: () => void }) {
  const [testType, setTestType] = useState('RESTORE_TEST');
  const [environment, setEnvironment] = useState('STAGING');
  const [error, setError] = useState<Error | undefined>();
  const [done, setDone] = useState<string | undefined>();
  return (
    <form
      aria-labelledby="test-title"
      onSubmit={(event) => {
        event.preventDefault();
        setError(undefined);
        api<{ testId: string }>('/api/dr/test', {
          method: 'POST',
          body: { testType, targetEnvironment: environment },
        }).then(
          (answer) => {
            setDone(answer.testId);
            started();
          },
          (failure: unknown) => setError(failure as Error),
        );
      }}
    >
      <h2 id="test-title">Run a DR test</h2>
      <label>
        Test
        <select name="testType" value={testType} onChange={(event) => setTestType(event.currentTarget.value)}>
          {TEST_TYPES.map((type) => (
            <option>{type}</option>
          ))}
        </select>
      </label>
      <label>
        Environment
        <select
          name="targetEnvironment"
          value={environment}
          onChange={(event) => setEnvironment(event.currentTarget.value)}
        >
          <option>STAGING</option>
          <option>PRODUCTION</option>
        </select>
      </label>
      <Problem error={error} />
      <button type="submit">Start test</button>
      {done ? (
        <p role="status">
          Test <code>{done}</code> started.
        </p>
      ) : null}
    </form>
  );
}
