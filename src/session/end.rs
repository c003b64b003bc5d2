//! Ending sessions everywhere: the one protocol every writer that ends a session follows (the
//! SPA's logout, a provider's back-channel logout, a refresh the provider refuses with
//! `invalid_grant`). The rows are deleted and the change announced to every instance's cache in
//! one transaction; after the commit, this instance waits until every listening instance has
//! dropped the sessions, so that no instance serves an ended session once the caller answers.

use secrecy::ExposeSecret;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::cache;
use crate::crypto::KeyRing;
use crate::db::{self, DbError};
use crate::domain::tokens::OwnerKey;
use crate::oidc::ProviderRegistry;
use crate::oidc::logout_token::LogoutTarget;
use crate::oidc::revocation;

/// Announces `ended` inside `tx`, commits, and waits for every instance's confirmation.
async fn announce_and_commit(
    mut tx: Transaction<'_, Postgres>,
    pool: &PgPool,
    cache: &AppCache,
    ended: &[Uuid],
) -> Result<(), DbError> {
    let mut announced = Vec::with_capacity(ended.len());
    for id in ended {
        announced.push(cache::announce(&mut tx, &OwnerKey::Session(*id)).await?);
    }
    tx.commit().await?;
    cache.confirm(pool, &announced).await;
    Ok(())
}

/// Ends one session on every instance.
pub async fn end_session(pool: &PgPool, cache: &AppCache, id: Uuid) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    db::sessions::delete(&mut tx, id).await?;
    announce_and_commit(tx, pool, cache, &[id]).await
}

/// What a verified back-channel logout token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderLogout {
    /// Its `jti` was seen before: nothing changed.
    Replayed,
    /// These many sessions ended.
    Ended(u64),
}

/// Ends the sessions a provider's logout token names. The `jti` is recorded and the sessions
/// end in one transaction: if either fails, the provider's retry with the same token is not
/// taken for a replay.
pub async fn end_for_provider_logout(
    pool: &PgPool,
    cache: &AppCache,
    provider: &str,
    target: &LogoutTarget,
) -> Result<ProviderLogout, DbError> {
    let mut tx = pool.begin().await?;
    let fresh =
        db::logout_tokens::mark_used(&mut tx, provider, &target.jti, target.remember_until).await?;
    if !fresh {
        return Ok(ProviderLogout::Replayed);
    }
    let ended = db::sessions::delete_for_provider_logout(
        &mut tx,
        provider,
        target.sid.as_deref(),
        target.sub.as_deref(),
    )
    .await?;
    announce_and_commit(tx, pool, cache, &ended).await?;
    Ok(ProviderLogout::Ended(ended.len() as u64))
}

/// Where the browser goes after an RP-initiated logout.
pub struct LogoutRedirects<'a> {
    /// courier's own page (`server.post_logout_redirect`), used when the provider has no
    /// `end_session_endpoint` or the session's tokens are unknown.
    pub local: &'a str,
    /// The same page as an absolute URL, for the provider's `post_logout_redirect_uri`.
    pub absolute: &'a str,
}

/// The SPA's sign-out: ends the session on every instance, then revokes its refresh token at
/// the provider where it can (a provider that is down does not keep the session alive), and
/// returns the URL that ends the provider's session too, when the provider has one.
pub async fn rp_logout(
    pool: &PgPool,
    keys: &KeyRing,
    cache: &AppCache,
    providers: &ProviderRegistry,
    session_id: Uuid,
    redirects: LogoutRedirects<'_>,
) -> Result<String, DbError> {
    let stored = db::session_tokens::get(pool, keys, session_id)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the session's tokens could not be read at logout");
            None
        });
    end_session(pool, cache, session_id).await?;
    let Some(stored) = stored else {
        return Ok(redirects.local.to_owned());
    };
    let provider = providers.get(&stored.provider);
    if let (Some(provider), Some(refresh)) = (provider, &stored.tokens.refresh_token)
        && let Err(e) = revocation::revoke(provider, &providers.http, refresh, true).await
    {
        tracing::warn!(provider = %provider.id(), error = %e, "revoking the refresh token at logout failed");
    }
    let logout_url = match provider {
        Some(provider) => match provider.end_session_endpoint() {
            Some(mut endpoint) => {
                {
                    let mut query = endpoint.query_pairs_mut();
                    if let Some(id_token) = &stored.tokens.id_token {
                        query.append_pair("id_token_hint", id_token.expose_secret());
                    }
                    query.append_pair("post_logout_redirect_uri", redirects.absolute);
                    query.append_pair("client_id", &provider.config.client_id);
                }
                endpoint.to_string()
            }
            None => redirects.local.to_owned(),
        },
        None => redirects.local.to_owned(),
    };
    tracing::info!(provider = %stored.provider, "logged out");
    Ok(logout_url)
}
