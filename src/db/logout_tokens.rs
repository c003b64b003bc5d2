//! Back-channel logout tokens already accepted: a `jti` is accepted once per provider. A row
//! is kept until `expires_at`, which the caller sets no earlier than the last moment its token
//! could still pass the checks (for a token without `exp`: `iat` + 120 s + skew), so that the
//! purge never makes a replay acceptable.

use crate::db::DbError;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// Records the token as used, to be remembered until `expires_at`. Returns false when it had
/// been used already.
pub async fn mark_used(
    conn: &mut PgConnection,
    provider: &str,
    jti: &str,
    expires_at: DateTime<Utc>,
) -> Result<bool, DbError> {
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

pub async fn purge_expired(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, DbError> {
    Ok(
        sqlx::query("DELETE FROM used_logout_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
