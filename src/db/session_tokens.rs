//! The login provider's token set of each session, sealed column by column.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::KeyRing;
use crate::tokens::TokenSet;

/// The associated data binding a sealed value to its column and row (also `db::sealed`'s).
pub(crate) fn aad(column: &str, session_id: Uuid) -> Vec<u8> {
    format!("session_tokens.{column}:{session_id}").into_bytes()
}

struct Sealed {
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    id_token: Option<Vec<u8>>,
}

fn seal_all(keys: &KeyRing, id: Uuid, tokens: &TokenSet) -> Sealed {
    let seal = |column: &str, value: &SecretString| {
        keys.seal(value.expose_secret().as_bytes(), &aad(column, id))
    };
    Sealed {
        access_token: seal("access_token", &tokens.access_token),
        refresh_token: tokens
            .refresh_token
            .as_ref()
            .map(|t| seal("refresh_token", t)),
        id_token: tokens.id_token.as_ref().map(|t| seal("id_token", t)),
    }
}

pub async fn insert(
    conn: &mut PgConnection,
    keys: &KeyRing,
    session_id: Uuid,
    tokens: &TokenSet,
) -> Result<(), sqlx::Error> {
    let sealed = seal_all(keys, session_id, tokens);
    sqlx::query(
        "INSERT INTO session_tokens
             (session_id, access_token, refresh_token, id_token, expires_at, scopes)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(session_id)
    .bind(sealed.access_token)
    .bind(sealed.refresh_token)
    .bind(sealed.id_token)
    .bind(tokens.expires_at)
    .bind(&tokens.scopes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces a session's token set (after a refresh), sealed under the current key.
pub async fn update(
    conn: &mut PgConnection,
    keys: &KeyRing,
    session_id: Uuid,
    tokens: &TokenSet,
) -> Result<(), sqlx::Error> {
    let sealed = seal_all(keys, session_id, tokens);
    sqlx::query(
        "UPDATE session_tokens
         SET access_token = $2, refresh_token = $3, id_token = $4, expires_at = $5, scopes = $6,
             updated_at = now()
         WHERE session_id = $1",
    )
    .bind(session_id)
    .bind(sealed.access_token)
    .bind(sealed.refresh_token)
    .bind(sealed.id_token)
    .bind(tokens.expires_at)
    .bind(&tokens.scopes)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    provider: String,
    subject: String,
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

/// A session's tokens with the provider and subject they belong to.
#[derive(Debug)]
pub struct SessionTokens {
    pub provider: String,
    pub subject: String,
    pub tokens: TokenSet,
}

const SELECT: &str = "SELECT s.provider, s.subject, t.access_token, t.refresh_token, t.id_token,
                             t.expires_at, t.scopes
                      FROM session_tokens t JOIN sessions s ON s.id = t.session_id
                      WHERE t.session_id = $1";

pub async fn get(
    pool: &PgPool,
    keys: &KeyRing,
    session_id: Uuid,
) -> Result<Option<SessionTokens>, LoadError> {
    let row: Option<Row> = sqlx::query_as(SELECT)
        .bind(session_id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| open_row(keys, session_id, r)).transpose()
}

/// Like `get`, holding the row's lock until the transaction ends: the one refresh of a session
/// happens under it, on whichever instance gets it first.
pub async fn get_for_update(
    conn: &mut PgConnection,
    keys: &KeyRing,
    session_id: Uuid,
) -> Result<Option<SessionTokens>, LoadError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} FOR UPDATE OF t")))
        .bind(session_id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| open_row(keys, session_id, r)).transpose()
}

fn open_row(keys: &KeyRing, session_id: Uuid, row: Row) -> Result<SessionTokens, LoadError> {
    let open = |column: &str, sealed: &[u8]| -> Result<SecretString, LoadError> {
        let plain = keys.open(sealed, &aad(column, session_id))?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&plain).into_owned(),
        ))
    };
    Ok(SessionTokens {
        provider: row.provider,
        subject: row.subject,
        tokens: TokenSet {
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
        },
    })
}
