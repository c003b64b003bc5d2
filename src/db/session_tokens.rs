//! The login provider's token set of each session, sealed column by column.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::KeyRing;
use crate::tokens::TokenSet;

fn aad(column: &str, session_id: Uuid) -> Vec<u8> {
    format!("session_tokens.{column}:{session_id}").into_bytes()
}

fn seal(keys: &KeyRing, column: &str, id: Uuid, value: &SecretString) -> Vec<u8> {
    keys.seal(value.expose_secret().as_bytes(), &aad(column, id))
}

pub async fn insert(
    conn: &mut PgConnection,
    keys: &KeyRing,
    session_id: Uuid,
    tokens: &TokenSet,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO session_tokens
             (session_id, access_token, refresh_token, id_token, expires_at, scopes)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(session_id)
    .bind(seal(keys, "access_token", session_id, &tokens.access_token))
    .bind(
        tokens
            .refresh_token
            .as_ref()
            .map(|t| seal(keys, "refresh_token", session_id, t)),
    )
    .bind(
        tokens
            .id_token
            .as_ref()
            .map(|t| seal(keys, "id_token", session_id, t)),
    )
    .bind(tokens.expires_at)
    .bind(&tokens.scopes)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    id_token: Option<Vec<u8>>,
    expires_at: Option<DateTime<Utc>>,
    scopes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("a stored token does not open: {0}")]
    Sealed(#[from] crate::crypto::CryptoError),
}

pub async fn get(
    pool: &PgPool,
    keys: &KeyRing,
    session_id: Uuid,
) -> Result<Option<TokenSet>, LoadError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT access_token, refresh_token, id_token, expires_at, scopes
         FROM session_tokens WHERE session_id = $1",
    )
    .bind(session_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let open = |column: &str, sealed: &[u8]| -> Result<SecretString, LoadError> {
        let plain = keys.open(sealed, &aad(column, session_id))?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&plain).into_owned(),
        ))
    };
    Ok(Some(TokenSet {
        access_token: open("access_token", &row.access_token)?,
        refresh_token: row
            .refresh_token
            .as_deref()
            .map(|t| open("refresh_token", t))
            .transpose()?,
        id_token: row
            .id_token
            .as_deref()
            .map(|t| open("id_token", t))
            .transpose()?,
        expires_at: row.expires_at,
        scopes: row.scopes,
    }))
}
