//! Access tokens made for one service: for an RFC 8707 resource (got with the owner's refresh
//! token) or by an RFC 8693 exchange (of the owner's access token). One row per (owner,
//! target), sealed like every token and deleted with its owner (docs/tokens.md).

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::KeyRing;
use crate::db::DbError;
use crate::db::session_tokens::LoadError;
use crate::domain::tokens::{OwnerKey, TokenSet};

/// The associated data binding a sealed token to its row (also `db::sealed`'s).
pub(crate) fn aad(owner_key: &str, target: &str) -> Vec<u8> {
    format!("service_tokens.access_token:{owner_key}:{target}").into_bytes()
}

/// A token made for one target, as stored.
#[derive(Debug, Clone)]
pub struct ServiceToken {
    pub access_token: SecretString,
    pub expires_at: Option<DateTime<Utc>>,
    pub obtained_at: Option<DateTime<Utc>>,
    /// Bumped by every write of this row.
    pub generation: i64,
    pub after_rejection: bool,
}

#[derive(sqlx::FromRow)]
struct Row {
    access_token: Vec<u8>,
    expires_at: Option<DateTime<Utc>>,
    obtained_at: Option<DateTime<Utc>>,
    generation: i64,
    after_rejection: bool,
}

pub async fn get(
    pool: &PgPool,
    keys: &KeyRing,
    owner: &OwnerKey,
    target: &str,
) -> Result<Option<ServiceToken>, LoadError> {
    let owner_key = owner.to_string();
    let row: Option<Row> = sqlx::query_as(
        "SELECT access_token, expires_at, obtained_at, generation, after_rejection
         FROM service_tokens WHERE owner_key = $1 AND target = $2",
    )
    .bind(&owner_key)
    .bind(target)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let plain = keys.open(&r.access_token, &aad(&owner_key, target))?;
        Ok(ServiceToken {
            access_token: SecretString::from(String::from_utf8_lossy(&plain).into_owned()),
            expires_at: r.expires_at,
            obtained_at: r.obtained_at,
            generation: r.generation,
            after_rejection: r.after_rejection,
        })
    })
    .transpose()
}

/// Stores (or replaces) the owner's token for `target` (the access token of `tokens`, with
/// its expiry), sealed under the current key.
pub async fn upsert(
    conn: &mut PgConnection,
    keys: &KeyRing,
    owner: &OwnerKey,
    target: &str,
    tokens: &TokenSet,
    after_rejection: bool,
) -> Result<(), DbError> {
    let owner_key = owner.to_string();
    let sealed = keys.seal(
        tokens.access_token.expose_secret().as_bytes(),
        &aad(&owner_key, target),
    );
    let (session_id, user_id, provider): (Option<Uuid>, Option<Uuid>, Option<&str>) = match owner {
        OwnerKey::Session(id) => (Some(*id), None, None),
        OwnerKey::Linked { user_id, provider } => (None, Some(*user_id), Some(provider)),
    };
    sqlx::query(
        "INSERT INTO service_tokens
             (owner_key, target, session_id, user_id, provider, access_token, expires_at,
              obtained_at, after_rejection)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (owner_key, target) DO UPDATE
         SET access_token = EXCLUDED.access_token, expires_at = EXCLUDED.expires_at,
             obtained_at = EXCLUDED.obtained_at, after_rejection = EXCLUDED.after_rejection,
             generation = service_tokens.generation + 1, updated_at = now()",
    )
    .bind(&owner_key)
    .bind(target)
    .bind(session_id)
    .bind(user_id)
    .bind(provider)
    .bind(sealed)
    .bind(tokens.expires_at)
    .bind(tokens.obtained_at)
    .bind(after_rejection)
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops every token made from the owner's grant (a linked account connected anew: its tokens
/// came from the grant it replaces).
pub async fn delete_for_owner(conn: &mut PgConnection, owner: &OwnerKey) -> Result<(), DbError> {
    sqlx::query("DELETE FROM service_tokens WHERE owner_key = $1")
        .bind(owner.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
