import { api, when } from '../api.ts';
import { Problem, Status, usePolled, Head } from '../components.tsx';

interface Entry {
  seq?: number;
  at: string;
  actor: { principal: string; role?: string };
  action: string;
  resource: string;
  details?: Record<string, unknown>;
}

/** The audit log, newest first, with the result of verifying its hash chain. */
export function Audit() {
  const entries = usePolled(() => api<{ items: Entry[] }>('/api/dr/audit?limit=100'), [], 10_000);
  const verified = usePolled(
    () =>
      api<{ ok: boolean; entries?: number; checked?: number; problems?: unknown[] }>('/api/dr/audit/verify'),
    [],
  );
  return (
    <>
      <h1>Audit log</h1>
      <Problem error={entries.error ?? verified.error} />
      {verified.data ? (
        <p data-testid="audit-chain">
          Hash chain: <Status value={verified.data.ok ? 'OK' : 'BROKEN'} />{' '}
          {verified.data.checked ?? verified.data.entries ?? ''} entries checked
        </p>
      ) : null}
      <div class="table-scroll">
        <table>
          <Head columns={['When', 'Who', 'Action', 'Resource', 'Details']} />
          <tbody>
            {(entries.data?.items ?? []).map((entry) => (
              <tr>
                <td>{when(entry.at)}</td>
                <td>
                  {entry.actor.principal}
                  {entry.actor.role ? ` (${entry.actor.role})` : ''}
                </td>
                <td>
                  <code>{entry.action}</code>
                </td>
                <td>{entry.resource}</td>
                <td>
                  <small>{entry.details ? JSON.stringify(entry.details) : ''}</small>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}
