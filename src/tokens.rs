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
//!
//! Opened access tokens are cached in memory (`crate::cache`) so that a request with a fresh
//! token costs no database round trip; a refresh always works on the locked row.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::{self, AppCache};
use crate::clock::SharedClock;
use crate::crypto::KeyRing;
use crate::error::ApiError;
use crate::oidc::ProviderRegistry;
use crate::oidc::grants::{self, GrantError};
use crate::{db, fault};

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
    #[error("the user has no account linked at this provider")]
    NotConnected,
    #[error("the linked account must be connected again")]
    ConnectionNeedsReauth,
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
            // The route that knows the service answers these with its connect URL.
            TokenError::NotConnected | TokenError::ConnectionNeedsReauth => ApiError::internal(
                anyhow::anyhow!("a linked-account error reached the API unmapped"),
            ),
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

/// Whose tokens: a session's (login provider), or a user's linked account at a provider.
#[derive(Debug, Clone, Copy)]
enum Owner<'a> {
    Session(Uuid),
    Linked { user_id: Uuid, provider: &'a str },
}

impl Owner<'_> {
    /// The key of its lock and its cache entry.
    fn key(&self) -> String {
        match self {
            Owner::Session(id) => cache::session_key(*id),
            Owner::Linked { user_id, provider } => cache::linked_key(*user_id, provider),
        }
    }

    fn missing(&self) -> TokenError {
        match self {
            Owner::Session(_) => TokenError::SessionEnded,
            Owner::Linked { .. } => TokenError::NotConnected,
        }
    }
}

/// What the cache keeps of a token row: never the refresh token.
#[derive(Debug, Clone)]
pub struct CachedAccess {
    access_token: SecretString,
    expires_at: Option<DateTime<Utc>>,
    needs_reauth: bool,
}

/// A token row, whichever table it lives in.
struct Stored {
    provider: String,
    subject: String,
    tokens: TokenSet,
    needs_reauth: bool,
}

impl Stored {
    fn access(&self) -> CachedAccess {
        CachedAccess {
            access_token: self.tokens.access_token.clone(),
            expires_at: self.tokens.expires_at,
            needs_reauth: self.needs_reauth,
        }
    }

    fn from_session(s: db::session_tokens::SessionTokens) -> Self {
        Stored {
            provider: s.provider,
            subject: s.subject,
            tokens: s.tokens,
            needs_reauth: false,
        }
    }

    fn from_linked(a: db::linked_accounts::LinkedAccount, provider: &str) -> Self {
        Stored {
            provider: provider.to_owned(),
            subject: a.subject,
            tokens: a.tokens,
            needs_reauth: a.status == db::linked_accounts::Status::ReauthRequired,
        }
    }
}

/// A client-credentials token is cached per provider and scope list.
type ClientTokenKey = (String, Vec<String>);

pub struct TokenService {
    pool: PgPool,
    cache: Arc<AppCache>,
    keys: Arc<KeyRing>,
    providers: Arc<ProviderRegistry>,
    clock: SharedClock,
    locks: KeyedLocks<String>,
    client_tokens: KeyedLocks<ClientTokenKey>,
    client_cache: Mutex<HashMap<ClientTokenKey, Arc<CachedToken>>>,
}

impl TokenService {
    pub fn new(
        pool: PgPool,
        cache: Arc<AppCache>,
        keys: Arc<KeyRing>,
        providers: Arc<ProviderRegistry>,
        clock: SharedClock,
    ) -> Self {
        Self {
            pool,
            cache,
            keys,
            providers,
            clock,
            locks: KeyedLocks::default(),
            client_tokens: KeyedLocks::default(),
            client_cache: Mutex::new(HashMap::new()),
        }
    }

    fn is_fresh(&self, expires_at: Option<DateTime<Utc>>) -> bool {
        expires_at.is_none_or(|at| at > self.clock.now() + REFRESH_MARGIN)
    }

    /// The owner's access token as the cache has it, else as Postgres has it.
    async fn current(&self, owner: Owner<'_>, key: &str) -> Result<CachedAccess, TokenError> {
        if let Some(access) = self.cache.token(key) {
            return Ok(access);
        }
        let epoch = self.cache.epoch();
        let access = self.load(owner).await?.ok_or(owner.missing())?.access();
        self.cache.put_token(epoch, key.to_owned(), access.clone());
        Ok(access)
    }

    /// A fresh access token of the session's login provider.
    pub async fn session_access_token(&self, session_id: Uuid) -> Result<SecretString, TokenError> {
        self.fresh_token(Owner::Session(session_id), None).await
    }

    /// A new access token after a service rejected `rejected`: refreshes unless another request
    /// already replaced that token.
    pub async fn session_access_token_after_rejection(
        &self,
        session_id: Uuid,
        rejected: &SecretString,
    ) -> Result<SecretString, TokenError> {
        self.fresh_token(Owner::Session(session_id), Some(rejected))
            .await
    }

