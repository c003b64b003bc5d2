//! Who may send the one refresh grant of a token owner, and how long to wait after the
//! provider failed (see `tokens.rs` and docs/tokens.md). Times are the database's own
//! (`now()`), so that every instance reads a lease against the same clock.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::DbError;

/// A lease that its holder stopped renewing frees itself after this long.
pub const LEASE_SECS: i32 = 10;
/// The first pause after a failed grant; it doubles with each failure in a row.
const FIRST_BACKOFF_SECS: i32 = 5;
/// The longest pause after failed grants.
const MAX_BACKOFF_SECS: i32 = 60;

/// What stands in the way of taking an owner's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Another holder's lease runs until then.
    Held,
    /// The provider failed recently: no new grant before then.
    BackingOff { retry_at: DateTime<Utc> },
}

/// Takes the owner's lease for `holder` when it is free and no back-off runs: `Ok(None)` when
/// taken, else what blocks it.
pub async fn acquire(
    pool: &PgPool,
    owner_key: &str,
    holder: Uuid,
) -> Result<Option<Blocked>, DbError> {
    let taken: Option<(i32,)> = sqlx::query_as(
        "INSERT INTO refresh_leases (owner_key, holder, held_until)
         VALUES ($1, $2, now() + $3 * interval '1 second')
         ON CONFLICT (owner_key) DO UPDATE
         SET holder = EXCLUDED.holder, held_until = EXCLUDED.held_until
         WHERE (refresh_leases.held_until IS NULL OR refresh_leases.held_until < now())
           AND (refresh_leases.retry_at IS NULL OR refresh_leases.retry_at <= now())
         RETURNING 1",
    )
    .bind(owner_key)
    .bind(holder)
    .bind(LEASE_SECS)
    .fetch_optional(pool)
    .await?;
    if taken.is_some() {
        return Ok(None);
    }
    let (retry_at, held): (Option<DateTime<Utc>>, bool) = sqlx::query_as(
        "SELECT CASE WHEN retry_at > now() THEN retry_at END,
                COALESCE(held_until >= now(), false)
         FROM refresh_leases WHERE owner_key = $1",
    )
    .bind(owner_key)
    .fetch_optional(pool)
    .await?
    // Gone between the two statements: the next attempt will find it free.
    .unwrap_or((None, true));
    Ok(Some(match retry_at {
        Some(retry_at) if !held => Blocked::BackingOff { retry_at },
        _ => Blocked::Held,
    }))
}

/// Extends a lease its holder still has; false when it was lost.
pub async fn renew(pool: &PgPool, owner_key: &str, holder: Uuid) -> Result<bool, DbError> {
    let renewed = sqlx::query(
        "UPDATE refresh_leases SET held_until = now() + $3 * interval '1 second'
         WHERE owner_key = $1 AND holder = $2",
    )
    .bind(owner_key)
    .bind(holder)
    .bind(LEASE_SECS)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(renewed == 1)
}

/// The grant is over and needs no pause: the lease and any back-off go.
pub async fn release(pool: &PgPool, owner_key: &str, holder: Uuid) -> Result<(), DbError> {
    sqlx::query("DELETE FROM refresh_leases WHERE owner_key = $1 AND holder = $2")
        .bind(owner_key)
        .bind(holder)
        .execute(pool)
        .await?;
    Ok(())
}

/// The grant failed without ending the tokens: the lease goes, and no new grant for this owner
/// starts before 5 s, doubling with each failure in a row up to 60 s. Returns when.
pub async fn back_off(
    pool: &PgPool,
    owner_key: &str,
    holder: Uuid,
) -> Result<Option<DateTime<Utc>>, DbError> {
    sqlx::query_scalar(
        "UPDATE refresh_leases
         SET holder = NULL, held_until = NULL, failures = failures + 1,
             retry_at = now() + least($3 * power(2, least(failures, 8)), $4) * interval '1 second'
         WHERE owner_key = $1 AND holder = $2
         RETURNING retry_at",
    )
    .bind(owner_key)
    .bind(holder)
    .bind(FIRST_BACKOFF_SECS)
    .bind(MAX_BACKOFF_SECS)
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
    .map_err(DbError::from)
}

/// Drops leases and back-offs nobody holds or waits for any more.
pub async fn purge(pool: &PgPool) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "DELETE FROM refresh_leases
         WHERE (held_until IS NULL OR held_until < now() - interval '1 minute')
           AND (retry_at IS NULL OR retry_at < now() - interval '10 minutes')",
    )
    .execute(pool)
    .await?
    .rows_affected())
}
