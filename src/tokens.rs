//! "A fresh access token for this session (or for courier itself) at this provider."
//!
//! A session's token is refreshed when it expires within 60 s, or when a service rejected it.
//! Refreshes are single-flight everywhere: within an instance, callers for one session queue on
//! an in-process lock; across instances, the refresh runs inside a transaction holding the
//! token row's lock (`SELECT … FOR UPDATE`), which Postgres keeps for as long as the
//! transaction lives — it cannot expire under a slow provider. Whoever gets the lock second
//! finds the token fresh and uses it. The rotated refresh token is committed in that same
//! transaction; a provider that cannot be reached rolls it back, leaving the stored tokens as
//! they were. `invalid_grant` ends the session.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::crypto::KeyRing;
use crate::db;
use crate::error::ApiError;
use crate::oidc::ProviderRegistry;
use crate::oidc::grants::{self, GrantError};

/// A token is refreshed when it expires within this margin.
pub const REFRESH_MARGIN: Duration = Duration::seconds(60);

/// Tokens as kept server-side. Debug output is redacted by `SecretString`.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the session has ended")]
    SessionEnded,
    #[error("the provider no longer accepts the grant")]
    ReauthRequired,
    #[error("the provider is unavailable: {0}")]
    ProviderUnavailable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Sealed(#[from] db::session_tokens::LoadError),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::SessionEnded => ApiError::LoginRequired,
            TokenError::ReauthRequired => ApiError::ReauthRequired,
            TokenError::ProviderUnavailable(detail) => {
                tracing::warn!(%detail, "token refresh failed");
                ApiError::UpstreamUnavailable("the provider cannot refresh the token now".into())
            }
            TokenError::Database(e) => e.into(),
            TokenError::Sealed(db::session_tokens::LoadError::Database(e)) => e.into(),
            TokenError::Sealed(e) => ApiError::internal(e),
        }
    }
}

/// One async lock per key, made on demand.
pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    pub async fn lock(&self, key: &K) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().expect("lock map is never poisoned");
            if locks.len() > 1024 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(key.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

struct CachedToken {
    access_token: SecretString,
    expires_at: Option<DateTime<Utc>>,
}

/// A client-credentials token is cached per provider and scope list.
type ClientTokenKey = (String, Vec<String>);

pub struct TokenService {
    pool: PgPool,
    keys: Arc<KeyRing>,
    providers: Arc<ProviderRegistry>,
    clock: SharedClock,
    session_locks: KeyedLocks<Uuid>,
    client_tokens: KeyedLocks<ClientTokenKey>,
    client_cache: Mutex<HashMap<ClientTokenKey, Arc<CachedToken>>>,
}

impl TokenService {
    pub fn new(
        pool: PgPool,
        keys: Arc<KeyRing>,
        providers: Arc<ProviderRegistry>,
        clock: SharedClock,
    ) -> Self {
        Self {
            pool,
            keys,
            providers,
            clock,
            session_locks: KeyedLocks::default(),
            client_tokens: KeyedLocks::default(),
            client_cache: Mutex::new(HashMap::new()),
        }
    }

    fn is_fresh(&self, tokens: &TokenSet) -> bool {
        tokens
            .expires_at
            .is_none_or(|at| at > self.clock.now() + REFRESH_MARGIN)
    }

    /// A fresh access token of the session's login provider.
    pub async fn session_access_token(&self, session_id: Uuid) -> Result<SecretString, TokenError> {
        self.session_token(session_id, None).await
    }

    /// A new access token after a service rejected `rejected`: refreshes unless another request
    /// already replaced that token.
    pub async fn session_access_token_after_rejection(
        &self,
        session_id: Uuid,
        rejected: &SecretString,
    ) -> Result<SecretString, TokenError> {
        self.session_token(session_id, Some(rejected)).await
    }

    #[tracing::instrument(skip(self, rejected), fields(forced = rejected.is_some()))]
    async fn session_token(
        &self,
        session_id: Uuid,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, TokenError> {
        let usable = |tokens: &TokenSet| match rejected {
            Some(r) if tokens.access_token.expose_secret() == r.expose_secret() => false,
            _ => self.is_fresh(tokens),
        };
        let current = db::session_tokens::get(&self.pool, &self.keys, session_id)
            .await?
            .ok_or(TokenError::SessionEnded)?;
        if usable(&current.tokens) {
            return Ok(current.tokens.access_token);
        }

        let _in_process = self.session_locks.lock(&session_id).await;
        let mut tx = self.pool.begin().await?;
        let stored = db::session_tokens::get_for_update(&mut tx, &self.keys, session_id)
            .await?
            .ok_or(TokenError::SessionEnded)?;
        if usable(&stored.tokens) {
            return Ok(stored.tokens.access_token);
        }
        let provider = self.providers.get(&stored.provider).ok_or_else(|| {
            TokenError::ProviderUnavailable("provider no longer configured".into())
        })?;
        let now = self.clock.now();
        match grants::refresh(
            provider,
            &self.providers.http,
            &stored.tokens,
            &stored.subject,
            now,
        )
        .await
        {
            Ok(refreshed) => {
                db::session_tokens::update(&mut tx, &self.keys, session_id, &refreshed).await?;
                tx.commit().await?;
                tracing::info!(provider = %provider.id(), "session token refreshed");
                Ok(refreshed.access_token)
            }
            Err(GrantError::InvalidGrant) => {
                // The provider ended the grant: the session ends with it.
                db::sessions::delete(&mut tx, session_id).await?;
                tx.commit().await?;
                tracing::info!(provider = %provider.id(), "refresh refused (invalid_grant); session ended");
                Err(TokenError::ReauthRequired)
            }
            Err(e) => Err(TokenError::ProviderUnavailable(e.to_string())),
        }
    }

    /// courier's own client-credentials token at `provider` for `scopes`, cached until shortly
    /// before it expires and shared by all users of this instance.
    pub async fn client_access_token(
        &self,
        provider_id: &str,
        scopes: &[String],
    ) -> Result<SecretString, TokenError> {
        let key = (provider_id.to_owned(), scopes.to_vec());
        let cached = |this: &Self| {
            this.client_cache
                .lock()
                .expect("cache lock is never poisoned")
                .get(&key)
                .filter(|t| {
                    t.expires_at
                        .is_none_or(|at| at > this.clock.now() + REFRESH_MARGIN)
                })
                .map(|t| t.access_token.clone())
        };
        if let Some(token) = cached(self) {
            return Ok(token);
        }
        let _flight = self.client_tokens.lock(&key).await;
        if let Some(token) = cached(self) {
            return Ok(token);
        }
        let provider = self
            .providers
            .get(provider_id)
            .ok_or_else(|| TokenError::ProviderUnavailable("provider not configured".into()))?;
        let (access_token, expires_at) =
            grants::client_credentials(provider, &self.providers.http, scopes, self.clock.now())
                .await
                .map_err(|e| TokenError::ProviderUnavailable(e.to_string()))?;
        self.client_cache
            .lock()
            .expect("cache lock is never poisoned")
            .insert(
                key,
                Arc::new(CachedToken {
                    access_token: access_token.clone(),
                    expires_at,
                }),
            );
        Ok(access_token)
    }
}
