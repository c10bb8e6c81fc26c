/**
 * The dashboard's only backend is the /api/dr API. Locally it answers on the page's own origin and takes the
 * API token (kept in sessionStorage: gone when the tab closes); on AWS it is the HTTP API, called with the
 * ID token of an OIDC sign-in (Cognito, or the issuer the stack was given).
 */
export interface DashboardConfig {
  /** Where the API answers ('' = this origin). */
  readonly apiBase: string;
  readonly auth:
    | { readonly kind: 'token' }
    | {
        readonly kind: 'oidc';
        readonly authority: string;
        readonly clientId: string;
        readonly scope?: string;
      };
}

export class ApiError extends Error {
  readonly status: number;
  readonly fields: readonly { field: string; message: string }[];
  constructor(status: number, message: string, fields: readonly { field: string; message: string }[] = []) {
    super(message);
    this.status = status;
    this.fields = fields;
  }
}

/** The API's error answer: `{error: {status, code, message, details: [{field, message}]}}`. */
interface ErrorBody {
  readonly error?: { message?: string; details?: { field: string; message: string }[] };
}

type TokenSource = () => Promise<string | undefined>;
let apiBase = '';
let tokenSource: TokenSource = () => Promise.resolve(sessionStorage.getItem(TOKEN_KEY) ?? undefined);
let onSignedOut: () => void = () => undefined;
export const TOKEN_KEY = 'dr-api-token';

export function configureApi(base: string, tokens: TokenSource, signedOut: () => void): void {
  apiBase = base.replace(/\/$/, '');
  tokenSource = tokens;
  onSignedOut = signedOut;
}

export async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const token = await tokenSource();
  const response = await fetch(`${apiBase}${path}`, {
    method: init.method ?? 'GET',
    headers: {
      accept: 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(init.body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
  });
  const text = await response.text();
  const body = text === '' ? undefined : (JSON.parse(text) as unknown);
  if (response.status === 401) onSignedOut();
  if (!response.ok) {
    const error = (body as ErrorBody | undefined)?.error;
    throw new ApiError(
      response.status,
      error?.message ?? `${response.status} ${response.statusText}`,
      Array.isArray(error?.details) ? error.details : [],
    );
  }
  return body as T;
}

/** A form field's text ('' when absent or a file). */
export function field(form: FormData, name: string): string {
  const value = form.get(name);
  return typeof value === 'string' ? value : '';
}

export const bytes = (value: number | undefined | null): string => {
  if (value === undefined || value === null) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let size = value;
  let unit = 0;
  while (size >= 1000 && unit < units.length - 1) {
    size /= 1000;
    unit++;
  }
  return `${size.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
};

export const when = (iso: string | undefined): string =>
  iso ? new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' }) : '–';

export const duration = (seconds: number | undefined | null): string => {
  if (seconds === undefined || seconds === null) return '–';
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
};
