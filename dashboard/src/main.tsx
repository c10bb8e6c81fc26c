import '@picocss/pico/css/pico.min.css';
import './style.css';
import { UserManager, WebStorageStateStore } from 'oidc-client-ts';
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, configureApi, field, TOKEN_KEY, type DashboardConfig } from './api.ts';
import { Audit } from './pages/audit.tsx';
import { Backups } from './pages/backups.tsx';
import { Configuration } from './pages/configuration.tsx';
import { Metrics } from './pages/metrics.tsx';
import { Overview } from './pages/overview.tsx';
import { Runs } from './pages/runs.tsx';

const PAGES = [
  ['overview', 'Overview'],
  ['metrics', 'Metrics'],
  ['backups', 'Backups'],
  ['runs', 'Restores and tests'],
  ['configuration', 'Configuration'],
  ['audit', 'Audit log'],
] as const;

function route(): { page: string; params: URLSearchParams } {
  const [path = '', search = ''] = location.hash.replace(/^#\/?/, '').split('?');
  return { page: PAGES.some(([id]) => id === path) ? path : 'overview', params: new URLSearchParams(search) };
}

function App({ config, oidc }: { config: DashboardConfig; oidc?: UserManager | undefined }) {
  const [signedIn, setSignedIn] = useState<boolean | undefined>(undefined);
  const [where, setWhere] = useState(route());
  useEffect(() => {
    const moved = () => setWhere(route());
    addEventListener('hashchange', moved);
    return () => removeEventListener('hashchange', moved);
  }, []);
  useEffect(() => {
    configureApi(
      config.apiBase,
      async () =>
        oidc
          ? ((await oidc.getUser())?.id_token ?? undefined)
          : (sessionStorage.getItem(TOKEN_KEY) ?? undefined),
      () => {
        sessionStorage.removeItem(TOKEN_KEY);
        setSignedIn(false);
      },
    );
    if (oidc) void oidc.getUser().then((user) => setSignedIn(user !== null && !user.expired));
    else setSignedIn(sessionStorage.getItem(TOKEN_KEY) !== null);
  }, []);
  if (signedIn === undefined) return <p aria-busy="true">Loading…</p>;
  if (!signedIn) return <SignIn oidc={oidc} done={() => setSignedIn(true)} />;
  const navigate = (hash: string) => {
    location.hash = hash;
  };
  return (
    <>
      <header class="container-fluid">
        <nav aria-label="Main">
          <ul>
            <li>
              <strong>DR Management</strong>
            </li>
          </ul>
          <ul>
            {PAGES.map(([id, label]) => (
              <li>
                <a href={`#/${id}`} aria-current={where.page === id ? 'page' : undefined}>
                  {label}
                </a>
              </li>
            ))}
            <li>
              <button
                type="button"
                class="secondary outline"
                onClick={() => {
                  sessionStorage.removeItem(TOKEN_KEY);
                  if (oidc) void oidc.signoutRedirect();
                  setSignedIn(false);
                }}
              >
                Sign out
              </button>
            </li>
          </ul>
        </nav>
      </header>
      <main class="container-fluid">
        {where.page === 'metrics' ? (
          <Metrics />
        ) : where.page === 'backups' ? (
          <Backups navigate={navigate} />
        ) : where.page === 'runs' ? (
          <Runs backupId={where.params.get('backup') ?? undefined} key={where.params.get('backup') ?? ''} />
        ) : where.page === 'configuration' ? (
          <Configuration />
        ) : where.page === 'audit' ? (
          <Audit />
        ) : (
          <Overview />
        )}
      </main>
    </>
  );
}

function SignIn({ oidc, done }: { oidc?: UserManager | undefined; done: () => void }) {
  const [error, setError] = useState<string | undefined>();
  if (oidc)
    return (
      <main class="container narrow">
        <h1>DR Management</h1>
        <button type="button" onClick={() => void oidc.signinRedirect()}>
          Sign in
        </button>
      </main>
    );
  return (
    <main class="container narrow">
      <h1>DR Management</h1>
      <form
        onSubmit={(event) => {
          event.preventDefault();
          const token = field(new FormData(event.currentTarget), 'token').trim();
          sessionStorage.setItem(TOKEN_KEY, token);
          api('/api/dr/health').then(
            () =>
              api('/api/dr/backups?limit=1').then(done, (failure: unknown) => {
                sessionStorage.removeItem(TOKEN_KEY);
                setError((failure as Error).message);
              }),
            (failure: unknown) => setError((failure as Error).message),
          );
        }}
      >
        <label>
          API token
          <input type="password" name="token" required autocomplete="off" aria-describedby="token-help" />
          <small id="token-help">
            The runtime's token (DR_API_TOKEN, or the file api-token in its data directory). Kept for this tab
            only.
          </small>
        </label>
        {error ? (
          <p role="alert" class="problem">
            {error}
          </p>
        ) : null}
        <button type="submit">Sign in</button>
      </form>
    </main>
  );
}

async function start(): Promise<void> {
  const config = (await (await fetch('./config.json')).json()) as DashboardConfig;
  let oidc: UserManager | undefined;
  if (config.auth.kind === 'oidc') {
    oidc = new UserManager({
      authority: config.auth.authority,
      client_id: config.auth.clientId,
      redirect_uri: `${location.origin}/`,
      post_logout_redirect_uri: `${location.origin}/`,
      response_type: 'code',
      scope: config.auth.scope ?? 'openid email',
      userStore: new WebStorageStateStore({ store: sessionStorage }),
    });
    if (new URLSearchParams(location.search).has('code')) {
      await oidc.signinRedirectCallback();
      history.replaceState(null, '', `${location.origin}/${location.hash}`);
    }
  }
  render(<App config={config} oidc={oidc} />, document.getElementById('app')!);
}

void start();
