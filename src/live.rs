//! Live connections — relayed WebSockets and streamed responses such as server-sent events —
//! bound to the session that opened them.
//!
//! Each connection takes a `Binding` from `LiveConnections` before it is opened: the binding
//! counts it against the instance's cap (in memory) and the session's (in Postgres, so that it
//! holds across instances: `db::live_connections`), and tells the relay when to close and why.
//!
//! An instance learns that a session ended elsewhere from Postgres: `watch` asks which of the
//! bound sessions are still live and which bound linked accounts still connected, in two
//! queries whatever the number of connections — at once when the cache's notifications announce
//! a change (an ended session always does), and every `POLL` anyway while any connection is open
//! (timeouts announce nothing, and notifications are lost while the listener reconnects). A
//! logout, a back-channel logout, a session ended from `/api/sessions` or the command line, a
//! dead refresh (which ends the session, or marks a linked account for reconnection) and a
//! timeout are all visible there, on every instance. Postgres being down closes nothing: the
//! connections keep running on the state last read, and the next successful read catches up.
//!
//! Frames do not count as activity: the session's idle expiry moves only with requests.
//!
//! Any other proxied response body still open after `FOLLOW_AFTER` (a long download, an ndjson
//! feed) is `follow`ed the same way, in memory only: it is cut off when its session ends, but it
//! does not count against either cap, and binding it costs no database work.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::db;

/// How often the bound sessions are checked while any connection is open.
const POLL: Duration = Duration::from_millis(250);
/// A connection's row in `live_connections` (the per-session cap across instances) lapses
/// this long after its instance last renewed it, which it does every `RENEW`.
const ROW_TTL: Duration = Duration::from_secs(30);
const RENEW: Duration = Duration::from_secs(5);

/// How long a proxied response body may stream before it is bound to its session.
pub const FOLLOW_AFTER: Duration = Duration::from_secs(1);

/// What a live connection is, for the caps and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    WebSocket,
    /// A stream of server-sent events.
    Stream,
    /// Any other response body still streaming after `FOLLOW_AFTER`: bound, but not counted.
    Response,
}

impl LiveKind {
    pub fn label(self) -> &'static str {
        match self {
            LiveKind::WebSocket => "websocket",
            LiveKind::Stream => "stream",
            LiveKind::Response => "response",
        }
    }

    /// Whether it counts against `max_live_connections` (and closes at once on shutdown:
    /// other bodies are in-flight requests, which get the graceful stop's time to finish).
    fn counted(self) -> bool {
        self != LiveKind::Response
    }
}

/// Why courier closes a live connection; a WebSocket's close code says it (SPEC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The session ended (logout, back-channel logout, ended from a list or the command line,
    /// absolute timeout, dead refresh) or the linked account it uses did.
    SessionEnded,
    /// The session's idle timeout, or no frame for the service's `stream_idle_timeout_secs`.
    Idle,
    /// courier is stopping.
    Shutdown,
    /// The service failed or broke the connection.
    ServiceFailed,
}

impl CloseCause {
    pub fn code(self) -> u16 {
        match self {
            CloseCause::SessionEnded => 4401,
            CloseCause::Idle => 4408,
            CloseCause::Shutdown => 1001,
            CloseCause::ServiceFailed => 1011,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCause::SessionEnded => "session ended",
            CloseCause::Idle => "idle",
            CloseCause::Shutdown => "courier is stopping",
            CloseCause::ServiceFailed => "service failed",
        }
    }
}

/// Why a connection could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("this instance carries as many live connections as it may")]
    InstanceFull,
    #[error("this session holds as many live connections as it may")]
    SessionFull,
    #[error("courier is stopping")]
    ShuttingDown,
    /// The per-session count, kept in Postgres, cannot be read.
    #[error("live connections cannot be counted: {0}")]
    Unavailable(#[source] db::DbError),
}

/// The linked account a connection's token comes from: its end closes the connection too.
pub type LinkedAccount = (Uuid, String);

struct Entry {
    session: Uuid,
    linked: Option<LinkedAccount>,
    kind: LiveKind,
    close: watch::Sender<Option<CloseCause>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// How many entries count against the instance's cap.
    counted: usize,
    per_session: HashMap<Uuid, usize>,
}

/// The bytes every relayed WebSocket of this instance may hold queued together, whatever
/// `max_live_connections` × the per-connection budget adds up to (docs/live.md). A relay that
/// finds it spent waits, reading nothing more, until others' bytes are written; a peer that
/// takes nothing is disconnected after `websocket::STALLED_AFTER`, which frees its part.
#[derive(Clone)]
pub struct WebSocketBudget {
    bytes: Arc<tokio::sync::Semaphore>,
    total: u32,
}

