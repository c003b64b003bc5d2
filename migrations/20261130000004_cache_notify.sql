-- Every change that could make an instance's in-memory cache stale is announced on the
-- `courier_cache` channel, with the owner's key as payload (see src/cache.rs). Triggers, not
-- application code, so that a change made by hand in psql is announced as well.
-- Touching a session (last_seen_at, idle_expires_at) is not announced: caches keep their own,
-- earlier, idle expiry and re-read the row when it passes.

CREATE FUNCTION courier_notify_session() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_cache', 'session:' || OLD.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_notify
    AFTER UPDATE OF key_hash, state, user_id, provider, subject OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION courier_notify_session();

CREATE FUNCTION courier_notify_session_tokens() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_cache', 'session:' || OLD.session_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER session_tokens_notify
    AFTER UPDATE OR DELETE ON session_tokens
    FOR EACH ROW EXECUTE FUNCTION courier_notify_session_tokens();

CREATE FUNCTION courier_notify_linked_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('courier_cache', 'linked:' || OLD.user_id::text || ':' || OLD.provider);
    RETURN NULL;
END $$;

CREATE TRIGGER linked_accounts_notify
    AFTER UPDATE OR DELETE ON linked_accounts
    FOR EACH ROW EXECUTE FUNCTION courier_notify_linked_account();
