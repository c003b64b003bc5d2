//! Server-side sessions, found by the SHA-256 of the cookie's key.

use crate::db::DbError;
use chrono::{DateTime, Duration, Utc};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

pub struct NewSession<'a> {
    pub id: Uuid,
    /// The id its user sees (`/api/sessions`); random, unrelated to `id`.
    pub public_id: Uuid,
    pub user_id: Uuid,
    pub provider: &'a str,
    pub subject: &'a str,
    pub provider_sid: Option<&'a str>,
    /// A summary of the login request's User-Agent (`domain::user_agent`), never the header.
    pub user_agent: Option<&'a str>,
    /// When the user authenticated at the provider: the ID token's `auth_time`; `None` when it
    /// had none (the session then counts as authenticated long ago, never as `now`).
    pub auth_time: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
}

/// Inserts a session that no cookie can reach yet; `bind_key` makes it live.
pub async fn insert_unbound(conn: &mut PgConnection, s: &NewSession<'_>) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO sessions (id, user_id, provider, subject, provider_sid, created_at,
                               last_seen_at, idle_expires_at, absolute_expires_at, public_id,
                               user_agent, auth_time)
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11)",
    )
    .bind(s.id)
    .bind(s.user_id)
    .bind(s.provider)
    .bind(s.subject)
    .bind(s.provider_sid)
    .bind(s.now)
    .bind(s.now + s.idle_timeout.min(s.absolute_timeout))
    .bind(s.now + s.absolute_timeout)
    .bind(s.public_id)
    .bind(s.user_agent)
    .bind(s.auth_time)
    .execute(conn)
    .await?;
    Ok(())
}

/// Binds an unbound session to the hash of its cookie key. Succeeds once per session.
pub async fn bind_key(
    pool: &PgPool,
    id: Uuid,
    key_hash: &[u8],
    state: &serde_json::Value,
) -> Result<bool, DbError> {
    let bound = sqlx::query(
        "UPDATE sessions SET key_hash = $2, state = $3 WHERE id = $1 AND key_hash IS NULL",
    )
    .bind(id)
    .bind(key_hash)
    .bind(state)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(bound == 1)
}

/// How stale `last_seen_at` may get before a request writes it again: loading a session is a
/// read, and only about once a minute a write, so that idle expiry costs no write per request.
/// Never more than a quarter of the idle timeout, so that under a short one a session in use
/// is extended long before it could lapse.
pub fn touch_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).min(Duration::seconds(60))
}

/// A session as `touch` found it: live, or just ended with its grant (`grant_ended`).
#[derive(Debug, sqlx::FromRow)]
pub struct Touched {
    pub id: Uuid,
    /// The login provider the session came from.
    pub provider: String,
    pub state: serde_json::Value,
    pub last_seen_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    /// The session got no refresh token and its access token has expired: the session ended
    /// with its grant (at login its expiry was set to the access token's), not by a timeout.
    pub grant_ended: bool,
}

/// Loads a live session and, when it was last extended over `touch_interval` ago, extends its
/// idle expiry, in one round trip. A session past either expiry is not returned, except one
/// that ended with its grant (`Touched::grant_ended`): its cookie then learns why.
pub async fn touch(
    pool: &PgPool,
    key_hash: &[u8],
    now: DateTime<Utc>,
    idle_timeout: Duration,
) -> Result<Option<Touched>, DbError> {
    // A session's expiry equals its access token's only when `session::start` capped it there
    // because no refresh token came; its idle expiry is then capped there too unless the
    // session went idle first (which is a timeout like any other).
    sqlx::query_as(
        "WITH live AS (
             SELECT s.id, s.provider, s.state, s.last_seen_at, s.idle_expires_at,
                    s.absolute_expires_at, s.last_seen_at < $4 AS stale,
                    s.absolute_expires_at <= $2 AS grant_ended
             FROM sessions s
             WHERE s.key_hash = $1
               AND ((s.idle_expires_at > $2 AND s.absolute_expires_at > $2)
                    OR (s.idle_expires_at = s.absolute_expires_at
                        AND s.absolute_expires_at <= $2
                        AND EXISTS (SELECT 1 FROM session_tokens t
                                    WHERE t.session_id = s.id AND t.refresh_token IS NULL
                                      AND t.expires_at = s.absolute_expires_at)))
         ), extended AS (
             UPDATE sessions
             SET last_seen_at = $2, idle_expires_at = LEAST($3, absolute_expires_at)
             WHERE id = (SELECT id FROM live WHERE stale AND NOT grant_ended)
         )
         SELECT id, provider, state,
                CASE WHEN stale AND NOT grant_ended THEN $2 ELSE last_seen_at END
                    AS last_seen_at,
                CASE WHEN stale AND NOT grant_ended THEN LEAST($3, absolute_expires_at)
                     ELSE idle_expires_at END AS idle_expires_at,
                absolute_expires_at, grant_ended
         FROM live",
    )
    .bind(key_hash)
    .bind(now)
    .bind(now + idle_timeout)
    .bind(now - touch_interval(idle_timeout))
    .fetch_optional(pool)
    .await
    .map_err(DbError::from)
}

