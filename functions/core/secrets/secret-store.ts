/**
 * Where secret fields (target credentials, the database password) live: Secrets Manager on AWS, an
 * encrypted directory in local mode. The table only ever holds the secret's name.
 *
 * Contract for implementations:
 * - one secret holds a small map of field name to value, written and read whole;
 * - `put` replaces the whole map and is durable when it resolves;
 * - `get` of an unknown name resolves to `undefined`;
 * - `delete` of an unknown name succeeds;
 * - errors never include a secret value (names are fine: they are ours and say nothing).
 */
export interface SecretStore {
  put(name: string, values: Readonly<Record<string, string>>): Promise<void>;
  get(name: string): Promise<Record<string, string> | undefined>;
  delete(name: string): Promise<void>;
}

/** Secret names are built by us from validated ids only: `<prefix>/<kind>/<id>`. */
export function secretName(prefix: string, kind: 'target' | 'config', id: string): string {
  return `${prefix}/${kind}/${id}`;
}
