//! Users and their identities at providers.

use crate::db::DbError;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Finds the user behind (provider, subject), making one on first sight, and records the
/// latest claims. Returns the user's id.
pub async fn upsert_identity(
    conn: &mut PgConnection,
    provider: &str,
    subject: &str,
    claims: &serde_json::Value,
) -> Result<Uuid, DbError> {
    let existing: Option<Uuid> = sqlx::query_scalar(
        "UPDATE identities SET claims = $3, updated_at = now()
         WHERE provider = $1 AND subject = $2 RETURNING user_id",
    )
    .bind(provider)
    .bind(subject)
    .bind(claims)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(user_id) = existing {
        return Ok(user_id);
    }
    let new_user = Uuid::new_v4();
    sqlx::query("INSERT INTO users (id) VALUES ($1)")
        .bind(new_user)
        .execute(&mut *conn)
        .await?;
    // A concurrent first login of the same account may have won the race: take its user.
    let user_id: Uuid = sqlx::query_scalar(
        "INSERT INTO identities (provider, subject, user_id, claims) VALUES ($1, $2, $3, $4)
         ON CONFLICT (provider, subject)
         DO UPDATE SET claims = EXCLUDED.claims, updated_at = now()
         RETURNING user_id",
    )
    .bind(provider)
    .bind(subject)
    .bind(new_user)
    .bind(claims)
    .fetch_one(&mut *conn)
    .await?;
    if user_id != new_user {
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(new_user)
            .execute(&mut *conn)
            .await?;
    }
    Ok(user_id)
}

#[derive(Debug, sqlx::FromRow)]
pub struct IdentityRow {
    pub user_id: Uuid,
    pub provider: String,
    pub subject: String,
    pub claims: serde_json::Value,
}

pub async fn identity(
    pool: &PgPool,
    provider: &str,
    subject: &str,
) -> Result<Option<IdentityRow>, DbError> {
    sqlx::query_as(
        "SELECT user_id, provider, subject, claims FROM identities
         WHERE provider = $1 AND subject = $2",
    )
    .bind(provider)
    .bind(subject)
    .fetch_optional(pool)
    .await
    .map_err(DbError::from)
}

/// Records that (provider, subject) belongs to `user_id`. Returns the user it belongs to
/// already when that is someone else (and changes nothing then).
pub async fn link_identity(
    conn: &mut PgConnection,
    provider: &str,
    subject: &str,
    user_id: Uuid,
    claims: &serde_json::Value,
) -> Result<Result<(), Uuid>, DbError> {
    let owner: Uuid = sqlx::query_scalar(
        "INSERT INTO identities (provider, subject, user_id, claims) VALUES ($1, $2, $3, $4)
         ON CONFLICT (provider, subject)
         DO UPDATE SET claims = CASE WHEN identities.user_id = EXCLUDED.user_id
                                     THEN EXCLUDED.claims ELSE identities.claims END,
                       updated_at = now()
         RETURNING user_id",
    )
    .bind(provider)
    .bind(subject)
    .bind(user_id)
    .bind(claims)
    .fetch_one(conn)
    .await?;
    Ok(if owner == user_id { Ok(()) } else { Err(owner) })
}

/// Frees the user's identities at `provider` other than `subject` (reconnecting with a
/// different account), except those a session signed in with: with several login providers
/// an identity at `provider` can be the one a live session of the user came from, and that
/// session keeps its user.
pub async fn unlink_other_identities(
    conn: &mut PgConnection,
    provider: &str,
    user_id: Uuid,
    subject: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "DELETE FROM identities i
         WHERE i.provider = $1 AND i.user_id = $2 AND i.subject <> $3
           AND NOT EXISTS (SELECT 1 FROM sessions s
                           WHERE s.user_id = i.user_id AND s.provider = i.provider
                             AND s.subject = i.subject)",
    )
    .bind(provider)
    .bind(user_id)
    .bind(subject)
    .execute(conn)
    .await?;
    Ok(())
}
