-- Users, their identities at providers, server-side sessions and the session's token set.

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per account at a provider; (provider, subject) names exactly one user.
CREATE TABLE identities (
    provider    text NOT NULL,
    subject     text NOT NULL,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    claims      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identities_user_id ON identities (user_id);

-- A session is made by the login callback with key_hash NULL, then bound exactly once to the
-- SHA-256 of the random key that the cookie carries. The key itself is never stored.
CREATE TABLE sessions (
    id                   uuid PRIMARY KEY,
    key_hash             bytea UNIQUE,
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider             text NOT NULL,
    subject              text NOT NULL,
    provider_sid         text,
    state                jsonb NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL,
    last_seen_at         timestamptz NOT NULL,
    idle_expires_at      timestamptz NOT NULL,
    absolute_expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_provider_sid ON sessions (provider, provider_sid) WHERE provider_sid IS NOT NULL;
CREATE INDEX sessions_idle_expires_at ON sessions (idle_expires_at);

-- The login provider's tokens for a session, each sealed with the key ring and bound to
-- (table, column, session id).
CREATE TABLE session_tokens (
    session_id     uuid PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    access_token   bytea NOT NULL,
    refresh_token  bytea,
    id_token       bytea,
    expires_at     timestamptz,
    scopes         text[] NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- States of completed (or failed) callbacks, so a state is used once. Pending logins live in
-- a sealed cookie in the browser, so an anonymous /auth/login writes nothing here.
CREATE TABLE used_login_states (
    state_hash  bytea PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX used_login_states_expires_at ON used_login_states (expires_at);

-- Secrets that all instances share, sealed with the key ring (the cookie signing key).
CREATE TABLE shared_secrets (
    name        text PRIMARY KEY,
    sealed      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
