//! Back-channel logout tokens already accepted: a `jti` is accepted once per provider.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// Records the token as used. Returns false when it had been used already.
pub async fn mark_used(
    conn: &mut PgConnection,
    provider: &str,
    jti: &str,
    expires_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO used_logout_tokens (provider, jti, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(provider)
    .bind(jti)
    .bind(expires_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn purge_expired(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM used_logout_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
