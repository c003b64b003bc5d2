//! "A fresh access token for this session (or for courier itself) at this provider."
//!
//! A token is refreshed when it expires within the shorter of 60 s and a quarter of its
//! lifetime, or when a service rejected it. Refreshes are single-flight everywhere, and no
//! database connection is held while the provider answers (docs/tokens.md):
//! - within an instance, callers for one owner queue on an in-process lock, and whoever gets
//!   it next reads Postgres again and uses a token that the one before it got;
//! - across instances, the one grant is sent by whoever holds the owner's lease
//!   (`db::refresh_leases`): a row taken with a 10 s expiry and renewed while the grant is in
//!   flight, so that a holder that dies frees it within seconds. Others wait, reading the
//!   token row, until it changes or the lease frees;
//! - the result is stored only over the tokens it started from (a generation number on the
//!   row, compare-and-swap), so a late refresh can never overwrite a newer one.
//!
//! Token-endpoint answers are classified in `oidc::token_endpoint`: a dead grant ends the
//! session (a linked account waits to be connected again); courier's own misconfiguration and
//! an unavailable provider keep every token and pause new grants for that owner for 5 s,
//! doubling up to 60 s, while a token that has not yet expired is still used.
//!
//! Opened access tokens are cached in memory (`crate::cache`) so that a request with a fresh
//! token costs no database round trip; a refresh always works from the row in Postgres.
//!
//! A service may get a token made for it (docs/tokens.md, "The token each service gets"): one
//! restricted to its RFC 8707 `resource`, got with the owner's refresh token under the owner's
//! single flight, or the user's token exchanged for it (RFC 8693) under a lease of its own.
//! Both are kept per owner and target in `service_tokens`. With DPoP, each token carries the
//! key of its owner, which every grant and call proves possession of.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::clock::SharedClock;
use crate::crypto::KeyRing;
use crate::db::DbError;
use crate::db::refresh_leases::{self, Blocked};
use crate::domain::tokens::{CachedAccess, OwnerKey};
use crate::dpop::DpopKey;
use crate::oidc::ProviderRegistry;
use crate::oidc::grants::{self, ExchangeTarget, GrantError};
use crate::{db, fault};

// Where they lived before `domain::tokens`; callers may name them here still.
pub use crate::domain::tokens::{AccessToken, TokenSet};

/// A token is refreshed when it expires within this margin, or within a quarter of its
/// lifetime when that is shorter.
pub const REFRESH_MARGIN: Duration = Duration::seconds(60);

