//! Secrets shared by every instance, generated once and kept sealed in Postgres.

use sqlx::PgPool;

use crate::crypto::{CryptoError, KeyRing};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the shared secret `{0}` does not open with any configured key: {1}")]
    Sealed(String, CryptoError),
}

/// The key that signs session cookies, shared by every instance.
pub const SESSION_COOKIE_KEY: &str = "session_cookie_key";

/// The sealed value of the secret called `name`, when some instance has made it.
pub async fn sealed(pool: &PgPool, name: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT sealed FROM shared_secrets WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// The associated data binding a sealed secret to its row (also `db::sealed`'s).
pub(crate) fn aad(name: &str) -> Vec<u8> {
    format!("shared_secrets.sealed:{name}").into_bytes()
}

/// Returns the secret called `name`, creating it from `generate` if no instance has yet.
/// A secret sealed by an older key is re-sealed under the current one.
pub async fn get_or_create(
    pool: &PgPool,
    keys: &KeyRing,
    name: &str,
    generate: impl FnOnce() -> Vec<u8>,
) -> Result<Vec<u8>, SecretError> {
    let aad = aad(name);
    sqlx::query("INSERT INTO shared_secrets (name, sealed) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(name)
        .bind(keys.seal(&generate(), &aad))
        .execute(pool)
        .await?;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed FROM shared_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await?;
    let secret = keys
        .open(&sealed, &aad)
        .map_err(|e| SecretError::Sealed(name.to_owned(), e))?;
    if keys.is_stale(&sealed) {
        sqlx::query("UPDATE shared_secrets SET sealed = $2 WHERE name = $1 AND sealed = $3")
            .bind(name)
            .bind(keys.seal(&secret, &aad))
            .bind(&sealed)
            .execute(pool)
            .await?;
    }
    Ok(secret)
}
