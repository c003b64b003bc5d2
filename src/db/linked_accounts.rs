//! Linked accounts: one row per (user, provider), tokens sealed column by column and bound to
//! the row.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::{CryptoError, KeyRing};
use crate::db::DbError;
use crate::db::session_tokens::LoadError;
use crate::domain::tokens::{OwnerKey, TokenSet};
use crate::dpop::DpopKey;
use secrecy::zeroize::Zeroizing;

/// The associated data binding a sealed value to its column and row (also `db::sealed`'s).
pub(crate) fn aad(column: &str, user_id: Uuid, provider: &str) -> Vec<u8> {
    format!("linked_accounts.{column}:{user_id}:{provider}").into_bytes()
}

/// The access and refresh tokens, each sealed to its column of the (user, provider) row.
fn seal_tokens(
    keys: &KeyRing,
    user_id: Uuid,
    provider: &str,
    tokens: &TokenSet,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let seal = |column: &str, v: &SecretString| {
        keys.seal(
            v.expose_secret().as_bytes(),
            &aad(column, user_id, provider),
        )
    };
    (
        seal("access_token", &tokens.access_token),
        tokens
            .refresh_token
            .as_ref()
            .map(|t| seal("refresh_token", t)),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Connected,
    ReauthRequired,
}

impl Status {
    /// The column's value; one courier does not know is an error, not a guess.
    fn parse(s: &str) -> Result<Status, DbError> {
        match s {
            "connected" => Ok(Status::Connected),
            "reauth_required" => Ok(Status::ReauthRequired),
            other => Err(DbError::Invalid(format!(
                "linked_accounts.status `{other}`"
            ))),
        }
    }
}

/// Stores (or replaces) the user's account at `provider`, with the DPoP key its tokens are
/// bound to when the provider uses DPoP.
pub async fn upsert(
    conn: &mut PgConnection,
    keys: &KeyRing,
    user_id: Uuid,
    provider: &str,
    subject: &str,
    tokens: &TokenSet,
    dpop_key: Option<&DpopKey>,
) -> Result<(), DbError> {
    let (access, refresh) = seal_tokens(keys, user_id, provider, tokens);
    let dpop = dpop_key.map(|k| keys.seal(k.pkcs8(), &aad("dpop_key", user_id, provider)));
    sqlx::query(
        "INSERT INTO linked_accounts
             (user_id, provider, subject, access_token, refresh_token, expires_at, scopes,
              obtained_at, dpop_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (user_id, provider) DO UPDATE
         SET subject = EXCLUDED.subject, access_token = EXCLUDED.access_token,
             refresh_token = EXCLUDED.refresh_token, expires_at = EXCLUDED.expires_at,
             scopes = EXCLUDED.scopes, obtained_at = EXCLUDED.obtained_at,
             dpop_key = EXCLUDED.dpop_key, status = 'connected', after_rejection = false,
             generation = linked_accounts.generation + 1, updated_at = now()",
    )
    .bind(user_id)
    .bind(provider)
    .bind(subject)
    .bind(access)
    .bind(refresh)
    .bind(tokens.expires_at)
    .bind(&tokens.scopes)
    .bind(tokens.obtained_at)
    .bind(dpop)
    .execute(&mut *conn)
    .await?;
    crate::db::service_tokens::delete_for_owner(conn, &OwnerKey::linked(user_id, provider)).await
}

/// Replaces the tokens after a refresh if the row is still at `generation` (see
/// `session_tokens::store_refreshed`). False when it is gone or was changed meanwhile.
pub async fn store_refreshed(
    conn: &mut PgConnection,
    keys: &KeyRing,
    user_id: Uuid,
    provider: &str,
    generation: i64,
    tokens: &TokenSet,
    after_rejection: bool,
) -> Result<bool, DbError> {
    let (access, refresh) = seal_tokens(keys, user_id, provider, tokens);
    let stored = sqlx::query(
        "UPDATE linked_accounts
         SET access_token = $4, refresh_token = $5, expires_at = $6, scopes = $7,
             obtained_at = $8, after_rejection = $9, generation = generation + 1,
             updated_at = now()
         WHERE user_id = $1 AND provider = $2 AND generation = $3",
    )
    .bind(user_id)
    .bind(provider)
    .bind(generation)
    .bind(access)
    .bind(refresh)
    .bind(tokens.expires_at)
    .bind(&tokens.scopes)
    .bind(tokens.obtained_at)
    .bind(after_rejection)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(stored == 1)
}

/// The provider refused the account's grant: it waits for the user to connect it again. Only
/// the tokens at `generation` are marked (a reconnect meanwhile wins).
pub async fn mark_reauth_required(
    pool: &PgPool,
    user_id: Uuid,
    provider: &str,
    generation: i64,
) -> Result<bool, DbError> {
    let marked = sqlx::query(
        "UPDATE linked_accounts SET status = 'reauth_required', updated_at = now()
         WHERE user_id = $1 AND provider = $2 AND generation = $3",
    )
    .bind(user_id)
    .bind(provider)
    .bind(generation)
    .execute(pool)
    .await?;
    Ok(marked.rows_affected() > 0)
}

#[derive(sqlx::FromRow)]
struct Row {
    subject: String,
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    expires_at: Option<DateTime<Utc>>,
    scopes: Vec<String>,
    status: String,
    obtained_at: Option<DateTime<Utc>>,
    generation: i64,
    after_rejection: bool,
    dpop_key: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct LinkedAccount {
    pub subject: String,
    pub tokens: TokenSet,
    pub status: Status,
    /// Bumped by every refresh and reconnect.
    pub generation: i64,
    /// The access token was got because a service answered 401 to the one before it.
    pub after_rejection: bool,
    /// The DPoP key the tokens are bound to (providers with `dpop = true`).
    pub dpop_key: Option<DpopKey>,
}

const SELECT: &str = "SELECT subject, access_token, refresh_token, expires_at, scopes, status,
                             obtained_at, generation, after_rejection, dpop_key
                      FROM linked_accounts WHERE user_id = $1 AND provider = $2";

pub async fn get(
    pool: &PgPool,
    keys: &KeyRing,
    user_id: Uuid,
    provider: &str,
) -> Result<Option<LinkedAccount>, LoadError> {
    let row: Option<Row> = sqlx::query_as(SELECT)
        .bind(user_id)
        .bind(provider)
        .fetch_optional(pool)
        .await?;
    row.map(|r| open_row(keys, user_id, provider, r))
        .transpose()
}

fn open_row(
    keys: &KeyRing,
    user_id: Uuid,
    provider: &str,
    row: Row,
) -> Result<LinkedAccount, LoadError> {
    let open = |column: &str, sealed: &[u8]| -> Result<SecretString, LoadError> {
        let plain = keys.open(sealed, &aad(column, user_id, provider))?;
        Ok(SecretString::from(
            String::from_utf8_lossy(&plain).into_owned(),
        ))
    };
    Ok(LinkedAccount {
        subject: row.subject,
        status: Status::parse(&row.status)?,
        generation: row.generation,
        after_rejection: row.after_rejection,
        dpop_key: row
            .dpop_key
            .as_deref()
            .map(|sealed| {
                let der = Zeroizing::new(keys.open(sealed, &aad("dpop_key", user_id, provider))?);
                DpopKey::from_pkcs8(&der).map_err(|_| CryptoError::Malformed)
            })
            .transpose()?,
        tokens: TokenSet {
            access_token: open("access_token", &row.access_token)?,
            refresh_token: row
                .refresh_token
                .as_deref()
                .map(|t| open("refresh_token", t))
                .transpose()?,
            id_token: None,
            expires_at: row.expires_at,
            obtained_at: row.obtained_at,
            scopes: row.scopes,
        },
    })
}

/// The status of each provider the user has an account at.
pub async fn statuses(pool: &PgPool, user_id: Uuid) -> Result<Vec<(String, Status)>, DbError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT provider, status FROM linked_accounts WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(p, s)| Ok((p, Status::parse(&s)?)))
        .collect()
}

/// Removes the account and the identity it recorded, so the external account is free again.
pub async fn delete(conn: &mut PgConnection, user_id: Uuid, provider: &str) -> Result<(), DbError> {
    // The identity stays while a session signed in with it (several login providers: the
    // linked account can be the one a session of the user logged in with).
    sqlx::query(
        "DELETE FROM identities i USING linked_accounts l
         WHERE l.user_id = $1 AND l.provider = $2
           AND i.provider = l.provider AND i.subject = l.subject AND i.user_id = l.user_id
           AND NOT EXISTS (SELECT 1 FROM sessions s
                           WHERE s.user_id = i.user_id AND s.provider = i.provider
                             AND s.subject = i.subject)",
    )
    .bind(user_id)
    .bind(provider)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM linked_accounts WHERE user_id = $1 AND provider = $2")
        .bind(user_id)
        .bind(provider)
        .execute(conn)
        .await?;
    Ok(())
}

/// The linked accounts among `(user id, provider)` pairs that are still connected (not
/// disconnected, not waiting for the user to connect again after a dead refresh).
pub async fn still_connected(
    pool: &PgPool,
    accounts: &[(Uuid, String)],
) -> Result<Vec<(Uuid, String)>, DbError> {
    let (users, providers): (Vec<Uuid>, Vec<String>) = accounts.iter().cloned().unzip();
    sqlx::query_as(
        "SELECT a.user_id, a.provider FROM linked_accounts a
         JOIN unnest($1::uuid[], $2::text[]) AS w(user_id, provider)
           ON a.user_id = w.user_id AND a.provider = w.provider
         WHERE a.status = 'connected'",
    )
    .bind(users)
    .bind(providers)
    .fetch_all(pool)
    .await
    .map_err(DbError::from)
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn an_unknown_link_status_is_an_error_not_connected() {
        assert_eq!(Status::parse("connected").unwrap(), Status::Connected);
        assert_eq!(
            Status::parse("reauth_required").unwrap(),
            Status::ReauthRequired
        );
        assert!(Status::parse("revoked").is_err());
        assert!(Status::parse("").is_err());
    }
}
