//! A loaded session as the cache keeps it.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

/// A session row's state and expiry, as read by `session::store` and kept in the cache.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub state: Arc<HashMap<String, String>>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LiveSession {
    /// Whether the entry can answer without Postgres: the session is live by what this
    /// instance knows, and its idle expiry needs no extending yet (it is extended in Postgres
    /// once per `touch_interval`).
    pub fn usable(&self, now: DateTime<Utc>, touch_interval: Duration) -> bool {
        now < self.expires_at && now - self.last_seen_at < touch_interval
    }
}
