-- Access tokens made for one service (issue 18): a token for an RFC 8707 resource, got with the
-- owner's refresh token ('resource:<uri>'), or an RFC 8693 exchange of the owner's access token
-- for one service ('exchange:<service>'). One row per (owner, target); the owner is a session
-- ('session:<id>') or a user's linked account ('linked:<user id>:<provider>'), and the row goes
-- with it. The access token is sealed like every token (associated data
-- `service_tokens.access_token:<owner_key>:<target>`); refresh tokens stay with the owner.
CREATE TABLE service_tokens (
    owner_key        text        NOT NULL,
    target           text        NOT NULL,
    session_id       uuid        REFERENCES sessions (id) ON DELETE CASCADE,
    user_id          uuid,
    provider         text,
    access_token     bytea       NOT NULL,
    expires_at       timestamptz,
    obtained_at      timestamptz,
    -- Bumped by every write, so that a request that waited can tell that someone else got a
    -- new token for this target.
    generation       bigint      NOT NULL DEFAULT 0,
    after_rejection  boolean     NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_key, target),
    FOREIGN KEY (user_id, provider) REFERENCES linked_accounts (user_id, provider) ON DELETE CASCADE,
    CHECK ((session_id IS NOT NULL AND user_id IS NULL AND provider IS NULL)
        OR (session_id IS NULL AND user_id IS NOT NULL AND provider IS NOT NULL))
);
CREATE INDEX service_tokens_session_id ON service_tokens (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX service_tokens_linked ON service_tokens (user_id, provider) WHERE user_id IS NOT NULL;
