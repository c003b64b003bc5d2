-- Refresh without a database connection held across the provider call (see docs/tokens.md).
--
-- Each token row gets a generation, bumped by every write of new tokens, so that a refresh
-- stores its result only over the tokens it started from (compare-and-swap), and a request
-- that waited can tell that someone else refreshed. `obtained_at` gives a token's lifetime
-- (the refresh margin is a quarter of it, at most 60 s); `after_rejection` marks a token got
-- because a service answered 401, so that a service that keeps answering 401 costs no refresh
-- per request.
ALTER TABLE session_tokens
    ADD COLUMN generation      bigint      NOT NULL DEFAULT 0,
    ADD COLUMN obtained_at     timestamptz,
    ADD COLUMN after_rejection boolean     NOT NULL DEFAULT false;
UPDATE session_tokens SET obtained_at = updated_at;

ALTER TABLE linked_accounts
    ADD COLUMN generation      bigint      NOT NULL DEFAULT 0,
    ADD COLUMN obtained_at     timestamptz,
    ADD COLUMN after_rejection boolean     NOT NULL DEFAULT false;
UPDATE linked_accounts SET obtained_at = updated_at;

-- Who may send the one refresh grant of a token owner ('session:<id>' or
-- 'linked:<user id>:<provider>') right now, and how long to wait after the provider failed.
-- A lease is taken with a short expiry and renewed while the grant is in flight, so a holder
-- that dies frees it within seconds. Kept apart from the token rows so that taking and
-- renewing a lease announces nothing to the instances' caches.
CREATE TABLE refresh_leases (
    owner_key   text PRIMARY KEY,
    holder      uuid,
    held_until  timestamptz,
    failures    integer     NOT NULL DEFAULT 0,
    retry_at    timestamptz
);
