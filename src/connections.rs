//! Linked accounts: connecting a user's account at a service's provider, and disconnecting it.

use sqlx::PgPool;
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::crypto::KeyRing;
use crate::db::linked_accounts::Status;
use crate::db::{self, DbError};
use crate::domain::tokens::OwnerKey;
use crate::oidc::Provider;
use crate::oidc::http::ProviderHttp;
use crate::oidc::login::CompletedLogin;
use crate::oidc::revocation;
use crate::services::{Service, ServiceRegistry, ServiceStatus};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("that account is linked to another user")]
    LinkedElsewhere,
    #[error(transparent)]
    Database(#[from] DbError),
}

/// Stores the account's tokens for the user and records the identity against them, in one
/// transaction. An external account already linked to another user is refused.
pub async fn link(
    pool: &PgPool,
    keys: &KeyRing,
    cache: &AppCache,
    user_id: Uuid,
    provider: &str,
    account: &CompletedLogin,
) -> Result<(), ConnectError> {
    let claims = serde_json::Value::Object(account.claims.clone());
    let mut tx = pool.begin().await.map_err(DbError::from)?;
    if db::users::link_identity(&mut tx, provider, &account.subject, user_id, &claims)
        .await?
        .is_err()
    {
        return Err(ConnectError::LinkedElsewhere);
    }
    // Reconnecting with a different account frees the one linked before.
    db::users::unlink_other_identities(&mut tx, provider, user_id, &account.subject).await?;
    db::linked_accounts::upsert(
        &mut tx,
        keys,
        user_id,
        provider,
        &account.subject,
        &account.tokens,
        account.dpop_key.as_deref(),
    )
    .await?;
    tx.commit().await.map_err(DbError::from)?;
    // This instance's cached token for the account is stale now (the row's trigger tells the
    // other instances).
    cache.invalidate(&OwnerKey::linked(user_id, provider));
    Ok(())
}

/// Each configured service with whether the user can call it now, in a session that logged
/// in with `session_provider`. A linked account is connected once per user; the session's own
/// provider's token and courier's own come with the session.
pub async fn service_statuses<'a>(
    pool: &PgPool,
    user_id: Uuid,
    session_provider: &str,
    services: &'a ServiceRegistry,
) -> Result<Vec<(&'a Service, ServiceStatus)>, DbError> {
    let linked = db::linked_accounts::statuses(pool, user_id).await?;
    Ok(services
        .all()
        .iter()
        .map(|s| {
            let status = match s.linked_provider(session_provider) {
                None => ServiceStatus::Connected,
                Some(provider) => match linked.iter().find(|(p, _)| p == provider) {
                    Some((_, Status::Connected)) => ServiceStatus::Connected,
                    Some((_, Status::ReauthRequired)) => ServiceStatus::ReauthRequired,
                    None => ServiceStatus::NotConnected,
                },
            };
            (s, status)
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    #[error("the provider cannot be reached to revoke the tokens: {0}")]
    ProviderUnavailable(String),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Load(#[from] db::session_tokens::LoadError),
}

/// Revokes the account's tokens at the provider (where it has a revocation endpoint), then
/// deletes them. When the provider cannot be reached nothing is deleted, so that a retry can
/// still revoke.
pub async fn disconnect(
    pool: &PgPool,
    keys: &KeyRing,
    cache: &AppCache,
    http: &ProviderHttp,
    user_id: Uuid,
    provider: &Provider,
) -> Result<(), DisconnectError> {
    let Some(account) = db::linked_accounts::get(pool, keys, user_id, provider.id()).await? else {
        return Ok(());
    };
    if provider.is_oidc() && provider.metadata().is_none() {
        // Its revocation endpoint is not known yet: do not forget a token we cannot revoke.
        return Err(DisconnectError::ProviderUnavailable(
            "provider metadata is not loaded".into(),
        ));
    }
    let (token, is_refresh) = match &account.tokens.refresh_token {
        Some(refresh) => (refresh, true),
        None => (&account.tokens.access_token, false),
    };
    revocation::revoke(provider, http, token, is_refresh)
        .await
        .map_err(|e| DisconnectError::ProviderUnavailable(e.to_string()))?;
    let mut tx = pool.begin().await.map_err(DbError::from)?;
    db::linked_accounts::delete(&mut tx, user_id, provider.id()).await?;
    tx.commit().await.map_err(DbError::from)?;
    cache.invalidate(&OwnerKey::linked(user_id, provider.id()));
    Ok(())
}
