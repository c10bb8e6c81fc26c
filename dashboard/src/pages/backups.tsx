import { useState } from 'preact/hooks';
import { api, bytes, duration, when, type ApiError } from '../api.ts';
import { ProgressBar, Problem, Status, usePolled, type RunProgress, Head } from '../components.tsx';

export interface Backup {
  id: string;
  scheduleId: string;
  scheduleName: string;
  type: string;
  status: string;
  startedAt: string;
  finishedAt?: string;
  restorePoint?: string;
  targets: { targetId: string; name: string; status: string; bytesWritten?: number }[];
  sizes?: { sourceBytes: number; storedBytes: number; dedupRatio?: number };
  verifiedAt?: string;
  review?: string;
  progress?: RunProgress;
  error?: string;
}
interface Artifact {
  artifact: string;
  filename: string;
  url: string;
  expiresAt: string;
}

/** The catalog: filters, targets, sizes, deduplication, verification; downloads; "restore this". */
export function Backups({ navigate }: { navigate: (hash: string) => void }) {
  const [filter, setFilter] = useState({ type: '', status: '', scheduleId: '' });
  const query = new URLSearchParams(
    Object.entries({ ...filter, limit: '50' }).filter(([, value]) => value !== ''),
  ).toString();
  const list = usePolled(() => api<{ items: Backup[] }>(`/api/dr/backups?${query}`), [query], 3_000);
  const [links, setLinks] = useState<{ id: string; artifacts?: Artifact[]; message?: string } | undefined>();
  const [error, setError] = useState<Error | undefined>();

  const download = async (id: string) => {
    setError(undefined);
    try {
      const answer = await api<{ status: string; artifacts?: Artifact[]; message?: string }>(
        `/api/dr/backups/${id}/download`,
      );
      setLinks({
        id,
        ...(answer.artifacts ? { artifacts: answer.artifacts } : {}),
        ...(answer.message ? { message: answer.message } : {}),
      });
    } catch (failure) {
      setError(failure as ApiError);
    }
  };

  return (
    <>
      <h1>Backups</h1>
      <form class="grid filters" aria-label="Filter backups" onSubmit={(event) => event.preventDefault()}>
        <label>
          Type
          <select
            value={filter.type}
            onChange={(event) => setFilter({ ...filter, type: event.currentTarget.value })}
          >
            <option value="">any</option>
            <option>FULL</option>
            <option>INCREMENTAL</option>
            <option>SCHEMA</option>
          </select>
        </label>
        <label>
          Status
          <select
            value={filter.status}
            onChange={(event) => setFilter({ ...filter, status: event.currentTarget.value })}
          >
            <option value="">any</option>
            <option>RUNNING</option>
            <option>SUCCESS</option>
            <option>PARTIAL</option>
            <option>FAILED</option>
          </select>
        </label>
        <label>
          Schedule id
          <input
            value={filter.scheduleId}
            onChange={(event) => setFilter({ ...filter, scheduleId: event.currentTarget.value.trim() })}
          />
        </label>
      </form>
      <Problem error={list.error ?? error} />
      {links ? (
        <article data-testid="download-links">
          <header>Downloads of {links.id}</header>
          {links.message ? <p>{links.message}</p> : null}
          <ul>
            {(links.artifacts ?? []).map((artifact) => (
              <li>
                <a href={artifact.url} download={artifact.filename}>
                  {artifact.filename}
                </a>{' '}
                ({artifact.artifact}, link valid until {when(artifact.expiresAt)})
              </li>
            ))}
          </ul>
        </article>
      ) : null}
      <div class="table-scroll">
        <table data-testid="catalog">
          <Head
            columns={[
              'Backup',
              'Schedule',
              'Type',
              'Status',
              'Restore point',
              'Duration',
              'Targets',
              'Read / stored',
              'Dedup',
              'Verified',
              'Actions',
            ]}
          />
          <tbody>
            {(list.data?.items ?? []).map((backup) => (
              <tr data-testid={`backup-${backup.id}`}>
                <td>
                  <code>{backup.id}</code>
                </td>
                <td>{backup.scheduleName}</td>
                <td>{backup.type}</td>
                <td>
                  <Status value={backup.status} />
                  {backup.status === 'RUNNING' ? (
                    <ProgressBar progress={backup.progress} label={`backup ${backup.id}`} />
                  ) : null}
                  {backup.review ? <small> review: {backup.review}</small> : null}
                  {backup.error ? <small> {backup.error}</small> : null}
                </td>
                <td>{when(backup.restorePoint)}</td>
                <td>
                  {backup.finishedAt
                    ? duration((Date.parse(backup.finishedAt) - Date.parse(backup.startedAt)) / 1000)
                    : '–'}
                </td>
                <td>
                  {backup.targets.map((target) => (
                    <div>
                      {target.name}: <Status value={target.status} /> {bytes(target.bytesWritten)}
                    </div>
                  ))}
                </td>
                <td>
                  {bytes(backup.sizes?.sourceBytes)} / {bytes(backup.sizes?.storedBytes)}
                </td>
                <td>{backup.sizes?.dedupRatio ? `${backup.sizes.dedupRatio}×` : '–'}</td>
                <td>{backup.verifiedAt ? when(backup.verifiedAt) : 'not yet'}</td>
                <td>
                  {backup.status === 'SUCCESS' || backup.status === 'PARTIAL' ? (
                    <div class="actions">
                      <button type="button" class="secondary" onClick={() => void download(backup.id)}>
                        Download
                      </button>
                      <button type="button" onClick={() => navigate(`#/runs?backup=${backup.id}`)}>
                        Restore this
                      </button>
                    </div>
                  ) : null}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}