/// A message's place in the instance's budget, given back when dropped.
pub struct BudgetPermit(
    #[allow(dead_code, reason = "held for its Drop")] Option<tokio::sync::OwnedSemaphorePermit>,
);

impl WebSocketBudget {
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes).unwrap_or(u32::MAX);
        WebSocketBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `bytes` fit the budget (a message larger than the whole takes all of it).
    pub async fn acquire(&self, bytes: usize) -> BudgetPermit {
        let wanted = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.total);
        // The semaphore is never closed.
        BudgetPermit(self.bytes.clone().acquire_many_owned(wanted).await.ok())
    }
}

/// This instance's live connections.
pub struct LiveConnections {
    pool: PgPool,
    /// This instance, as `live_connections` knows it.
    instance: Uuid,
    instance_max: usize,
    session_max: usize,
    stopping: AtomicBool,
    inner: Mutex<Inner>,
    websocket_budget: WebSocketBudget,
}

impl LiveConnections {
    pub fn new(
        pool: PgPool,
        instance_max: usize,
        session_max: usize,
        websocket_budget: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            instance: Uuid::new_v4(),
            instance_max,
            session_max,
            stopping: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            websocket_budget: WebSocketBudget::new(websocket_budget),
        })
    }

    /// The bytes all relayed WebSockets of this instance may hold queued together.
    pub fn websocket_budget(&self) -> WebSocketBudget {
        self.websocket_budget.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change under the lock is a few map operations that cannot panic half-way.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Binds a connection about to be opened to its session (and linked account), within the
    /// caps: this instance's, then the session's on all instances together (in Postgres).
    pub async fn bind(
        self: &Arc<Self>,
        session: Uuid,
        linked: Option<LinkedAccount>,
        kind: LiveKind,
    ) -> Result<Binding, Refused> {
        let mut binding = self.reserve(session, linked, kind)?;
        let row = Uuid::new_v4();
        match db::live_connections::claim(
            &self.pool,
            row,
            session,
            self.instance,
            self.session_max,
            ROW_TTL,
        )
        .await
        {
            Ok(true) => {
                binding.row = Some(row);
                Ok(binding)
            }
            Ok(false) => Err(Refused::SessionFull),
            Err(e) => Err(Refused::Unavailable(e)),
        }
    }

    /// A place among this instance's connections (not yet counted for the session).
    fn reserve(
        self: &Arc<Self>,
        session: Uuid,
        linked: Option<LinkedAccount>,
        kind: LiveKind,
    ) -> Result<Binding, Refused> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(Refused::ShuttingDown);
        }
        let mut inner = self.lock();
        if kind.counted() {
            if inner.counted >= self.instance_max {
                return Err(Refused::InstanceFull);
            }
            inner.counted += 1;
        }
        *inner.per_session.entry(session).or_insert(0) += 1;
        let id = inner.next_id;
        inner.next_id += 1;
        let (close, closed) = watch::channel(None);
        inner.entries.insert(
            id,
            Entry {
                session,
                linked,
                kind,
                close,
            },
        );
        drop(inner);
        metrics::gauge!("courier_live_connections", "kind" => kind.label()).increment(1.0);
        Ok(Binding {
            id,
            kind,
            row: None,
            registry: self.clone(),
            closed,
        })
    }

    /// Binds a response body that is still streaming after `FOLLOW_AFTER` to its session, in
    /// memory only and outside the caps. `None` once courier is stopping.
    pub fn follow(
        self: &Arc<Self>,
        session: Uuid,
        linked: Option<LinkedAccount>,
    ) -> Option<Binding> {
        self.reserve(session, linked, LiveKind::Response).ok()
    }

    fn unbind(&self, id: u64, row: Option<Uuid>) {
        if let Some(row) = row
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let pool = self.pool.clone();
            // A row that cannot be deleted now lapses by itself (`ROW_TTL`).
            runtime.spawn(async move { db::live_connections::release(&pool, row).await });
        }
        let mut inner = self.lock();
        let Some(entry) = inner.entries.remove(&id) else {
            return;
        };
        if entry.kind.counted() {
            inner.counted -= 1;
        }
        if let Some(held) = inner.per_session.get_mut(&entry.session) {
            *held -= 1;
            if *held == 0 {
                inner.per_session.remove(&entry.session);
            }
        }
        drop(inner);
        metrics::gauge!("courier_live_connections", "kind" => entry.kind.label()).decrement(1.0);
    }

    /// Closes every connection that `cause_of` names a cause for.
    fn close_where(&self, cause_of: impl Fn(&Entry) -> Option<CloseCause>) -> usize {
        let inner = self.lock();
        let mut closed = 0;
        for entry in inner.entries.values() {
            if let Some(cause) = cause_of(entry) {
                // The first cause wins: a connection already closing for shutdown stays so.
                entry.close.send_if_modified(|current| {
                    let fresh = current.is_none();
                    if fresh {
                        *current = Some(cause);
                        closed += 1;
                    }
                    fresh
                });
            }
        }
        closed
    }

    /// Closes every WebSocket and event stream with 1001 and refuses new ones: courier is
    /// stopping. Other response bodies are left to finish within the graceful stop's time.
    pub fn shut_down(&self) -> usize {
        self.stopping.store(true, Ordering::Release);
        self.close_where(|entry| entry.kind.counted().then_some(CloseCause::Shutdown))
    }

    /// What the bound sessions and linked accounts are, for one check.
    fn watched(&self) -> (Vec<Uuid>, Vec<LinkedAccount>) {
        let inner = self.lock();
        let sessions = inner.per_session.keys().copied().collect();
        let linked: HashSet<&LinkedAccount> = inner
            .entries
            .values()
            .filter_map(|e| e.linked.as_ref())
            .collect();
        (sessions, linked.into_iter().cloned().collect())
    }

    /// One check of the bound sessions and linked accounts in Postgres; closes the
    /// connections of those that ended. Returns how many it closed.
    pub async fn check(&self, clock: &SharedClock) -> Result<usize, db::DbError> {
        let pool = &self.pool;
        let (sessions, linked) = self.watched();
        if sessions.is_empty() {
            return Ok(0);
        }
        let standing = db::sessions::standing(pool, &sessions, clock.now()).await?;
        let connected: HashSet<LinkedAccount> = if linked.is_empty() {
            HashSet::new()
        } else {
            db::linked_accounts::still_connected(pool, &linked)
                .await?
                .into_iter()
                .collect()
        };
        let asked = Asked {
            sessions: sessions.into_iter().collect(),
            linked: linked.into_iter().collect(),
            standing: standing.into_iter().map(|s| (s.id, s)).collect(),
            connected,
        };
        let closed = self.close_where(|entry| asked.verdict(entry.session, entry.linked.as_ref()));
        Ok(closed)
    }

    /// Checks the bound sessions every `POLL` while connections are open, and at once when
    /// `changes` wakes it (the cache's notification that a session or token changed on some
    /// instance: an ended session is then closed in milliseconds, not at the next poll), until
    /// the pool closes. A failed check is logged once per outage and closes nothing.
    pub async fn watch(self: Arc<Self>, clock: SharedClock, changes: Arc<tokio::sync::Notify>) {
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut renewed = tokio::time::Instant::now();
        while !self.pool.is_closed() {
            tokio::select! {
                _ = ticker.tick() => {}
                () = changes.notified() => {}
            }
            if renewed.elapsed() >= RENEW {
                renewed = tokio::time::Instant::now();
                if let Err(e) =
                    db::live_connections::renew(&self.pool, self.instance, ROW_TTL).await
                {
                    tracing::debug!(error = %e, "live connections: rows not renewed");
                }
            }
            match self.check(&clock).await {
                Ok(closed) => {
                    if failing {
                        tracing::info!("live connections: sessions can be checked again");
                    }
                    failing = false;
                    if closed > 0 {
                        tracing::info!(closed, "live connections closed: their session ended");
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "live connections: sessions cannot be checked; \
                        open connections stay open until they can");
                }
                Err(_) => {}
            }
        }
    }
}

