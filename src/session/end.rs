//! Ending sessions everywhere: the one protocol every writer that ends a session follows (the
//! SPA's logout, a provider's back-channel logout, a refresh the provider refuses with
//! `invalid_grant`, a user ending their own sessions from `/api/sessions`, an operator's
//! `courier sessions end`). The rows are deleted and the change announced to every instance's cache in
//! one transaction; after the commit, this instance waits until every listening instance has
//! dropped the sessions, so that no instance serves an ended session once the caller answers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::cache;
use crate::crypto::KeyRing;
use crate::db::sessions::Selection;
use crate::db::{self, DbError};
use crate::domain::tokens::OwnerKey;
use crate::oidc::ProviderRegistry;
use crate::oidc::logout_token::LogoutTarget;
use crate::oidc::revocation;

/// Up to this many ended sessions are announced one by one; more empty every cache at once
/// (`cache::announce_everything`), one confirmation per instance instead of one per session.
const ANNOUNCE_EACH_UP_TO: usize = 64;

/// Announces `ended` inside `tx`, commits, and waits for every instance's confirmation.
async fn announce_and_commit(
    mut tx: Transaction<'_, Postgres>,
    pool: &PgPool,
    cache: &AppCache,
    ended: &[Uuid],
) -> Result<(), DbError> {
    let mut announced = Vec::with_capacity(ended.len().min(ANNOUNCE_EACH_UP_TO));
    if ended.len() > ANNOUNCE_EACH_UP_TO {
        announced.push(cache::announce_everything(&mut tx).await?);
    } else {
        for id in ended {
            announced.push(cache::announce(&mut tx, &OwnerKey::Session(*id)).await?);
        }
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

/// Ends one session on every instance, only while its tokens are still at `generation`
/// (`db::sessions::delete_at_generation`). Returns whether it ended.
pub async fn end_session_at_generation(
    pool: &PgPool,
    cache: &AppCache,
    id: Uuid,
    generation: i64,
) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    if !db::sessions::delete_at_generation(&mut tx, id, generation).await? {
        return Ok(false);
    }
    announce_and_commit(tx, pool, cache, &[id]).await?;
    Ok(true)
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

/// Sessions ended per transaction by `end_selected`.
const BATCH: i64 = 500;
/// Revocations sent at once.
const REVOCATIONS_IN_FLIGHT: usize = 8;

/// What `end_selected` ended.
#[derive(Debug, Default)]
pub struct Ended {
    /// The internal ids of the sessions that ended, live or not.
    pub ids: Vec<Uuid>,
    /// How many of them were live (bound to a cookie, within both timeouts).
    pub live: u64,
    /// Their refresh tokens, with the provider of each, to revoke (`revoke_refresh_tokens`).
    pub refresh_tokens: Vec<(String, SecretString)>,
}

/// Ends the sessions `selection` names, in batches, each on every instance before the next:
/// the rows and their tokens are deleted and announced in one transaction, and each batch's
/// commit waits for every listening instance's confirmation. The refresh tokens are read under
/// the rows' locks, so a refresh that rotates one meanwhile cannot slip a newer one past;
/// revoking them is the caller's next step, so that a reply need not wait for the provider.
/// `live_at` is the time by which `Ended::live` counts.
pub async fn end_selected(
    pool: &PgPool,
    keys: &KeyRing,
    cache: &AppCache,
    selection: &Selection<'_>,
    live_at: DateTime<Utc>,
) -> Result<Ended, DbError> {
    let mut ended = Ended::default();
    loop {
        let mut tx = pool.begin().await?;
        let batch = db::sessions::lock_for_ending(&mut tx, selection, live_at, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = batch.iter().map(|s| s.id).collect();
        let refresh = db::session_tokens::lock_refresh_tokens(&mut tx, keys, &ids).await?;
        db::sessions::delete_many(&mut tx, &ids).await?;
        announce_and_commit(tx, pool, cache, &ids).await?;
        ended.live += batch.iter().filter(|s| s.live).count() as u64;
        for (id, token) in refresh {
            if let Some(session) = batch.iter().find(|s| s.id == id) {
                ended.refresh_tokens.push((session.provider.clone(), token));
            }
        }
        ended.ids.extend(ids);
        if (batch.len() as i64) < BATCH {
            break;
        }
    }
    Ok(ended)
}

/// What `revoke_refresh_tokens` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// Sent to the provider's revocation endpoint and not refused with a 5xx.
    pub revoked: u64,
    /// The provider has no revocation endpoint (or is no longer configured).
    pub unsupported: u64,
    /// The provider could not be reached, or answered with a 5xx.
    pub failed: u64,
}

/// Revokes refresh tokens at their providers (RFC 7009), a few at a time, as logout does: a
/// provider that refuses or cannot be reached is logged, and the sessions stay ended.
pub async fn revoke_refresh_tokens(
    providers: &ProviderRegistry,
    tokens: Vec<(String, SecretString)>,
) -> Revoked {
    let outcomes: Vec<Option<bool>> = futures_util::stream::iter(tokens)
        .map(|(provider_id, token)| async move {
            let Some(provider) = providers.get(&provider_id) else {
                return Some(false);
            };
            match revocation::revoke(provider, &providers.http, &token, true).await {
                Ok(sent) => Some(sent),
                Err(e) => {
                    tracing::warn!(provider = %provider_id, error = %e, "revoking the refresh token of an ended session failed");
                    None
                }
            }
        })
        .buffer_unordered(REVOCATIONS_IN_FLIGHT)
        .collect()
        .await;
    let mut revoked = Revoked::default();
    for outcome in outcomes {
        match outcome {
            Some(true) => revoked.revoked += 1,
            Some(false) => revoked.unsupported += 1,
            None => revoked.failed += 1,
        }
    }
    revoked
}

/// How long a reply waits for the revocations of the sessions it ended. They go on in the
/// background after that, so a provider that is slow or down delays the reply by this much
/// at most, and never fails it.
pub const REVOCATION_WAIT: Duration = Duration::from_secs(2);

/// Revokes `tokens` in a task of its own, waiting for it at most `REVOCATION_WAIT`.
pub async fn revoke_without_holding_the_reply(
    providers: Arc<ProviderRegistry>,
    tokens: Vec<(String, SecretString)>,
) {
    if tokens.is_empty() {
        return;
    }
    let task = tokio::spawn(async move { revoke_refresh_tokens(&providers, tokens).await });
    if tokio::time::timeout(REVOCATION_WAIT, task).await.is_err() {
        tracing::warn!("revocations of ended sessions go on after the reply");
    }
}
