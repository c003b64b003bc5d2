//! A short in-process cache of sessions, `/api/me` views and opened access tokens, kept true
//! across instances by Postgres LISTEN/NOTIFY.
//!
//! Triggers on `sessions`, `session_tokens` and `linked_accounts` (migration 0004) announce
//! every change a cached entry could miss — a deleted or re-keyed session, a refreshed or
//! removed token — on the `courier_cache` channel, with the owner's key as payload. Each
//! instance listens, and drops what a notification names. The writer drops its own entries
//! at once too, so that a logout is seen by the next request to the same instance without
//! waiting for the echo.
//!
//! Three rules keep a stale entry from outliving a change:
//! - The cache is used only while the listener is connected. When the connection drops, the
//!   cache is emptied and bypassed until it is listening again (notifications sent meanwhile
//!   are lost).
//! - Every invalidation bumps an epoch. A loader takes the epoch before it reads Postgres and
//!   stores what it read only if no invalidation came in between, so a read that raced a
//!   change cannot put the old value back.
//! - Entries live for a short `max_age` at most, whatever happens.
//!
//! A notification reaches every instance at about the same time, but not at once: the soak
//! (docs/reliability.md) saw another instance serve a session 0.9 ms after its logout had
//! answered. Where the next request anywhere must see a change — a logout — the writer asks
//! for confirmation: its announcement carries a nonce, every instance that hears it drops the
//! entries and records the nonce in `cache_acks`, and the writer answers only once every
//! listening instance (`cache_listeners`, kept by a heartbeat) has confirmed, or after a
//! second at most.
//!
//! Refresh tokens are never cached: a refresh always reads and locks the row in Postgres.
//!
//! The cache is generic over what it holds and knows nothing of sessions' and tokens' shapes;
//! `AppCache` (app_cache.rs) names what courier keeps in it. Its SQL (the notification, the
//! confirmations, the listener rows) is in `db::cache_acks`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db::cache_acks;
use crate::domain::tokens::OwnerKey;

/// The channel the triggers notify on.
pub const CHANNEL: &str = cache_acks::CHANNEL;

/// Sessions and tokens: a miss costs a Postgres round trip, so they stay up to this long.
const ENTRY_MAX_AGE: Duration = Duration::from_secs(30);
/// `/api/me` views carry the idle expiry, which moves as the session is used.
pub const VIEW_MAX_AGE: Duration = Duration::from_secs(5);
/// A table that grows past this is emptied rather than scanned for the oldest entries. Access
/// tokens can be a few KiB each: 20,000 of them bound the token table near 50 MiB, and more
/// sessions active within `ENTRY_MAX_AGE` on one instance only mean more database reads.
const MAX_ENTRIES: usize = 20_000;
/// How long a writer waits for every instance to confirm its announcement.
const CONFIRM_WAIT: Duration = Duration::from_secs(1);
/// How often a listening instance renews its `cache_listeners` row.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The owner key of a session's tokens (shorthand for `OwnerKey::Session`).
pub fn session_key(session_id: Uuid) -> OwnerKey {
    OwnerKey::Session(session_id)
}

/// The owner key of a user's linked account at `provider`.
pub fn linked_key(user_id: Uuid, provider: &str) -> OwnerKey {
    OwnerKey::linked(user_id, provider)
}

/// The epoch a loader saw before reading Postgres; `None` while the cache is bypassed.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

struct Table<K, V> {
    max_age: Duration,
    entries: HashMap<K, (Instant, V)>,
}

impl<K: Eq + Hash, V: Clone> Table<K, V> {
    fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            entries: HashMap::new(),
        }
    }

    fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.max_age)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: K, value: V) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(key, (Instant::now(), value));
    }

    fn remove<Q: Eq + Hash + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.entries.remove(key).map(|(_, v)| v)
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops the entries too old to be used.
    fn sweep(&mut self) {
        let max_age = self.max_age;
        self.entries.retain(|_, (at, _)| at.elapsed() < max_age);
    }
}