pub async fn update_state(
    pool: &PgPool,
    key_hash: &[u8],
    state: &serde_json::Value,
) -> Result<bool, DbError> {
    let updated = sqlx::query("UPDATE sessions SET state = $2 WHERE key_hash = $1")
        .bind(key_hash)
        .bind(state)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(updated == 1)
}

/// Ends a session; its tokens go with it.
pub async fn delete_by_key(pool: &PgPool, key_hash: &[u8]) -> Result<(), DbError> {
    sqlx::query("DELETE FROM sessions WHERE key_hash = $1")
        .bind(key_hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// What `/api/me` shows of a session and its user.
#[derive(Debug, sqlx::FromRow)]
pub struct SessionView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub provider: String,
    pub subject: String,
    pub claims: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// The absolute expiry.
    pub absolute_expires_at: DateTime<Utc>,
    /// The idle expiry, as last written (it moves when the session is touched).
    pub idle_expires_at: DateTime<Utc>,
}

pub async fn view(
    pool: &PgPool,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<SessionView>, DbError> {
    sqlx::query_as(
        "SELECT s.id, s.user_id, s.provider, s.subject, i.claims, s.created_at,
                s.absolute_expires_at, s.idle_expires_at
         FROM sessions s
         JOIN identities i ON i.provider = s.provider AND i.subject = s.subject
         WHERE s.id = $1 AND s.key_hash IS NOT NULL
           AND s.idle_expires_at > $2 AND s.absolute_expires_at > $2",
    )
    .bind(id)
    .bind(now)
    .fetch_optional(pool)
    .await
    .map_err(DbError::from)
}

/// Deletes sessions past their expiry, and unbound ones older than `unbound_before` (a login
/// whose cookie never reached the browser).
pub async fn purge_expired(
    pool: &PgPool,
    now: DateTime<Utc>,
    unbound_before: DateTime<Utc>,
) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "DELETE FROM sessions
         WHERE idle_expires_at <= $1 OR absolute_expires_at <= $1
            OR (key_hash IS NULL AND created_at < $2)",
    )
    .bind(now)
    .bind(unbound_before)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Ends a session by id (its tokens go with it).
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), DbError> {
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes the session only while its tokens are still at `generation`: a refresh refused
/// with `invalid_grant` ends the session only when no newer tokens were stored meanwhile.
/// Returns whether it was deleted.
pub async fn delete_at_generation(
    conn: &mut PgConnection,
    id: Uuid,
    generation: i64,
) -> Result<bool, DbError> {
    let deleted = sqlx::query(
        "DELETE FROM sessions s USING session_tokens t
         WHERE s.id = $1 AND t.session_id = s.id AND t.generation = $2",
    )
    .bind(id)
    .bind(generation)
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected() > 0)
}

/// Ends the sessions a provider's back-channel logout names: by its session id (`sid`), by
/// the user's subject (`sub`), or by both. Returns the ids of those that ended.
pub async fn delete_for_provider_logout(
    conn: &mut PgConnection,
    provider: &str,
    sid: Option<&str>,
    sub: Option<&str>,
) -> Result<Vec<Uuid>, DbError> {
    debug_assert!(sid.is_some() || sub.is_some());
    sqlx::query_scalar(
        "DELETE FROM sessions
         WHERE provider = $1
           AND ($2::text IS NULL OR provider_sid = $2)
           AND ($3::text IS NULL OR subject = $3)
         RETURNING id",
    )
    .bind(provider)
    .bind(sid)
    .bind(sub)
    .fetch_all(conn)
    .await
    .map_err(DbError::from)
}

/// How many sessions are live at `now` (for the `courier_active_sessions` gauge).
pub async fn count_live(pool: &PgPool, now: DateTime<Utc>) -> Result<i64, super::DbError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE key_hash IS NOT NULL
           AND idle_expires_at > $1 AND absolute_expires_at > $1",
    )
    .bind(now)
    .fetch_one(pool)
    .await?)
}