    /// A fresh access token of the user's linked account at `provider`.
    pub async fn linked_access_token(
        &self,
        user_id: Uuid,
        provider: &str,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, TokenError> {
        self.fresh_token(Owner::Linked { user_id, provider }, rejected)
            .await
    }

    async fn load(&self, owner: Owner<'_>) -> Result<Option<Stored>, TokenError> {
        Ok(match owner {
            Owner::Session(id) => db::session_tokens::get(&self.pool, &self.keys, id)
                .await?
                .map(Stored::from_session),
            Owner::Linked { user_id, provider } => {
                db::linked_accounts::get(&self.pool, &self.keys, user_id, provider)
                    .await?
                    .map(|a| Stored::from_linked(a, provider))
            }
        })
    }

    async fn load_for_update(
        &self,
        conn: &mut sqlx::PgConnection,
        owner: Owner<'_>,
    ) -> Result<Option<Stored>, TokenError> {
        Ok(match owner {
            Owner::Session(id) => db::session_tokens::get_for_update(conn, &self.keys, id)
                .await?
                .map(Stored::from_session),
            Owner::Linked { user_id, provider } => {
                db::linked_accounts::get_for_update(conn, &self.keys, user_id, provider)
                    .await?
                    .map(|a| Stored::from_linked(a, provider))
            }
        })
    }

    #[tracing::instrument(skip(self, rejected), fields(forced = rejected.is_some()))]
    async fn fresh_token(
        &self,
        owner: Owner<'_>,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, TokenError> {
        let usable = |access: &CachedAccess| -> Result<bool, TokenError> {
            if access.needs_reauth {
                return Err(TokenError::ConnectionNeedsReauth);
            }
            Ok(match rejected {
                Some(r) if access.access_token.expose_secret() == r.expose_secret() => false,
                _ => self.is_fresh(access.expires_at),
            })
        };
        let key = owner.key();
        let current = self.current(owner, &key).await?;
        if usable(&current)? {
            return Ok(current.access_token);
        }

        let _in_process = self.locks.lock(&key).await;
        let mut tx = self.pool.begin().await?;
        let stored = self
            .load_for_update(&mut tx, owner)
            .await?
            .ok_or(owner.missing())?;
        if usable(&stored.access())? {
            return Ok(stored.tokens.access_token);
        }
        let provider = self.providers.get(&stored.provider).ok_or_else(|| {
            TokenError::ProviderUnavailable("provider no longer configured".into())
        })?;
        let now = self.clock.now();
        fault::point("refresh:before_grant").await;
        let outcome = grants::refresh(
            provider,
            &self.providers.http,
            &stored.tokens,
            &stored.subject,
            now,
        )
        .await;
        let label = match &outcome {
            Ok(_) => "refreshed",
            Err(GrantError::InvalidGrant) => "invalid_grant",
            Err(GrantError::Unavailable(_)) => "unavailable",
            Err(GrantError::Failed(_)) => "failed",
        };
        metrics::counter!(
            "courier_token_refreshes_total",
            "provider" => provider.id().to_owned(),
            "outcome" => label
        )
        .increment(1);
        match outcome {
            Ok(refreshed) => {
                fault::point("refresh:after_grant").await;
                match owner {
                    Owner::Session(id) => {
                        db::session_tokens::update(&mut tx, &self.keys, id, &refreshed).await?
                    }
                    Owner::Linked { user_id, provider } => {
                        db::linked_accounts::update_tokens(
                            &mut tx, &self.keys, user_id, provider, &refreshed,
                        )
                        .await?
                    }
                }
                fault::point("refresh:before_commit").await;
                tx.commit().await?;
                fault::point("refresh:after_commit").await;
                self.cache.invalidate(&key);
                tracing::info!(provider = %provider.id(), "token refreshed");
                Ok(refreshed.access_token)
            }
            Err(GrantError::InvalidGrant) => {
                // The provider ended the grant. A session ends with it; a linked account waits
                // for the user to connect it again.
                let mut announced = Vec::new();
                let outcome = match owner {
                    Owner::Session(id) => {
                        db::sessions::delete(&mut tx, id).await?;
                        announced.push(cache::announce(&mut tx, &key).await?);
                        TokenError::ReauthRequired
                    }
                    Owner::Linked { user_id, provider } => {
                        db::linked_accounts::mark_reauth_required(&mut tx, user_id, provider)
                            .await?;
                        TokenError::ConnectionNeedsReauth
                    }
                };
                tx.commit().await?;
                self.cache.invalidate(&key);
                self.cache.confirm(&self.pool, &announced).await;
                tracing::info!(provider = %provider.id(), "refresh refused (invalid_grant)");
                Err(outcome)
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
