//! Used login states: a callback's `state` is accepted once.

use crate::db::DbError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Records the state as used. Returns false when it had been used already.
pub async fn mark_used(
    pool: &PgPool,
    state_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<bool, DbError> {
    let inserted = sqlx::query(
        "INSERT INTO used_login_states (state_hash, expires_at) VALUES ($1, $2)
         ON CONFLICT (state_hash) DO NOTHING",
    )
    .bind(state_hash)
    .bind(expires_at)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn purge_expired(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, DbError> {
    Ok(
        sqlx::query("DELETE FROM used_login_states WHERE expires_at < $1")
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