/// One check's question (the sessions and linked accounts bound when it began) and Postgres's
/// answer.
struct Asked {
    sessions: HashSet<Uuid>,
    linked: HashSet<LinkedAccount>,
    /// The sessions asked about that still exist.
    standing: HashMap<Uuid, db::sessions::Standing>,
    /// The linked accounts asked about that are still connected.
    connected: HashSet<LinkedAccount>,
}

impl Asked {
    /// Why a connection bound to `session` (and `linked`) must close, if it must. Only what was
    /// asked about is judged: a connection bound since the check began is missing from the
    /// answer because nobody asked, not because its session ended.
    fn verdict(&self, session: Uuid, linked: Option<&LinkedAccount>) -> Option<CloseCause> {
        if !self.sessions.contains(&session) {
            return None;
        }
        match self.standing.get(&session) {
            None => Some(CloseCause::SessionEnded),
            Some(s) if s.over => Some(CloseCause::SessionEnded),
            Some(s) if s.idle => Some(CloseCause::Idle),
            Some(_) => linked
                .filter(|account| self.linked.contains(*account))
                .filter(|account| !self.connected.contains(*account))
                .map(|_| CloseCause::SessionEnded),
        }
    }
}

/// A live connection's place among the caps, and its word on when to close. Dropping it frees
/// the place.
pub struct Binding {
    id: u64,
    kind: LiveKind,
    /// Its row in `live_connections`, once claimed.
    row: Option<Uuid>,
    registry: Arc<LiveConnections>,
    closed: watch::Receiver<Option<CloseCause>>,
}

