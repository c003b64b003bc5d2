-- Logouts are confirmed by every instance before they answer (see src/cache.rs).
-- `cache_listeners`: the instances whose in-memory cache is in use, with a heartbeat.
-- `cache_acks`: which instance has dropped what a logout's announcement named.
-- Both are soft state: unlogged (no WAL), rebuilt by the instances as they run.

CREATE UNLOGGED TABLE cache_listeners (
    instance_id  uuid PRIMARY KEY,
    seen_at      timestamptz NOT NULL
);

CREATE UNLOGGED TABLE cache_acks (
    nonce        uuid NOT NULL,
    instance_id  uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (nonce, instance_id)
);
CREATE INDEX cache_acks_created_at ON cache_acks (created_at);
