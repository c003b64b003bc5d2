-- What `GET /api/sessions` shows of a session, and what `DELETE /api/sessions` checks.
--
-- `public_id`: the id the user sees and names in `DELETE /api/sessions/{id}`. Random, and
-- unrelated to `id`, which stays internal: it binds the sealed tokens (their associated data),
-- keys the refresh leases and the cache's notifications, and appears in logs.
-- `user_agent`: a short summary of the login request's User-Agent ("Firefox on macOS"), never
-- the raw header; NULL when the request had none.
-- `auth_time`: when the user last authenticated at the provider for this session: the ID
-- token's `auth_time`, else the login's own time.
-- The defaults serve rows inserted by an instance that predates this migration (during a
-- rolling upgrade): a random public id, and the insertion as the login time.
ALTER TABLE sessions
    ADD COLUMN public_id   uuid,
    ADD COLUMN user_agent  text CHECK (char_length(user_agent) <= 64),
    ADD COLUMN auth_time   timestamptz;
UPDATE sessions SET public_id = gen_random_uuid(), auth_time = created_at;
ALTER TABLE sessions
    ALTER COLUMN public_id SET DEFAULT gen_random_uuid(),
    ALTER COLUMN public_id SET NOT NULL,
    ALTER COLUMN auth_time SET DEFAULT now(),
    ALTER COLUMN auth_time SET NOT NULL;
CREATE UNIQUE INDEX sessions_public_id ON sessions (public_id);
-- `courier sessions list|end --sub` and a back-channel logout by `sub` find a user's sessions
-- by (provider, subject).
CREATE INDEX sessions_provider_subject ON sessions (provider, subject);
