//! The token set of each session, from the provider it logged in with, sealed column by column.

use crate::db::DbError;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::KeyRing;
use crate::domain::tokens::TokenSet;
use crate::dpop::DpopKey;
use secrecy::zeroize::Zeroizing;

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

/// Stores a new session's tokens, with the DPoP key they are bound to when the provider uses
/// DPoP.
pub async fn insert(
    conn: &mut PgConnection,
    keys: &KeyRing,
    session_id: Uuid,
    tokens: &TokenSet,
    dpop_key: Option<&DpopKey>,
) -> Result<(), DbError> {
    let sealed = seal_all(keys, session_id, tokens);
    let dpop = dpop_key.map(|k| keys.seal(k.pkcs8(), &aad("dpop_key", session_id)));
    sqlx::query(
        "INSERT INTO session_tokens
             (session_id, access_token, refresh_token, id_token, expires_at, scopes, obtained_at,
              dpop_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(session_id)
    .bind(sealed.access_token)
    .bind(sealed.refresh_token)
    .bind(sealed.id_token)
    .bind(tokens.expires_at)
    .bind(&tokens.scopes)
    .bind(tokens.obtained_at)
    .bind(dpop)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces a session's token set after a refresh, sealed under the current key, if the row
/// is still at `generation` (compare-and-swap: a refresh stores its result only over the
/// tokens it started from). `after_rejection` records that a service's 401 caused it. False
/// when the row is gone or was changed meanwhile.
pub async fn store_refreshed(
    conn: &mut PgConnection,
    keys: &KeyRing,
    session_id: Uuid,
    generation: i64,
    tokens: &TokenSet,
    after_rejection: bool,
) -> Result<bool, DbError> {
    let sealed = seal_all(keys, session_id, tokens);
    let stored = sqlx::query(
        "UPDATE session_tokens
         SET access_token = $3, refresh_token = $4, id_token = $5, expires_at = $6, scopes = $7,
             obtained_at = $8, after_rejection = $9, generation = generation + 1,
             updated_at = now()
         WHERE session_id = $1 AND generation = $2",
    )
    .bind(session_id)
    .bind(generation)
    .bind(sealed.access_token)
    .bind(sealed.refresh_token)
    .bind(sealed.id_token)
    .bind(tokens.expires_at)
    .bind(&tokens.scopes)
    .bind(tokens.obtained_at)
    .bind(after_rejection)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(stored == 1)
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
    obtained_at: Option<DateTime<Utc>>,
    generation: i64,
    after_rejection: bool,
    dpop_key: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("a stored token does not open: {0}")]
    Sealed(#[from] crate::crypto::CryptoError),
    #[error(transparent)]
    Stored(#[from] crate::db::DbError),
}

/// A session's tokens with the provider and subject they belong to.
#[derive(Debug)]
pub struct SessionTokens {
    pub provider: String,
    pub subject: String,
    pub tokens: TokenSet,
    /// Bumped by every refresh.
    pub generation: i64,
    /// The access token was got because a service answered 401 to the one before it.
    pub after_rejection: bool,
    /// The DPoP key the tokens are bound to (providers with `dpop = true`).
    pub dpop_key: Option<DpopKey>,
}

const SELECT: &str = "SELECT s.provider, s.subject, t.access_token, t.refresh_token, t.id_token,
                             t.expires_at, t.scopes, t.obtained_at, t.generation,
                             t.after_rejection, t.dpop_key
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
        generation: row.generation,
        after_rejection: row.after_rejection,
        dpop_key: row
            .dpop_key
            .as_deref()
            .map(|sealed| {
                let der = Zeroizing::new(keys.open(sealed, &aad("dpop_key", session_id))?);
                DpopKey::from_pkcs8(&der).map_err(|_| crate::crypto::CryptoError::Malformed)
            })
            .transpose()?,
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
            obtained_at: row.obtained_at,
            scopes: row.scopes,
        },
    })
}

/// The refresh tokens of sessions about to end, read under the rows' locks in the caller's
/// transaction: a refresh that stores a rotated token meanwhile waits for the caller and then
/// finds the row gone, so the token read here is the last one. A token that opens under no
/// configured key is left out (with a warning): the session still ends.
pub async fn lock_refresh_tokens(
    conn: &mut PgConnection,
    keys: &KeyRing,
    session_ids: &[Uuid],
) -> Result<Vec<(Uuid, SecretString)>, DbError> {
    let rows: Vec<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT session_id, refresh_token FROM session_tokens
         WHERE session_id = ANY($1) ORDER BY session_id FOR UPDATE",
    )
    .bind(session_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, sealed)| {
            let plain = match keys.open(&sealed?, &aad("refresh_token", id)) {
                Ok(plain) => plain,
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "a refresh token to revoke does not open");
                    return None;
                }
            };
            Some((
                id,
                SecretString::from(String::from_utf8_lossy(&plain).into_owned()),
            ))
        })
        .collect())
}