impl Binding {
    pub fn kind(&self) -> LiveKind {
        self.kind
    }

    /// Waits until the connection must close, and says why. The future owns what it waits on,
    /// so that a response body can hold it beside the binding.
    pub fn closed(&self) -> impl std::future::Future<Output = CloseCause> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            match closed.wait_for(Option::is_some).await {
                Ok(cause) => cause.unwrap_or(CloseCause::Shutdown),
                // The sender lives in the registry for as long as this binding does.
                Err(_) => CloseCause::Shutdown,
            }
        }
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.registry.unbind(self.id, self.row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry whose pool never connects: these tests stay within the instance.
    fn registry(instance_max: usize) -> Arc<LiveConnections> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        LiveConnections::new(pool, instance_max, 1, 1 << 20)
    }

    #[tokio::test]
    async fn the_instance_cap_counts_places_and_a_drop_frees_one() {
        let live = registry(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = live.reserve(a, None, LiveKind::WebSocket).unwrap();
        let _second = live.reserve(b, None, LiveKind::Stream).unwrap();
        assert!(matches!(
            live.reserve(b, None, LiveKind::WebSocket),
            Err(Refused::InstanceFull)
        ));
        assert_eq!(live.watched().0.len(), 2);
        // A followed response body is watched but takes no place.
        let body = live.follow(a, None).unwrap();
        assert_eq!(live.lock().entries.len(), 3);
        drop(first);
        assert_eq!(live.lock().entries.len(), 2);
        assert_eq!(live.watched().0.len(), 2);
        drop(body);
        assert_eq!(live.watched().0, vec![b]);
        live.reserve(a, None, LiveKind::WebSocket).unwrap();
    }

    #[tokio::test]
    async fn shutting_down_closes_everything_once_and_refuses_new_ones() {
        let live = registry(10);
        let binding = live
            .reserve(Uuid::new_v4(), None, LiveKind::WebSocket)
            .unwrap();
        let download = live.follow(Uuid::new_v4(), None).unwrap();
        assert_eq!(*binding.closed.borrow(), None);
        assert_eq!(
            live.shut_down(),
            1,
            "a download finishes within the graceful stop"
        );
        assert_eq!(binding.closed().await, CloseCause::Shutdown);
        assert_eq!(*download.closed.borrow(), None);
        assert!(live.follow(Uuid::new_v4(), None).is_none());
        assert_eq!(live.shut_down(), 0, "a cause is given once");
        assert!(matches!(
            live.reserve(Uuid::new_v4(), None, LiveKind::Stream),
            Err(Refused::ShuttingDown)
        ));
    }

    #[test]
    fn a_check_judges_only_what_it_asked_about() {
        let (ended, idle, live, since) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let standing = |id, idle, over| db::sessions::Standing { id, idle, over };
        let (kept, gone): (LinkedAccount, LinkedAccount) =
            ((live, "calendar".into()), (live, "github".into()));
        let asked = Asked {
            sessions: [ended, idle, live].into(),
            linked: [kept.clone(), gone.clone()].into(),
            standing: [
                (idle, standing(idle, true, false)),
                (live, standing(live, false, false)),
            ]
            .into(),
            connected: [kept.clone()].into(),
        };
        assert_eq!(asked.verdict(ended, None), Some(CloseCause::SessionEnded));
        assert_eq!(asked.verdict(idle, None), Some(CloseCause::Idle));
        assert_eq!(asked.verdict(live, None), None);
        assert_eq!(asked.verdict(live, Some(&kept)), None);
        assert_eq!(
            asked.verdict(live, Some(&gone)),
            Some(CloseCause::SessionEnded)
        );
        // Bound after the question was asked: not in the answer, and not judged by it.
        assert_eq!(asked.verdict(since, None), None);
        let later: LinkedAccount = (live, "later".into());
        assert_eq!(asked.verdict(live, Some(&later)), None);
    }

    #[test]
    fn close_codes_are_the_specs() {
        let codes: Vec<u16> = [
            CloseCause::SessionEnded,
            CloseCause::Idle,
            CloseCause::Shutdown,
            CloseCause::ServiceFailed,
        ]
        .iter()
        .map(|c| c.code())
        .collect();
        assert_eq!(codes, [4401, 4408, 1001, 1011]);
    }
}
