-- Back-channel logout tokens already accepted, by (provider, jti), kept until they expire so
-- that a replay is refused.
CREATE TABLE used_logout_tokens (
    provider    text NOT NULL,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (provider, jti)
);
CREATE INDEX used_logout_tokens_expires_at ON used_logout_tokens (expires_at);
