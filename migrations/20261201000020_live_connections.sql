-- Live connections (WebSockets, event streams) open on any instance, so that a session's cap
-- (`[session] max_live_connections`) holds across instances. Soft state: unlogged (no WAL); a
-- row is written when its connection opens, deleted when it closes, and renewed by its
-- instance meanwhile, so that the rows of an instance that died lapse by themselves.
CREATE UNLOGGED TABLE live_connections (
    id          uuid PRIMARY KEY,
    session_id  uuid NOT NULL,
    instance_id uuid NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX live_connections_session_id ON live_connections (session_id);
CREATE INDEX live_connections_instance_id ON live_connections (instance_id);