struct Inner<S, T, V> {
    epoch: u64,
    /// By the SHA-256 of the cookie key.
    sessions: Table<[u8; 32], S>,
    /// Session id → the key its entry is under, to drop it by id.
    session_keys: HashMap<Uuid, [u8; 32]>,
    views: Table<Uuid, V>,
    tokens: Table<OwnerKey, T>,
    /// Tokens made for one service from an owner's grant (a resource's, an exchange's), by
    /// owner and then target, so that a change to the owner drops them all at once.
    service_tokens: HashMap<OwnerKey, Table<String, T>>,
}

/// The cache, generic over what it holds so that it knows nothing of sessions' and tokens'
/// shapes: `S` a loaded session, `T` a token, `V` an `/api/me` view.
pub struct Cache<S, T, V> {
    /// This process, as `cache_listeners` and `cache_acks` know it.
    instance: Uuid,
    live: AtomicBool,
    inner: Mutex<Inner<S, T, V>>,
    /// Woken by every change announced (`changes`).
    changed: Arc<tokio::sync::Notify>,
}

impl<S: Clone, T: Clone, V: Clone> Default for Cache<S, T, V> {
    fn default() -> Self {
        Self {
            instance: Uuid::new_v4(),
            live: AtomicBool::new(false),
            changed: Arc::new(tokio::sync::Notify::new()),
            inner: Mutex::new(Inner {
                epoch: 0,
                sessions: Table::new(ENTRY_MAX_AGE),
                session_keys: HashMap::new(),
                views: Table::new(VIEW_MAX_AGE),
                tokens: Table::new(ENTRY_MAX_AGE),
                service_tokens: HashMap::new(),
            }),
        }
    }
}

fn count(table: &'static str, hit: bool) {
    // The handles of the few label sets, registered once per thread: asking the recorder by
    // label set on every lookup costs a hash and a lock, twice per request.
    thread_local! {
        static COUNTERS: std::cell::RefCell<Vec<(&'static str, bool, metrics::Counter)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    COUNTERS.with_borrow_mut(|counters| {
        if let Some((_, _, counter)) = counters.iter().find(|(t, h, _)| *t == table && *h == hit) {
            counter.increment(1);
            return;
        }
        let counter = metrics::counter!("courier_cache_lookups_total", "table" => table,
            "outcome" => if hit { "hit" } else { "miss" });
        counter.increment(1);
        counters.push((table, hit, counter));
    });
}

impl<S: Clone, T: Clone, V: Clone> Cache<S, T, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S, T, V>> {
        // No code panics while holding the lock; were one to, the tables are still whole
        // (every write is a single map operation), so the poison is ignored.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Take before reading Postgres; pass to `put_*` with what was read.
    pub fn epoch(&self) -> Option<Epoch> {
        self.is_live().then(|| Epoch(self.lock().epoch))
    }

    fn lookup<R>(
        &self,
        table: &'static str,
        get: impl FnOnce(&Inner<S, T, V>) -> Option<R>,
    ) -> Option<R> {
        if !self.is_live() {
            return None;
        }
        let found = get(&self.lock());
        count(table, found.is_some());
        found
    }

    fn store(&self, epoch: Option<Epoch>, put: impl FnOnce(&mut Inner<S, T, V>)) {
        let Some(Epoch(seen)) = epoch else { return };
        let mut inner = self.lock();
        if inner.epoch == seen && self.is_live() {
            put(&mut inner);
        }
    }

    pub fn session(&self, key_hash: &[u8; 32]) -> Option<S> {
        self.lookup("sessions", |i| i.sessions.get(key_hash))
    }

    pub fn put_session(&self, epoch: Option<Epoch>, key_hash: [u8; 32], id: Uuid, session: S) {
        self.store(epoch, |i| {
            if i.session_keys.len() >= MAX_ENTRIES {
                i.session_keys.clear();
                i.sessions.clear();
            }
            i.session_keys.insert(id, key_hash);
            i.sessions.put(key_hash, session);
        });
    }

    pub fn view(&self, session_id: Uuid) -> Option<V> {
        self.lookup("views", |i| i.views.get(&session_id))
    }

    pub fn put_view(&self, epoch: Option<Epoch>, session_id: Uuid, view: V) {
        self.store(epoch, |i| i.views.put(session_id, view));
    }

