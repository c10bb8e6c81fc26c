import type { TestPostgres } from './postgres.ts';

/**
 * A small Event Manager-like database: users, events, registrations, tickets and an audit log with jsonb,
 * with foreign keys, indexes, a sequence, a generated column, a table without a primary key, a view and a
 * trigger — the shapes a real application has. Deterministic: no random(), so checksums are stable.
 */
export async function createEventManager(pg: TestPostgres, database: string, scale = 1): Promise<void> {
  await pg.sql(
    database,
    `
    CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, created_at timestamptz NOT NULL);
    CREATE TABLE events (id bigserial PRIMARY KEY, title text NOT NULL, starts_at timestamptz NOT NULL, capacity int NOT NULL CHECK (capacity > 0),
      price_cents int NOT NULL, price_eur numeric GENERATED ALWAYS AS (price_cents / 100.0) STORED);
    CREATE TABLE registrations (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id), event_id bigint NOT NULL REFERENCES events(id),
      status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL, UNIQUE (user_id, event_id));
    CREATE INDEX registrations_event_idx ON registrations (event_id, status);
    CREATE TABLE tickets (registration_id bigint NOT NULL REFERENCES registrations(id), code text NOT NULL, PRIMARY KEY (registration_id, code));
    CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL, actor text, payload jsonb NOT NULL);
    CREATE TABLE page_views (path text, viewed_at timestamptz);
    CREATE SEQUENCE invoice_number START 1000;
    CREATE VIEW upcoming AS SELECT id, title FROM events WHERE starts_at > '2026-01-01';
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.actor := coalesce(NEW.actor, 'system'); RETURN NEW; END $$;
    CREATE TRIGGER audit_actor BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION touch();

    INSERT INTO users (email, name, created_at)
      SELECT 'user' || g || '@example.com', 'User ' || g || E' with\\ttab and ''quote''', timestamptz '2025-01-01' + g * interval '1 minute'
      FROM generate_series(1, ${2000 * scale}) g;
    INSERT INTO events (title, starts_at, capacity, price_cents)
      SELECT 'Event ' || g, timestamptz '2026-01-01' + g * interval '1 day', 50 + g % 100, g * 100 FROM generate_series(1, ${100 * scale}) g;
    INSERT INTO registrations (user_id, event_id, status, created_at)
      SELECT 1 + (g - 1) % ${2000 * scale}, 1 + ((g - 1) / ${2000 * scale} + (g - 1) * 13) % ${100 * scale}, CASE WHEN g % 3 = 0 THEN 'confirmed' ELSE 'pending' END, timestamptz '2025-06-01' + g * interval '1 second'
      FROM generate_series(1, ${6000 * scale}) g;
    INSERT INTO tickets SELECT id, 'T-' || id || '-' || md5(id::text) FROM registrations WHERE status = 'confirmed';
    INSERT INTO audit_log (at, actor, payload)
      SELECT timestamptz '2025-06-01' + g * interval '1 second', CASE WHEN g % 5 = 0 THEN NULL ELSE 'user' || g END,
             jsonb_build_object('action', 'register', 'n', g, 'tags', jsonb_build_array('a', g % 7), 'note', repeat('x', g % 50))
      FROM generate_series(1, ${8000 * scale}) g;
    INSERT INTO page_views SELECT '/events/' || g % 100, timestamptz '2025-06-01' + g * interval '1 second' FROM generate_series(1, ${1000 * scale}) g;
    INSERT INTO page_views VALUES (NULL, NULL), (E'line\\nbreak', NULL);
    SELECT setval('invoice_number', 1234);
    ANALYZE;
  `,
  );
}

/** One checksum per table over its full contents in a stable order: equal databases give equal maps. */
export async function tableChecksums(pg: TestPostgres, database: string): Promise<Record<string, string>> {
  const tables = await pg.sql(
    database,
    `SELECT schemaname || '.' || tablename AS name FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
  );
  const sums: Record<string, string> = {};
  for (const { name } of tables.rows as { name: string }[]) {
    const result = await pg.sql(
      database,
      `SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS sum FROM ${name} t`,
    );
    const row = result.rows[0] as { n: string; sum: string };
    sums[name] = `${row.n}:${row.sum}`;
  }
  const sequence = await pg.sql(database, `SELECT last_value FROM invoice_number`).catch(() => undefined);
  if (sequence)
    sums['sequence invoice_number'] = String((sequence.rows[0] as { last_value: string }).last_value);
  return sums;
}
