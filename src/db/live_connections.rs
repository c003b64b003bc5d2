//! The live connections open on every instance (`live_connections`), counted per session.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::db::DbError;

/// Writes a connection of `session` on `instance` when the session holds fewer than `cap` live
/// ones (rows not yet lapsed) on all instances together. Two instances claiming for one session
/// at once take turns (a transaction-scoped advisory lock on the session), so the cap holds.
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    session: Uuid,
    instance: Uuid,
    cap: usize,
    ttl: Duration,
) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('live:' || $1::text, 0))")
        .bind(session)
        .execute(&mut *tx)
        .await?;
    // A statement of its own after the lock, so that it sees what the previous holder wrote.
    let claimed = sqlx::query(
        "INSERT INTO live_connections (id, session_id, instance_id, expires_at)
         SELECT $1, $2, $3, now() + $5 * interval '1 millisecond'
         WHERE (SELECT count(*) FROM live_connections
                WHERE session_id = $2 AND expires_at > now()) < $4",
    )
    .bind(id)
    .bind(session)
    .bind(instance)
    .bind(i64::try_from(cap).unwrap_or(i64::MAX))
    .bind(ttl.as_millis() as i64)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    tx.commit().await?;
    Ok(claimed)
}

/// The connection closed.
pub async fn release(pool: &PgPool, id: Uuid) -> Result<(), DbError> {
    sqlx::query("DELETE FROM live_connections WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Keeps `instance`'s rows from lapsing for `ttl` more, and drops every instance's lapsed ones.
pub async fn renew(pool: &PgPool, instance: Uuid, ttl: Duration) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE live_connections SET expires_at = now() + $2 * interval '1 millisecond'
         WHERE instance_id = $1",
    )
    .bind(instance)
    .bind(ttl.as_millis() as i64)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM live_connections WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(())
}