    pub fn token(&self, owner_key: &OwnerKey) -> Option<T> {
        self.lookup("tokens", |i| i.tokens.get(owner_key))
    }

    pub fn put_token(&self, epoch: Option<Epoch>, owner_key: OwnerKey, token: T) {
        self.store(epoch, |i| i.tokens.put(owner_key, token));
    }

    /// The owner's token made for `target` (see `Inner::service_tokens`).
    pub fn service_token(&self, owner_key: &OwnerKey, target: &str) -> Option<T> {
        self.lookup("service_tokens", |i| {
            i.service_tokens.get(owner_key)?.get(target)
        })
    }

    pub fn put_service_token(
        &self,
        epoch: Option<Epoch>,
        owner_key: OwnerKey,
        target: String,
        token: T,
    ) {
        self.store(epoch, |i| {
            if i.service_tokens.len() >= MAX_ENTRIES {
                i.service_tokens.clear();
            }
            i.service_tokens
                .entry(owner_key)
                .or_insert_with(|| Table::new(ENTRY_MAX_AGE))
                .put(target, token)
        });
    }

    /// Drops the owner's token for `target` on this instance (a new one was stored; other
    /// instances still hold the old one, which works until it is due).
    pub fn forget_service_token(&self, owner_key: &OwnerKey, target: &str) {
        let mut inner = self.lock();
        inner.epoch += 1;
        if let Some(table) = inner.service_tokens.get_mut(owner_key) {
            table.remove(target);
        }
    }

    /// Drops the session under a cookie key (its cookie was purged).
    pub fn forget_session_key(&self, key_hash: &[u8; 32]) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.sessions.remove(key_hash);
    }

    /// Drops what a change to `owner_key` makes stale.
    pub fn invalidate(&self, owner_key: &OwnerKey) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.tokens.remove(owner_key);
        inner.service_tokens.remove(owner_key);
        if let OwnerKey::Session(id) = owner_key {
            inner.views.remove(id);
            if let Some(key) = inner.session_keys.remove(id) {
                inner.sessions.remove(&key);
            }
        }
    }

    /// Woken after each change announced by any instance (a session ended, a token changed),
    /// for whoever must react at once rather than at its next poll (live connections). A wake
    /// while nobody waits is kept for the next wait.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// A notification's payload: an owner key drops its entries; anything else (a trigger
    /// this version does not know) empties everything, which is always safe.
    fn invalidate_payload(&self, payload: &str) {
        self.changed.notify_one();
        match payload.parse::<OwnerKey>() {
            Ok(key) => self.invalidate(&key),
            Err(_) => clear(&mut self.lock()),
        }
    }

    /// After the commit of writes that `announce`d: drops the entries here, then waits until
    /// every listening instance has confirmed dropping them (at most a second; a straggler is
    /// logged).
    pub async fn confirm(&self, pool: &PgPool, announced: &[Announcement]) {
        if announced.is_empty() {
            return;
        }
        for a in announced {
            match &a.key {
                Some(key) => self.invalidate(key),
                None => clear(&mut self.lock()),
            }
        }
        let nonces: Vec<Uuid> = announced.iter().map(|a| a.nonce).collect();
        let started = Instant::now();
        loop {
            match cache_acks::all_confirmed(pool, &nonces).await {
                Ok(true) => break,
                Ok(false) if started.elapsed() < CONFIRM_WAIT => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Ok(false) => {
                    tracing::warn!("cache: an instance did not confirm a logout within 1 s");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache: confirmations cannot be read");
                    break;
                }
            }
        }
        let _ = cache_acks::forget(pool, &nonces).await;
    }

    /// A notification: an owner key, or `ack:<nonce>:<owner key>` when the writer waits for
    /// this instance to confirm.
    fn announced(self: &Arc<Self>, pool: &PgPool, payload: &str) {
        let Some(rest) = payload.strip_prefix(ACK_PREFIX) else {
            return self.invalidate_payload(payload);
        };
        let Some((nonce, key)) = rest
            .split_once(':')
            .and_then(|(n, key)| Some((n.parse::<Uuid>().ok()?, key)))
        else {
            return self.invalidate_payload(payload);
        };
        self.invalidate_payload(key);
        let (pool, instance) = (pool.clone(), self.instance);
        tokio::spawn(async move {
            if let Err(e) = cache_acks::ack(&pool, nonce, instance).await {
                tracing::warn!(error = %e, "cache: confirming an announcement failed");
            }
        });
    }

    /// Frees what has aged out: without this, sessions seen once (a login, then nothing) would
    /// stay in memory until a table fills up.
    fn sweep(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.sessions.sweep();
        inner.views.sweep();
        inner.tokens.sweep();
        inner.service_tokens.retain(|_, table| {
            table.sweep();
            !table.entries.is_empty()
        });
        let sessions = &inner.sessions;
        inner
            .session_keys
            .retain(|_, key| sessions.entries.contains_key(key));
    }

    fn set_live(&self, live: bool) {
        let mut inner = self.lock();
        clear(&mut inner);
        self.live.store(live, Ordering::Release);
    }

    /// Listens for invalidations until the pool closes, reconnecting with backoff. The cache is
    /// live only while the listener is, and only once this instance is registered as listening
    /// (so that logouts wait for its confirmation).
    pub async fn listen(self: Arc<Self>, pool: PgPool) {
        let mut backoff = Duration::from_millis(100);
        while !pool.is_closed() {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                // A lost connection must reach `follow` at once, not after reconnecting.
                listener.eager_reconnect(false);
                listener.listen(CHANNEL).await?;
                cache_acks::heartbeat(&pool, self.instance).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            match listener.await {
                Ok(mut listener) => {
                    self.set_live(true);
                    backoff = Duration::from_millis(100);
                    self.follow(&pool, &mut listener).await;
                }
                Err(e) => tracing::warn!(error = %e, "cache: cannot listen"),
            }
            self.set_live(false);
            let _ = cache_acks::leave(&pool, self.instance).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(self: &Arc<Self>, pool: &PgPool, listener: &mut PgListener) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => self.announced(pool, notification.payload()),
                    // The connection dropped: what is sent until a new one listens is lost.
                    Ok(None) => {
                        tracing::warn!("cache: listener lost; cache bypassed until it is back");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cache: listener failed; cache bypassed");
                        return;
                    }
                },
                _ = heartbeat.tick() => {
                    self.sweep();
                    if let Err(e) = cache_acks::heartbeat(pool, self.instance).await {
                        tracing::warn!(error = %e, "cache: heartbeat failed");
                    }
                }
            }
        }
    }
}

