-- Linked accounts: a user's tokens at a provider other than the login one, connected once
-- (`/auth/connect/{service}`) and kept across sessions until disconnected or revoked.
CREATE TABLE linked_accounts (
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider       text NOT NULL,
    subject        text NOT NULL,
    access_token   bytea NOT NULL,
    refresh_token  bytea,
    expires_at     timestamptz,
    scopes         text[] NOT NULL DEFAULT '{}',
    -- 'reauth_required' once the provider refused a refresh (invalid_grant).
    status         text NOT NULL DEFAULT 'connected'
                   CHECK (status IN ('connected', 'reauth_required')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider)
);
