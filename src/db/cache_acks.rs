//! The cache's notifications, which instances keep a cache, and which of them have confirmed
//! an announcement. Times are the database's own (`now()`): liveness is about real time,
//! whatever courier's clock says.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The channel the cache's notifications go on (the triggers of migration 0004 name it too).
pub const CHANNEL: &str = "courier_cache";

/// Sends `payload` on the cache channel, inside the caller's transaction: it is delivered at
/// the commit, and not at all on a rollback.
pub async fn notify(conn: &mut PgConnection, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// An instance whose heartbeat is older than this no longer counts as listening.
pub const LISTENER_TTL_SECS: i32 = 15;

/// Records that `instance` listens (and so caches); repeated as a heartbeat.
pub async fn heartbeat(pool: &PgPool, instance: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cache_listeners (instance_id, seen_at) VALUES ($1, now())
         ON CONFLICT (instance_id) DO UPDATE SET seen_at = now()",
    )
    .bind(instance)
    .execute(pool)
    .await?;
    Ok(())
}

/// `instance` stopped listening: logouts need not wait for it.
pub async fn leave(pool: &PgPool, instance: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cache_listeners WHERE instance_id = $1")
        .bind(instance)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn ack(pool: &PgPool, nonce: Uuid, instance: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cache_acks (nonce, instance_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(nonce)
    .bind(instance)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether every listening instance has confirmed `nonces`.
pub async fn all_confirmed(pool: &PgPool, nonces: &[Uuid]) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (
             SELECT 1 FROM cache_listeners l, unnest($1::uuid[]) AS n(nonce)
             WHERE l.seen_at > now() - $2 * interval '1 second'
               AND NOT EXISTS (SELECT 1 FROM cache_acks a
                               WHERE a.nonce = n.nonce AND a.instance_id = l.instance_id))",
    )
    .bind(nonces)
    .bind(LISTENER_TTL_SECS)
    .fetch_one(pool)
    .await
}

pub async fn forget(pool: &PgPool, nonces: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cache_acks WHERE nonce = ANY($1)")
        .bind(nonces)
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops acks nobody waits for any more and instances long gone.
pub async fn purge(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let acks =
        sqlx::query("DELETE FROM cache_acks WHERE created_at < now() - interval '5 minutes'")
            .execute(pool)
            .await?
            .rows_affected();
    let listeners =
        sqlx::query("DELETE FROM cache_listeners WHERE seen_at < now() - interval '1 hour'")
            .execute(pool)
            .await?
            .rows_affected();
    Ok(acks + listeners)
}