/// The payload prefix of an announcement that asks for confirmation: `ack:<nonce>:<owner key>`.
const ACK_PREFIX: &str = "ack:";

/// A change announced inside its transaction, for `Cache::confirm` after the commit.
pub struct Announcement {
    nonce: Uuid,
    /// `None`: everything (see `announce_everything`).
    key: Option<OwnerKey>,
}

/// Announces, inside the writer's transaction, a change to `owner_key` that every instance
/// must confirm (the triggers announce it too, without asking for confirmation).
pub async fn announce(
    conn: &mut PgConnection,
    owner_key: &OwnerKey,
) -> Result<Announcement, sqlx::Error> {
    let nonce = Uuid::new_v4();
    cache_acks::notify(conn, &format!("{ACK_PREFIX}{nonce}:{owner_key}")).await?;
    Ok(Announcement {
        nonce,
        key: Some(owner_key.clone()),
    })
}

/// The payload of an announcement that names no owner: every instance empties its cache.
const EVERYTHING: &str = "*";

/// Like `announce`, for a change too large to name owner by owner (ending thousands of
/// sessions at once): every instance empties its cache, then confirms. Costs every instance
/// a few database reads, where one announcement per owner would cost one acknowledgement
/// write per owner and instance.
pub async fn announce_everything(conn: &mut PgConnection) -> Result<Announcement, sqlx::Error> {
    let nonce = Uuid::new_v4();
    cache_acks::notify(conn, &format!("{ACK_PREFIX}{nonce}:{EVERYTHING}")).await?;
    Ok(Announcement { nonce, key: None })
}