/// Which sessions a listing or an ending names: every condition that is set must hold (none
/// set: every session).
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection<'a> {
    pub user_id: Option<Uuid>,
    /// The login provider the sessions came from.
    pub provider: Option<&'a str>,
    /// The user's subject at that provider.
    pub subject: Option<&'a str>,
    /// One session, by the id its user sees.
    pub public_id: Option<Uuid>,
    /// Leaves this session (by its internal id) out.
    pub except: Option<Uuid>,
    /// Only sessions that are live at this time: bound to a cookie, neither timeout passed.
    pub live_at: Option<DateTime<Utc>>,
}

impl Selection<'_> {
    /// `WHERE …` with the conditions that are set. Only those are in the SQL, so that each
    /// shape gets a plan that uses its index.
    fn push_where(&self, query: &mut QueryBuilder<Postgres>) {
        query.push(" WHERE true");
        if let Some(user_id) = self.user_id {
            query.push(" AND user_id = ").push_bind(user_id);
        }
        if let Some(provider) = self.provider {
            query
                .push(" AND provider = ")
                .push_bind(provider.to_owned());
        }
        if let Some(subject) = self.subject {
            query.push(" AND subject = ").push_bind(subject.to_owned());
        }
        if let Some(public_id) = self.public_id {
            query.push(" AND public_id = ").push_bind(public_id);
        }
        if let Some(except) = self.except {
            query.push(" AND id <> ").push_bind(except);
        }
        if let Some(now) = self.live_at {
            query
                .push(" AND key_hash IS NOT NULL AND idle_expires_at > ")
                .push_bind(now)
                .push(" AND absolute_expires_at > ")
                .push_bind(now);
        }
    }
}

/// A session as `/api/sessions` and `courier sessions list` show it.
#[derive(Debug, sqlx::FromRow)]
pub struct SessionSummary {
    /// Internal: never shown to users.
    pub id: Uuid,
    pub public_id: Uuid,
    pub user_id: Uuid,
    pub provider: String,
    pub subject: String,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
}

/// The sessions `selection` names, newest first.
pub async fn list(
    pool: &PgPool,
    selection: &Selection<'_>,
) -> Result<Vec<SessionSummary>, DbError> {
    let mut query = QueryBuilder::new(
        "SELECT id, public_id, user_id, provider, subject, user_agent, created_at,
                last_seen_at, idle_expires_at, absolute_expires_at
         FROM sessions",
    );
    selection.push_where(&mut query);
    query.push(" ORDER BY created_at DESC, id");
    Ok(query.build_query_as().fetch_all(pool).await?)
}

/// A session about to end, locked by `lock_for_ending`.
#[derive(Debug, sqlx::FromRow)]
pub struct Ending {
    pub id: Uuid,
    pub provider: String,
    /// Whether it was live (bound and within both timeouts) at the time given.
    pub live: bool,
}

/// Locks up to `limit` sessions that `selection` names, in id order, for the caller's
/// transaction to delete.
pub async fn lock_for_ending(
    conn: &mut PgConnection,
    selection: &Selection<'_>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Ending>, DbError> {
    let mut query =
        QueryBuilder::new("SELECT id, provider, (key_hash IS NOT NULL AND idle_expires_at > ");
    query
        .push_bind(now)
        .push(" AND absolute_expires_at > ")
        .push_bind(now)
        .push(") AS live FROM sessions");
    selection.push_where(&mut query);
    query
        .push(" ORDER BY id LIMIT ")
        .push_bind(limit)
        .push(" FOR UPDATE");
    Ok(query.build_query_as().fetch_all(conn).await?)
}

/// Ends the sessions `ids` (their tokens go with them).
pub async fn delete_many(conn: &mut PgConnection, ids: &[Uuid]) -> Result<u64, DbError> {
    Ok(sqlx::query("DELETE FROM sessions WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?
        .rows_affected())
}

/// When the session's user last authenticated at the provider (`None`: no such session, or
/// its login's ID token named no `auth_time`).
pub async fn auth_time(pool: &PgPool, id: Uuid) -> Result<Option<DateTime<Utc>>, DbError> {
    let found: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT auth_time FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(found.flatten())
}

/// What `standing` found of a session that live connections are bound to.
#[derive(Debug, sqlx::FromRow)]
pub struct Standing {
    pub id: Uuid,
    /// Its idle expiry has passed.
    pub idle: bool,
    /// Its absolute expiry (or its grant's end) has passed.
    pub over: bool,
}

/// The bound sessions among `ids`, with whether each has timed out at `now`; a session not
/// returned has ended (logged out, ended from a list, its grant dead).
pub async fn standing(
    pool: &PgPool,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Standing>, DbError> {
    sqlx::query_as(
        "SELECT id, idle_expires_at <= $2 AS idle, absolute_expires_at <= $2 AS over
         FROM sessions WHERE id = ANY($1) AND key_hash IS NOT NULL",
    )
    .bind(ids)
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(DbError::from)
}
