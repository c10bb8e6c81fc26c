/**
 * Who may do what through the API. Three roles, each including the one below it:
 * - `viewer` reads everything the API shows (never a secret: no answer carries one);
 * - `operator` also runs things: backups, restores into STAGING, DR tests, downloads, schedules;
 * - `admin` also changes the DR config and the targets, and restores into PRODUCTION or over existing
 *   data (which also takes a `confirm` field naming the database: restore-service).
 * Where a caller's role comes from: the local runtime's tokens, JWT groups or scopes, IAM principal tags
 * (functions/api/http.ts). A caller with none is a viewer.
 */
export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type DrRole = (typeof ROLES)[number];

export function atLeast(role: DrRole, needed: DrRole): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

/** The highest role among names such as `dr:admin` or `dr-operator` (JWT groups, scopes, tag values). */
export function roleNamed(names: readonly string[]): DrRole | undefined {
  let found: DrRole | undefined;
  for (const name of names) {
    const match = /^(?:dr[:-])?(viewer|operator|admin)$/.exec(name.trim().toLowerCase());
    const role = match?.[1] as DrRole | undefined;
    if (role && (!found || atLeast(role, found))) found = role;
  }
  return found;
}