fn clear<S: Clone, T: Clone, V: Clone>(inner: &mut Inner<S, T, V>) {
    inner.epoch += 1;
    inner.sessions.clear();
    inner.session_keys.clear();
    inner.views.clear();
    inner.tokens.clear();
    inner.service_tokens.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestCache = Cache<u32, u32, u32>;

    fn live() -> TestCache {
        let cache = TestCache::default();
        cache.set_live(true);
        cache
    }

    #[test]
    fn nothing_is_cached_while_not_listening() {
        let cache = TestCache::default();
        let epoch = cache.epoch();
        let key = session_key(Uuid::new_v4());
        cache.put_token(epoch, key.clone(), 1);
        assert_eq!(cache.token(&key), None);
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_stored() {
        let cache = live();
        let id = Uuid::new_v4();
        let before = cache.epoch();
        cache.invalidate(&session_key(id));
        cache.put_token(before, session_key(id), 1);
        assert_eq!(cache.token(&session_key(id)), None);
        cache.put_token(cache.epoch(), session_key(id), 2);
        assert_eq!(cache.token(&session_key(id)), Some(2));
    }

    #[test]
    fn a_session_notification_drops_its_session_view_and_token() {
        let cache = live();
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        for (n, id) in [(1, id), (2, other)] {
            let epoch = cache.epoch();
            cache.put_session(epoch, [n as u8; 32], id, n);
            cache.put_view(epoch, id, n);
            cache.put_token(epoch, session_key(id), n);
        }
        cache.invalidate(&session_key(id));
        assert_eq!(cache.session(&[1; 32]), None);
        assert_eq!(cache.view(id), None);
        assert_eq!(cache.token(&session_key(id)), None);
        assert_eq!(cache.session(&[2; 32]), Some(2));
        assert_eq!(cache.view(other), Some(2));
        assert_eq!(cache.token(&session_key(other)), Some(2));
    }

    #[test]
    fn a_linked_notification_drops_only_that_token() {
        let cache = live();
        let user = Uuid::new_v4();
        let epoch = cache.epoch();
        cache.put_token(epoch, linked_key(user, "github"), 1);
        cache.put_token(epoch, linked_key(user, "google"), 2);
        cache.invalidate(&linked_key(user, "github"));
        assert_eq!(cache.token(&linked_key(user, "github")), None);
        assert_eq!(cache.token(&linked_key(user, "google")), Some(2));
    }

    #[test]
    fn aged_out_entries_are_freed() {
        let cache = live();
        let id = Uuid::new_v4();
        let epoch = cache.epoch();
        cache.put_session(epoch, [1; 32], id, 1);
        cache.put_token(epoch, session_key(id), 1);
        cache.sweep();
        assert_eq!(cache.lock().sessions.entries.len(), 1, "young entries stay");
        {
            let mut inner = cache.lock();
            inner.sessions.max_age = Duration::ZERO;
            inner.tokens.max_age = Duration::ZERO;
        }
        cache.sweep();
        let inner = cache.lock();
        assert!(inner.sessions.entries.is_empty() && inner.tokens.entries.is_empty());
        assert!(inner.session_keys.is_empty());
    }

    #[test]
    fn an_unknown_payload_or_a_lost_listener_empties_everything() {
        let cache = live();
        let key = session_key(Uuid::new_v4());
        cache.put_token(cache.epoch(), key.clone(), 1);
        cache.invalidate_payload("something else");
        assert_eq!(cache.token(&key), None);
        cache.put_token(cache.epoch(), key.clone(), 1);
        cache.set_live(false);
        assert_eq!(cache.token(&key), None);
        assert!(cache.epoch().is_none());
    }

    #[test]
    fn an_announcement_of_everything_empties_every_table() {
        let cache = live();
        let (id, user) = (Uuid::new_v4(), Uuid::new_v4());
        let epoch = cache.epoch();
        cache.put_session(epoch, [1; 32], id, 1);
        cache.put_view(epoch, id, 1);
        cache.put_token(epoch, linked_key(user, "github"), 1);
        cache.invalidate_payload(EVERYTHING);
        assert_eq!(cache.session(&[1; 32]), None);
        assert_eq!(cache.view(id), None);
        assert_eq!(cache.token(&linked_key(user, "github")), None);
    }
}
