import type pg from 'pg';

/**
 * An Event Manager–like database at a scale factor (scale 1 ≈ 2 GB on disk): users, events, registrations,
 * tickets and an audit log with jsonb, with indexes and foreign keys. Generated server-side with
 * generate_series, deterministic (hashes of the row number stand in for randomness).
 */
export async function generate(client: pg.Client, scale: number): Promise<void> {
  const n = (count: number) => Math.max(10, Math.round(count * scale));
  const users = n(1_000_000);
  const events = n(20_000);
  const registrations = n(7_000_000);
  const audit = n(2_500_000);
  await client.query(`
    CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, locale text NOT NULL, created_at timestamptz NOT NULL);
    CREATE TABLE events (id bigserial PRIMARY KEY, title text NOT NULL, venue text NOT NULL, starts_at timestamptz NOT NULL, capacity int NOT NULL, price_cents int NOT NULL);
    CREATE TABLE registrations (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id), event_id bigint NOT NULL REFERENCES events(id),
      status text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
    CREATE TABLE tickets (id bigserial PRIMARY KEY, registration_id bigint NOT NULL REFERENCES registrations(id), code text NOT NULL UNIQUE, seat text);
    CREATE TABLE audit_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL, actor_id bigint, action text NOT NULL, payload jsonb NOT NULL);
  `);
  await client.query(`INSERT INTO users (email, name, locale, created_at)
    SELECT 'user' || g || '@example.com', 'User ' || substr(md5(g::text), 1, 12), (ARRAY['en','fr','de','es'])[1 + g % 4], timestamptz '2023-01-01' + g * interval '30 seconds'
    FROM generate_series(1::bigint, ${users}) g`);
  await client.query(`INSERT INTO events (title, venue, starts_at, capacity, price_cents)
    SELECT 'Event ' || g || ' ' || substr(md5(g::text), 1, 20), 'Hall ' || g % 50, timestamptz '2024-01-01' + g * interval '1 hour', 50 + g % 500, 500 + (g * 37) % 20000
    FROM generate_series(1, ${events}) g`);
  await client.query(`INSERT INTO registrations (user_id, event_id, status, created_at, updated_at)
    SELECT 1 + (g * 7919) % ${users}, 1 + (g * 104729) % ${events}, (ARRAY['pending','confirmed','cancelled','attended'])[1 + g % 4],
           timestamptz '2024-01-01' + g * interval '4 seconds', timestamptz '2024-01-01' + g * interval '4 seconds'
    FROM generate_series(1::bigint, ${registrations}) g`);
  await client.query(`INSERT INTO tickets (registration_id, code, seat)
    SELECT id, 'T' || id || '-' || substr(md5(id::text), 1, 16), chr(65 + id::int % 26) || (id % 300) FROM registrations WHERE status IN ('confirmed', 'attended')`);
  await client.query(`INSERT INTO audit_log (at, actor_id, action, payload)
    SELECT timestamptz '2024-01-01' + g * interval '10 seconds', 1 + g % ${users}, (ARRAY['login','register','cancel','update_profile','checkin'])[1 + g % 5],
           jsonb_build_object('ip', '10.' || g % 256 || '.' || (g / 256) % 256 || '.' || g % 7, 'agent', 'Mozilla/5.0 ' || substr(md5(g::text), 1, 24), 'event', 1 + g % ${events}, 'ok', g % 11 <> 0)
    FROM generate_series(1::bigint, ${audit}) g`);
  await client.query(`
    CREATE INDEX registrations_user_idx ON registrations (user_id);
    CREATE INDEX registrations_event_idx ON registrations (event_id, status);
    CREATE INDEX audit_log_at_idx ON audit_log (at);
    CREATE INDEX audit_log_payload_idx ON audit_log USING gin (payload);
  `);
  await client.query('VACUUM ANALYZE');
}

/**
 * A realistic Event Manager hour, about 1% of rows: new registrations and audit rows, status updates of recent
 * registrations, after a vacuum (so new versions go to free space, wherever it is).
 */
export async function realisticHour(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{
    users: string;
    events: string;
    registrations: string;
    audit: string;
  }>(
    'SELECT (SELECT max(id) FROM users) AS users, (SELECT max(id) FROM events) AS events, (SELECT count(*) FROM registrations) AS registrations, (SELECT count(*) FROM audit_log) AS audit',
  );
  const { users, events, registrations, audit } = rows[0]!;
  const newRegistrations = Math.round(Number(registrations) * 0.004);
  const updated = Math.round(Number(registrations) * 0.004);
  const newAudit = Math.round(Number(audit) * 0.01);
  await client.query(`INSERT INTO registrations (user_id, event_id, status, created_at, updated_at)
    SELECT 1 + (g * 6007) % ${users}, 1 + (g * 7001) % ${events}, 'pending', now(), now() FROM generate_series(1, ${newRegistrations}) g`);
  await client.query(`UPDATE registrations SET status = 'confirmed', updated_at = now()
    WHERE id > (SELECT max(id) - ${updated * 3} FROM registrations) AND id % 3 = 0`);
  await client.query(`INSERT INTO audit_log (at, actor_id, action, payload)
    SELECT now(), 1 + g % ${users}, 'register', jsonb_build_object('ip', '10.0.0.' || g % 256, 'agent', 'Mozilla/5.0 ' || md5(g::text), 'ok', true)
    FROM generate_series(1, ${newAudit}) g`);
}

/** 1% of registrations updated, uniformly scattered over the table. */
export async function uniformUpdate(client: pg.Client): Promise<void> {
  await client.query(`UPDATE registrations SET status = 'attended', updated_at = now() WHERE id % 100 = 37`);
}