/// How long a request waits for a refresh that another instance is making.
const WAIT_FOR_OTHERS: std::time::Duration = std::time::Duration::from_secs(20);
/// How often the holder of a lease renews it while the provider answers.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The margin before `expires_at` at which a token obtained at `obtained_at` is due.
pub fn refresh_margin(
    obtained_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
) -> Duration {
    match (obtained_at, expires_at) {
        (Some(from), Some(to)) if to > from => REFRESH_MARGIN.min((to - from) / 4),
        _ => REFRESH_MARGIN,
    }
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
    /// The provider failed, or refused courier's own request; retry after this many seconds.
    #[error("the provider cannot issue a token now")]
    ProviderUnavailable { retry_after_secs: u64 },
    /// The provider will not issue a token for this service's resource or audience
    /// (`invalid_target`).
    #[error("the provider refused to issue a token for this service")]
    NotAllowed,
    #[error(transparent)]
    Storage(#[from] DbError),
    #[error(transparent)]
    Sealed(#[from] db::session_tokens::LoadError),
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
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if locks.len() > 1024 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(key.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Whose tokens: a session's (login provider), or a user's linked account at a provider.
#[derive(Debug, Clone, Copy)]
enum Owner<'a> {
    Session(Uuid),
    Linked { user_id: Uuid, provider: &'a str },
}

impl Owner<'_> {
    /// The key of its locks, its lease and its cache entry.
    fn key(&self) -> OwnerKey {
        match self {
            Owner::Session(id) => OwnerKey::Session(*id),
            Owner::Linked { user_id, provider } => OwnerKey::linked(*user_id, provider),
        }
    }

    fn missing(&self) -> TokenError {
        match self {
            Owner::Session(_) => TokenError::SessionEnded,
            Owner::Linked { .. } => TokenError::NotConnected,
        }
    }

    fn dead(&self) -> TokenError {
        match self {
            Owner::Session(_) => TokenError::ReauthRequired,
            Owner::Linked { .. } => TokenError::ConnectionNeedsReauth,
        }
    }
}

/// A token row, whichever table it lives in.
struct Stored {
    provider: String,
    subject: String,
    tokens: TokenSet,
    generation: i64,
    after_rejection: bool,
    needs_reauth: bool,
    dpop: Option<Arc<DpopKey>>,
}

impl Stored {
    fn access(&self) -> CachedAccess {
        CachedAccess {
            access_token: self.tokens.access_token.clone(),
            expires_at: self.tokens.expires_at,
            obtained_at: self.tokens.obtained_at,
            generation: self.generation,
            after_rejection: self.after_rejection,
            needs_reauth: self.needs_reauth,
            dpop: self.dpop.clone(),
        }
    }

    fn from_session(s: db::session_tokens::SessionTokens) -> Self {
        Stored {
            provider: s.provider,
            subject: s.subject,
            tokens: s.tokens,
            generation: s.generation,
            after_rejection: s.after_rejection,
            needs_reauth: false,
            dpop: s.dpop_key.map(Arc::new),
        }
    }

    fn from_linked(a: db::linked_accounts::LinkedAccount, provider: &str) -> Self {
        Stored {
            provider: provider.to_owned(),
            subject: a.subject,
            tokens: a.tokens,
            generation: a.generation,
            after_rejection: a.after_rejection,
            needs_reauth: a.status == db::linked_accounts::Status::ReauthRequired,
            dpop: a.dpop_key.map(Arc::new),
        }
    }
}

/// A token made for one target from an owner's grant, as the cache keeps it. It carries the
/// owner's `needs_reauth`, so a linked account waiting to be connected again is never used
/// through it, and the owner's DPoP key, which it is bound to.
fn service_access(token: db::service_tokens::ServiceToken, owner: &CachedAccess) -> CachedAccess {
    CachedAccess {
        access_token: token.access_token,
        expires_at: token.expires_at,
        obtained_at: token.obtained_at,
        generation: token.generation,
        after_rejection: token.after_rejection,
        needs_reauth: owner.needs_reauth,
        dpop: owner.dpop.clone(),
    }
}

/// The target under which a resource's token is kept in `service_tokens`.
fn resource_target(resource: &str) -> String {
    format!("resource:{resource}")
}

/// The target under which a service's exchanged token is kept in `service_tokens`.
fn exchange_target(service: &str) -> String {
    format!("exchange:{service}")
}

/// A service whose calls carry the user's token exchanged for one made for it (RFC 8693).
#[derive(Debug, Clone, Copy)]
pub struct ExchangeFor<'a> {
    /// The service's name: its token is kept under it, and never given to another.
    pub service: &'a str,
    /// The provider the user's token comes from and is exchanged at.
    pub provider: &'a str,
    /// Whether the user's token there is a linked account's (the session logged in with
    /// another provider) rather than the session's own.
    pub linked: bool,
    pub target: ExchangeTarget<'a>,
}

/// A client-credentials token is cached per provider, scope list and resource.
type ClientTokenKey = (String, Vec<String>, Option<String>);

/// courier's own client token at one provider, and the pause after a failed grant.
#[derive(Default)]
struct ClientTokenState {
    token: Option<TokenSet>,
    failures: u32,
    retry_at: Option<DateTime<Utc>>,
}

pub struct TokenService {
    pool: PgPool,
    cache: Arc<AppCache>,
    keys: Arc<KeyRing>,
    providers: Arc<ProviderRegistry>,
    clock: SharedClock,
    /// This instance, as the holder of refresh leases.
    instance: Uuid,
    locks: KeyedLocks<OwnerKey>,
    /// Per owner and exchange service: exchanges of different services do not wait for
    /// each other.
    exchange_locks: KeyedLocks<String>,
    client_tokens: KeyedLocks<ClientTokenKey>,
    client_cache: Mutex<HashMap<ClientTokenKey, ClientTokenState>>,
    /// courier's own DPoP key per provider, as read from `client_dpop_keys`.
    client_dpop: Mutex<HashMap<String, Arc<DpopKey>>>,
}

/// Logs a failed grant that kept the tokens: courier's own misconfiguration as an ERROR naming
/// the provider (an operator must act), an unavailable provider as a warning.
fn log_kept_failure(provider: &str, grant: &str, failure: &GrantError) {
    match failure {
        GrantError::Misconfigured(reason) => tracing::error!(
            provider,
            grant,
            %reason,
            "the provider refused courier's request: check the provider's client configuration"
        ),
        _ => tracing::warn!(provider, grant, error = %failure, "grant failed; tokens kept"),
    }
}

/// The pause after `failures` failed grants in a row: 5 s, doubling, at most 60 s.
fn backoff(failures: u32) -> Duration {
    Duration::seconds((5i64 << failures.min(4)).min(60))
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
            instance: Uuid::new_v4(),
            locks: KeyedLocks::default(),
            exchange_locks: KeyedLocks::default(),
            client_tokens: KeyedLocks::default(),
            client_cache: Mutex::new(HashMap::new()),
            client_dpop: Mutex::new(HashMap::new()),
        }
    }

    /// Not yet due for a refresh.
    fn is_fresh(
        &self,
        obtained_at: Option<DateTime<Utc>>,
        expires_at: Option<DateTime<Utc>>,
    ) -> bool {
        expires_at.is_none_or(|at| at > self.clock.now() + refresh_margin(obtained_at, expires_at))
    }

    /// Still accepted by a service, due or not.
    fn is_unexpired(&self, expires_at: Option<DateTime<Utc>>) -> bool {
        expires_at.is_none_or(|at| at > self.clock.now())
    }

    fn retry_after(&self, at: DateTime<Utc>) -> TokenError {
        TokenError::ProviderUnavailable {
            retry_after_secs: (at - self.clock.now()).num_seconds().clamp(1, 60) as u64,
        }
    }

    /// The owner's access token as the cache has it, else as Postgres has it.
    async fn current(&self, owner: Owner<'_>, key: &OwnerKey) -> Result<CachedAccess, TokenError> {
        if let Some(access) = self.cache.token(key) {
            return Ok(access);
        }
        let epoch = self.cache.epoch();
        let access = self.load(owner).await?.ok_or(owner.missing())?.access();
        self.cache.put_token(epoch, key.clone(), access.clone());
        Ok(access)
    }

    /// The owner's token for `target` as the cache has it, else as Postgres has it; `None`
    /// when there is none yet.
    async fn current_service_token(
        &self,
        owner: Owner<'_>,
        key: &OwnerKey,
        target: &str,
    ) -> Result<Option<CachedAccess>, TokenError> {
        if let Some(access) = self.cache.service_token(key, target) {
            return Ok(Some(access));
        }
        let epoch = self.cache.epoch();
        let own = self.current(owner, key).await?;
        let Some(token) = db::service_tokens::get(&self.pool, &self.keys, key, target).await?
        else {
            return Ok(None);
        };
        let access = service_access(token, &own);
        self.cache
            .put_service_token(epoch, key.clone(), target.to_owned(), access.clone());
        Ok(Some(access))
    }

    /// A fresh access token of the session's login provider, restricted to `resource` when one
    /// is given (RFC 8707).
    pub async fn session_access_token(
        &self,
        session_id: Uuid,
        resource: Option<&str>,
    ) -> Result<AccessToken, TokenError> {
        self.fresh(Owner::Session(session_id), resource, None).await
    }

    /// A new access token after a service rejected `rejected`: refreshes unless another request
    /// already replaced that token.
    pub async fn session_access_token_after_rejection(
        &self,
        session_id: Uuid,
        resource: Option<&str>,
        rejected: &SecretString,
    ) -> Result<AccessToken, TokenError> {
        self.fresh(Owner::Session(session_id), resource, Some(rejected))
            .await
    }

    /// A fresh access token of the user's linked account at `provider` (for `resource`, when
    /// one is given).
    pub async fn linked_access_token(
        &self,
        user_id: Uuid,
        provider: &str,
        resource: Option<&str>,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken, TokenError> {
        self.fresh(Owner::Linked { user_id, provider }, resource, rejected)
            .await
    }

    async fn fresh(
        &self,
        owner: Owner<'_>,
        resource: Option<&str>,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken, TokenError> {
        match resource {
            None => self.fresh_token(owner, rejected).await,
            Some(resource) => self.fresh_resource_token(owner, resource, rejected).await,
        }
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

    /// The token to use as it stands, if it is one: not needing reauthorization, not the
    /// rejected one, and fresh.
    fn usable(
        &self,
        access: &CachedAccess,
        rejected: Option<&SecretString>,
    ) -> Result<Option<AccessToken>, TokenError> {
        Ok(self.is_usable(access, rejected)?.then(|| access.token()))
    }

    /// A request whose grant another holds up. While the provider backs off, the token it has
    /// (`meanwhile`) is used if it still works, else 503 with `Retry-After`. While another
    /// instance holds the lease, it waits for its result or for its lease to free (the holder
    /// renews it while it works; a dead holder's lapses in 10 s): `Ok(None)` after a pause
    /// that doubles up to 250 ms, until `WAIT_FOR_OTHERS` has passed.
    async fn while_blocked(
        &self,
        blocked: Blocked,
        meanwhile: Option<&CachedAccess>,
        rejected: Option<&SecretString>,
        waiting_since: Instant,
        pause: &mut std::time::Duration,
    ) -> Result<Option<AccessToken>, TokenError> {
        match blocked {
            Blocked::BackingOff { retry_at } => match meanwhile {
                Some(access) if !access.is(rejected) && self.is_unexpired(access.expires_at) => {
                    Ok(Some(access.token()))
                }
                _ => Err(self.retry_after(retry_at)),
            },
            Blocked::Held => {
                if waiting_since.elapsed() > WAIT_FOR_OTHERS {
                    return Err(TokenError::ProviderUnavailable {
                        retry_after_secs: 1,
                    });
                }
                tokio::time::sleep(*pause).await;
                *pause = (*pause * 2).min(std::time::Duration::from_millis(250));
                Ok(None)
            }
        }
    }

    fn is_usable(
        &self,
        access: &CachedAccess,
        rejected: Option<&SecretString>,
    ) -> Result<bool, TokenError> {
        if access.needs_reauth {
            return Err(TokenError::ConnectionNeedsReauth);
        }
        Ok(!access.is(rejected) && self.is_fresh(access.obtained_at, access.expires_at))
    }

    // Debug, not info: an info span here would cost every proxied call a span of its own when
    // the request lines are on (bench/: `clog`).
    #[tracing::instrument(level = "debug", skip(self, rejected), fields(forced = rejected.is_some()))]
    async fn fresh_token(
        &self,
        owner: Owner<'_>,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken, TokenError> {
        let key = owner.key();
        let seen = self.current(owner, &key).await?;
        if self.is_usable(&seen, rejected)? {
            return Ok(seen.into_token());
        }

        let _in_process = self.locks.lock(&key).await;
        let waiting_since = Instant::now();
        let mut pause = std::time::Duration::from_millis(25);
        loop {
            // Postgres, not the cache: whoever held the lock before may have just refreshed.
            let stored = self.load(owner).await?.ok_or(owner.missing())?;
            let access = stored.access();
            if let Some(token) = self.usable(&access, rejected)? {
                return Ok(token);
            }
            // Someone refreshed since this request looked: use their token while it lasts.
            if access.generation != seen.generation
                && !access.is(rejected)
                && self.is_unexpired(access.expires_at)
            {
                return Ok(access.token());
            }
            // Without a refresh token, the grant ends with its access token.
            if stored.tokens.refresh_token.is_none() {
                if !access.is(rejected) && self.is_unexpired(access.expires_at) {
                    return Ok(access.token());
                }
                match self.end_grant(owner, &key, stored.generation).await {
                    Some(ended) => return Err(ended),
                    None => continue,
                }
            }
            match refresh_leases::acquire(&self.pool, &key.to_string(), self.instance).await? {
                None => {
                    // The row was read before the lease was taken: a holder that stored its
                    // refresh and let go in between leaves it stale, and its refresh token
                    // already used. Read it again under the lease.
                    let now = self.load(owner).await?.map(|s| s.generation);
                    if now != Some(stored.generation) {
                        self.release(&key).await;
                        continue;
                    }
                    match self
                        .refresh_under_lease(owner, &key, stored, None, rejected)
                        .await?
                    {
                        Some(token) => return Ok(token),
                        None => continue,
                    }
                }
                Some(blocked) => {
                    let meanwhile = Some(&access);
                    if let Some(token) = self
                        .while_blocked(blocked, meanwhile, rejected, waiting_since, &mut pause)
                        .await?
                    {
                        return Ok(token);
                    }
                }
            }
        }
    }

    /// A fresh token of the owner restricted to `resource` (RFC 8707): got with the owner's
    /// refresh token and kept per (owner, resource). Single flight is the owner's, as for its
    /// own token: one in-process lock and one lease across all its resources, since a refresh
    /// rotates the one refresh token they share. A request that waited reads its own
    /// resource's token again and uses it when someone got one meanwhile.
    // Debug, as `fresh_token`'s: it runs on every call of a service with a `resource`.
    #[tracing::instrument(level = "debug", skip(self, rejected), fields(forced = rejected.is_some()))]
    async fn fresh_resource_token(
        &self,
        owner: Owner<'_>,
        resource: &str,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken, TokenError> {
        let key = owner.key();
        let target = resource_target(resource);
        let seen = self.current_service_token(owner, &key, &target).await?;
        if let Some(seen) = &seen
            && let Some(token) = self.usable(seen, rejected)?
        {
            return Ok(token);
        }

        let _in_process = self.locks.lock(&key).await;
        let waiting_since = Instant::now();
        let mut pause = std::time::Duration::from_millis(25);
        loop {
            let stored = self.load(owner).await?.ok_or(owner.missing())?;
            let own = stored.access();
            let mine = db::service_tokens::get(&self.pool, &self.keys, &key, &target)
                .await?
                .map(|t| service_access(t, &own));
            if let Some(access) = &mine {
                if let Some(token) = self.usable(access, rejected)? {
                    return Ok(token);
                }
                // Someone got a token for this resource since this request looked.
                if Some(access.generation) != seen.as_ref().map(|s| s.generation)
                    && !access.is(rejected)
                    && self.is_unexpired(access.expires_at)
                {
                    return Ok(access.token());
                }
            } else if stored.needs_reauth {
                return Err(TokenError::ConnectionNeedsReauth);
            }
            if stored.tokens.refresh_token.is_none() {
                // Without a refresh token no token can be asked for the resource: the
                // owner's own serves while it lasts, then the grant ends with it.
                let own = stored.access();
                if !own.is(rejected) && self.is_unexpired(own.expires_at) {
                    return Ok(own.token());
                }
                match self.end_grant(owner, &key, stored.generation).await {
                    Some(ended) => return Err(ended),
                    None => continue,
                }
            }
            match refresh_leases::acquire(&self.pool, &key.to_string(), self.instance).await? {
                None => {
                    // A grant may have been stored between the reads above and the lease:
                    // look again now that no one else can.
                    let now_stored = db::service_tokens::get(&self.pool, &self.keys, &key, &target)
                        .await?
                        .map(|t| t.generation);
                    let owner_now = self.load(owner).await?.map(|s| s.generation);
                    if now_stored != mine.as_ref().map(|m| m.generation)
                        || owner_now != Some(stored.generation)
                    {
                        self.release(&key).await;
                        continue;
                    }
                    match self
                        .refresh_under_lease(owner, &key, stored, Some((resource, mine)), rejected)
                        .await?
                    {
                        Some(token) => return Ok(token),
                        None => continue,
                    }
                }
                Some(blocked) => {
                    if let Some(token) = self
                        .while_blocked(blocked, mine.as_ref(), rejected, waiting_since, &mut pause)
                        .await?
                    {
                        return Ok(token);
                    }
                }
            }
        }
    }

    /// The user's token exchanged for one made for `exchange.service` (RFC 8693), kept per
    /// owner and service until it is due. Single flight across instances like a refresh: an
    /// in-process lock and a lease per (owner, service); a request that waited uses the token
    /// the one before it got. A subject token the provider no longer accepts is refreshed
    /// once (the refresh path: a dead grant ends the session) and the exchange sent again.
    // Debug, as `fresh_token`'s: it runs on every call of an exchange service.
    #[tracing::instrument(
        level = "debug",
        skip(self, exchange, rejected),
        fields(service = exchange.service, forced = rejected.is_some())
    )]
    pub async fn exchanged_token(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        exchange: ExchangeFor<'_>,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken, TokenError> {
        let owner = if exchange.linked {
            Owner::Linked {
                user_id,
                provider: exchange.provider,
            }
        } else {
            Owner::Session(session_id)
        };
        let key = owner.key();
        let target = exchange_target(exchange.service);
        let seen = self.current_service_token(owner, &key, &target).await?;
        if let Some(seen) = &seen
            && let Some(token) = self.usable(seen, rejected)?
        {
            return Ok(token);
        }

        let lease = format!("{key}#{target}");
        let _in_process = self.exchange_locks.lock(&lease).await;
        let waiting_since = Instant::now();
        let mut pause = std::time::Duration::from_millis(25);
        loop {
            let own = self.current(owner, &key).await?;
            let mine = db::service_tokens::get(&self.pool, &self.keys, &key, &target)
                .await?
                .map(|t| service_access(t, &own));
            if let Some(access) = &mine {
                if let Some(token) = self.usable(access, rejected)? {
                    return Ok(token);
                }
                if Some(access.generation) != seen.as_ref().map(|s| s.generation)
                    && !access.is(rejected)
                    && self.is_unexpired(access.expires_at)
                {
                    return Ok(access.token());
                }
            }
            // The user's own token, refreshed first when due (the owner's own single flight).
            let subject = self.fresh_token(owner, None).await?;
            match refresh_leases::acquire(&self.pool, &lease, self.instance).await? {
                None => {
                    // Another instance may have stored an exchange while this one got the
                    // subject token: look again now that no one else can.
                    let now_stored = db::service_tokens::get(&self.pool, &self.keys, &key, &target)
                        .await?
                        .map(|t| t.generation);
                    if now_stored != mine.as_ref().map(|m| m.generation) {
                        self.release_lease(&lease).await;
                        continue;
                    }
                    return self
                        .exchange_under_lease(
                            owner, &key, &lease, &target, exchange, subject, mine, rejected,
                        )
                        .await;
                }
                Some(blocked) => {
                    if let Some(token) = self
                        .while_blocked(blocked, mine.as_ref(), rejected, waiting_since, &mut pause)
                        .await?
                    {
                        return Ok(token);
                    }
                }
            }
        }
    }

    /// Sends the exchange, holding its lease, and stores what it gives for the service.
    #[allow(
        clippy::too_many_arguments,
        reason = "one private step of `exchanged_token`"
    )]
    async fn exchange_under_lease(
        &self,
        owner: Owner<'_>,
        key: &OwnerKey,
        lease: &str,
        target: &str,
        exchange: ExchangeFor<'_>,
        mut subject: AccessToken,
        current: Option<CachedAccess>,
        rejected: Option<&SecretString>,
    ) -> Result<AccessToken, TokenError> {
        let Some(provider) = self.providers.get(exchange.provider) else {
            tracing::error!(provider = %exchange.provider, "a service names a provider that is not configured");
            self.release_lease(lease).await;
            return Err(TokenError::ProviderUnavailable {
                retry_after_secs: 60,
            });
        };
        let mut refreshed_subject = false;
        let outcome = loop {
            let outcome = self
                .renewing_lease(
                    lease,
                    grants::exchange(
                        provider,
                        &self.providers.http,
                        &subject.secret,
                        exchange.target,
                        subject.dpop.as_deref(),
                        self.clock.now(),
                    ),
                )
                .await;
            match outcome {
                // The provider no longer takes the user's token: the refresh path, once.
                Err(GrantError::Dead(_)) if !refreshed_subject => {
                    refreshed_subject = true;
                    match self.fresh_token(owner, Some(&subject.secret)).await {
                        Ok(fresh) => subject = fresh,
                        Err(e) => {
                            self.release_lease(lease).await;
                            return Err(e);
                        }
                    }
                }
                other => break other,
            }
        };
        metrics::counter!(
            "courier_token_exchanges_total",
            "provider" => provider.id().to_owned(),
            "outcome" => outcome.as_ref().map_or_else(GrantError::label, |_| "exchanged")
        )
        .increment(1);
        match outcome {
            Ok(tokens) => {
                let forced = rejected.is_some();
                let stored = async {
                    let mut conn = self.pool.acquire().await?;
                    db::service_tokens::upsert(&mut conn, &self.keys, key, target, &tokens, forced)
                        .await
                }
                .await;
                self.release_lease(lease).await;
                self.cache.forget_service_token(key, target);
                if let Err(e) = stored {
                    // The token serves this request; the next one exchanges again.
                    tracing::warn!(error = %e, "an exchanged token could not be stored");
                }
                Ok(AccessToken {
                    secret: tokens.access_token,
                    after_rejection: forced,
                    dpop: subject.dpop.clone(),
                })
            }
            Err(GrantError::InvalidTarget) => {
                tracing::warn!(provider = %provider.id(), service = exchange.service, "the provider will not issue a token for this service");
                self.release_lease(lease).await;
                Err(TokenError::NotAllowed)
            }
            Err(GrantError::Dead(reason)) => {
                // Refused again with a token just refreshed: the provider will not exchange
                // this user's tokens. Nothing of the session is wrong; the call cannot be made.
                tracing::warn!(provider = %provider.id(), service = exchange.service, %reason, "the provider refused to exchange a fresh token");
                self.release_lease(lease).await;
                Err(TokenError::NotAllowed)
            }
            Err(failure) => {
                log_kept_failure(provider.id(), "token-exchange", &failure);
                let retry_at = refresh_leases::back_off(&self.pool, lease, self.instance)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| self.clock.now() + backoff(0));
                if let Some(access) = current
                    && !access.is(rejected)
                    && self.is_unexpired(access.expires_at)
                {
                    return Ok(access.token());
                }
                Err(self.retry_after(retry_at))
            }
        }
    }

    /// Renews this instance's lease on `key` while `work` runs.
    async fn renewing<T>(&self, key: &OwnerKey, work: impl Future<Output = T>) -> T {
        self.renewing_lease(&key.to_string(), work).await
    }

    /// Renews this instance's lease named `key` while `work` runs.
    async fn renewing_lease<T>(&self, key: &str, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let mut ticker = tokio::time::interval(RENEW_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticker.tick() => {
                    match refresh_leases::renew(&self.pool, key, self.instance).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!("refresh lease lost while the provider answered"),
                        Err(e) => tracing::warn!(error = %e, "refresh lease could not be renewed"),
                    }
                }
            }
        }
    }

    /// Sends the one refresh grant of `stored`, holding the owner's lease, and stores what it
    /// gives. With `for_resource` (the resource and its current token), the grant asks for a
    /// token restricted to that resource: it is stored for the resource, while the owner's row
    /// takes only the rotated refresh token (and a new ID token). No database connection is
    /// held while the provider answers. `None` when the provider refused a refresh token that
    /// newer stored tokens have replaced: the caller reads them again.
    async fn refresh_under_lease(
        &self,
        owner: Owner<'_>,
        key: &OwnerKey,
        stored: Stored,
        for_resource: Option<(&str, Option<CachedAccess>)>,
        rejected: Option<&SecretString>,
    ) -> Result<Option<AccessToken>, TokenError> {
        let resource = for_resource.as_ref().map(|(r, _)| *r);
        let Some(provider) = self.providers.get(&stored.provider) else {
            // A rolling deploy removed the provider: nothing to refresh with, nothing to delete.
            tracing::error!(provider = %stored.provider, "tokens name a provider that is not configured");
            self.release(key).await;
            return Err(TokenError::ProviderUnavailable {
                retry_after_secs: 60,
            });
        };
        fault::point("refresh:before_grant").await;
        let outcome = self
            .renewing(
                key,
                grants::refresh(
                    provider,
                    &self.providers.http,
                    &stored.tokens,
                    &stored.subject,
                    resource,
                    stored.dpop.as_deref(),
                    self.clock.now(),
                ),
            )
            .await;
        metrics::counter!(
            "courier_token_refreshes_total",
            "provider" => provider.id().to_owned(),
            "outcome" => outcome.as_ref().map_or_else(GrantError::label, |_| "refreshed")
        )
        .increment(1);
        // What still serves this request when the grant fails: the token it was made for.
        let access = match &for_resource {
            None => Some(stored.access()),
            Some((_, current)) => current.clone(),
        };
        match outcome {
            Ok(refreshed) => {
                fault::point("refresh:after_grant").await;
                let forced = rejected.is_some();
                fault::point("refresh:before_commit").await;
                let (own, for_target) = match resource {
                    None => ((refreshed.clone(), forced), None),
                    // The owner keeps its own access token; the new one is the resource's.
                    Some(resource) => (
                        (
                            TokenSet {
                                access_token: stored.tokens.access_token.clone(),
                                expires_at: stored.tokens.expires_at,
                                obtained_at: stored.tokens.obtained_at,
                                scopes: stored.tokens.scopes.clone(),
                                refresh_token: refreshed.refresh_token.clone(),
                                id_token: refreshed.id_token.clone(),
                            },
                            stored.after_rejection,
                        ),
                        Some((resource_target(resource), &refreshed, forced)),
                    ),
                };
                let result = self
                    .store_refreshed(owner, stored.generation, &own.0, own.1, for_target)
                    .await;
                fault::point("refresh:after_commit").await;
                self.release(key).await;
                self.cache.invalidate(key);
                match result? {
                    true => tracing::info!(provider = %provider.id(), "token refreshed"),
                    // Only a holder slower than its lease, or an owner gone meanwhile, gets
                    // here; the token it got still serves this request.
                    false => {
                        if self.load(owner).await?.is_none() {
                            return Err(owner.missing());
                        }
                        tracing::warn!(provider = %provider.id(), "a newer refresh was stored first; this one serves one request");
                    }
                }
                Ok(Some(AccessToken {
                    secret: refreshed.access_token,
                    after_rejection: forced,
                    dpop: stored.dpop.clone(),
                }))
            }
            Err(GrantError::Dead(reason)) => {
                tracing::info!(provider = %provider.id(), %reason, "refresh refused");
                let ended = self.end_grant(owner, key, stored.generation).await;
                self.release(key).await;
                match ended {
                    Some(ended) => Err(ended),
                    None => Ok(None),
                }
            }
            Err(GrantError::InvalidTarget) => {
                tracing::warn!(provider = %provider.id(), resource, "the provider will not issue a token for this resource");
                self.release(key).await;
                Err(TokenError::NotAllowed)
            }
            Err(failure) => {
                log_kept_failure(provider.id(), "refresh", &failure);
                let retry_at =
                    refresh_leases::back_off(&self.pool, &key.to_string(), self.instance)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| self.clock.now() + backoff(0));
                if let Some(access) = access
                    && !access.is(rejected)
                    && self.is_unexpired(access.expires_at)
                {
                    return Ok(Some(access.token()));
                }
                Err(self.retry_after(retry_at))
            }
        }
    }

    /// Stores a refresh's result. Postgres may blink right after the provider rotated the
    /// refresh token: the write is tried again for a few seconds before the new tokens are
    /// given up (docs/tokens.md, "What a fault can cost").
    async fn store_refreshed(
        &self,
        owner: Owner<'_>,
        generation: i64,
        tokens: &TokenSet,
        forced: bool,
        for_target: Option<(String, &TokenSet, bool)>,
    ) -> Result<bool, TokenError> {
        let mut pause = std::time::Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            let result = self
                .store_once(owner, generation, tokens, forced, for_target.as_ref())
                .await;
            match result {
                Err(e) if e.is_unavailable() && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return Ok(other?),
            }
        }
    }

    /// One attempt of `store_refreshed`: the owner's row (compare-and-swap on `generation`) and,
    /// when the grant was for a target, that target's token, in one transaction.
    async fn store_once(
        &self,
        owner: Owner<'_>,
        generation: i64,
        tokens: &TokenSet,
        forced: bool,
        for_target: Option<&(String, &TokenSet, bool)>,
    ) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let stored = match owner {
            Owner::Session(id) => {
                db::session_tokens::store_refreshed(
                    &mut tx, &self.keys, id, generation, tokens, forced,
                )
                .await?
            }
            Owner::Linked { user_id, provider } => {
                db::linked_accounts::store_refreshed(
                    &mut tx, &self.keys, user_id, provider, generation, tokens, forced,
                )
                .await?
            }
        };
        if stored && let Some((target, token, forced)) = for_target {
            db::service_tokens::upsert(&mut tx, &self.keys, &owner.key(), target, token, *forced)
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// The provider ended the grant of the tokens at `generation`. A session ends with it (on
    /// every instance before this returns); a linked account waits for the user to connect it
    /// again. `None` when newer tokens were stored meanwhile: an instance that outlived its
    /// lease sent a refresh token that another had already rotated, and the newer tokens stand.
    async fn end_grant(
        &self,
        owner: Owner<'_>,
        key: &OwnerKey,
        generation: i64,
    ) -> Option<TokenError> {
        let ended = match owner {
            Owner::Session(id) => {
                crate::session::end::end_session_at_generation(
                    &self.pool,
                    &self.cache,
                    id,
                    generation,
                )
                .await
            }
            Owner::Linked { user_id, provider } => {
                db::linked_accounts::mark_reauth_required(&self.pool, user_id, provider, generation)
                    .await
            }
        };
        self.cache.invalidate(key);
        match ended {
            Ok(true) => Some(owner.dead()),
            Ok(false) => {
                tracing::warn!(
                    "a refresh was refused, but newer tokens were stored meanwhile: they stand"
                );
                None
            }
            Err(e) => Some(e.into()),
        }
    }

    async fn release(&self, key: &OwnerKey) {
        self.release_lease(&key.to_string()).await
    }

    async fn release_lease(&self, key: &str) {
        if let Err(e) = refresh_leases::release(&self.pool, key, self.instance).await {
            // It lapses by itself within seconds.
            tracing::warn!(error = %e, "refresh lease could not be released");
        }
    }

    /// courier's own DPoP key at `provider_id` when the provider uses DPoP: one per provider,
    /// shared by every instance through Postgres (the first to need it makes it), kept here
    /// once read.
    async fn client_dpop_key(&self, provider_id: &str) -> Result<Option<Arc<DpopKey>>, TokenError> {
        if !self
            .providers
            .get(provider_id)
            .is_some_and(|p| p.config.dpop)
        {
            return Ok(None);
        }
        let known = |this: &Self| {
            this.client_dpop
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(provider_id)
                .cloned()
        };
        if let Some(key) = known(self) {
            return Ok(Some(key));
        }
        let candidate = DpopKey::generate().map_err(|e| {
            tracing::error!(error = %e, "no DPoP key could be made");
            TokenError::ProviderUnavailable {
                retry_after_secs: 5,
            }
        })?;
        let key = Arc::new(
            db::client_dpop_keys::get_or_insert(&self.pool, &self.keys, provider_id, &candidate)
                .await?,
        );
        self.client_dpop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(provider_id.to_owned(), key.clone());
        Ok(Some(key))
    }

    /// courier's own client-credentials token at `provider` for `scopes`, cached until it is
    /// due and shared by all users of this instance. A failed grant pauses new ones for 5 s,
    /// doubling up to 60 s, while a token that has not expired is still used.
    pub async fn client_access_token(
        &self,
        provider_id: &str,
        scopes: &[String],
        resource: Option<&str>,
    ) -> Result<AccessToken, TokenError> {
        let key = (
            provider_id.to_owned(),
            scopes.to_vec(),
            resource.map(str::to_owned),
        );
        let dpop = self.client_dpop_key(provider_id).await?;
        let cached = |this: &Self| -> Result<Option<AccessToken>, TokenError> {
            let states = this
                .client_cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(state) = states.get(&key) else {
                return Ok(None);
            };
            let token = state.token.as_ref();
            if let Some(t) = token.filter(|t| this.is_fresh(t.obtained_at, t.expires_at)) {
                return Ok(Some(AccessToken {
                    secret: t.access_token.clone(),
                    after_rejection: false,
                    dpop: dpop.clone(),
                }));
            }
            match state.retry_at {
                Some(at) if at > this.clock.now() => {
                    match token.filter(|t| this.is_unexpired(t.expires_at)) {
                        Some(t) => Ok(Some(AccessToken {
                            secret: t.access_token.clone(),
                            after_rejection: false,
                            dpop: dpop.clone(),
                        })),
                        None => Err(this.retry_after(at)),
                    }
                }
                _ => Ok(None),
            }
        };
        if let Some(token) = cached(self)? {
            return Ok(token);
        }
        let _flight = self.client_tokens.lock(&key).await;
        if let Some(token) = cached(self)? {
            return Ok(token);
        }
        let Some(provider) = self.providers.get(provider_id) else {
            tracing::error!(provider = %provider_id, "a service names a provider that is not configured");
            return Err(TokenError::ProviderUnavailable {
                retry_after_secs: 60,
            });
        };
        let outcome = grants::client_credentials(
            provider,
            &self.providers.http,
            scopes,
            resource,
            dpop.as_deref(),
            self.clock.now(),
        )
        .await;
        metrics::counter!(
            "courier_client_token_grants_total",
            "provider" => provider.id().to_owned(),
            "outcome" => outcome.as_ref().map_or_else(GrantError::label, |_| "granted")
        )
        .increment(1);
        let mut states = self
            .client_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = states.entry(key).or_default();
        match outcome {
            Ok(tokens) => {
                let secret = tokens.access_token.clone();
                *state = ClientTokenState {
                    token: Some(tokens),
                    failures: 0,
                    retry_at: None,
                };
                Ok(AccessToken {
                    secret,
                    after_rejection: false,
                    dpop: dpop.clone(),
                })
            }
            Err(GrantError::InvalidTarget) => Err(TokenError::NotAllowed),
            Err(failure) => {
                log_kept_failure(provider.id(), "client-credentials", &failure);
                let retry_at = self.clock.now() + backoff(state.failures);
                state.failures += 1;
                state.retry_at = Some(retry_at);
                match state
                    .token
                    .as_ref()
                    .filter(|t| self.is_unexpired(t.expires_at))
                {
                    Some(t) => Ok(AccessToken {
                        secret: t.access_token.clone(),
                        after_rejection: false,
                        dpop: dpop.clone(),
                    }),
                    None => Err(self.retry_after(retry_at)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_quarter_of_a_short_lifetime() {
        let t0 = Utc::now();
        assert_eq!(
            refresh_margin(Some(t0), Some(t0 + Duration::seconds(20))),
            Duration::seconds(5)
        );
        assert_eq!(
            refresh_margin(Some(t0), Some(t0 + Duration::hours(1))),
            REFRESH_MARGIN
        );
        assert_eq!(refresh_margin(None, Some(t0)), REFRESH_MARGIN);
    }

    #[test]
    fn the_backoff_doubles_from_5_to_60_seconds() {
        let secs: Vec<i64> = (0..6).map(|n| backoff(n).num_seconds()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60]);
    }
}
