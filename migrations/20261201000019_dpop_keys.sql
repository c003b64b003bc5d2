-- DPoP (RFC 9449, issue 18): the private key that a token owner's tokens are bound to, sealed
-- like its tokens, so that every instance can sign proofs with it. A session's and a linked
-- account's key live in their token row (and go with it); courier's own client tokens have one
-- key per provider. NULL where the provider does not use DPoP.
ALTER TABLE session_tokens ADD COLUMN dpop_key bytea;
ALTER TABLE linked_accounts ADD COLUMN dpop_key bytea;

CREATE TABLE client_dpop_keys (
    provider     text        PRIMARY KEY,
    private_key  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
