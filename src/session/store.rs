//! actix-session's `SessionStore` over Postgres.
//!
//! The cookie carries a random key; the row is found by the key's SHA-256. A row is created by
//! the login callback (with the user and the tokens, in one transaction) and bound to its key
//! here, once, when actix-session saves the renewed session. Expiry is the server's: a row past
//! its idle or absolute expiry does not load, and loads extend the idle expiry (in Postgres at
//! most once a minute, or a quarter of the idle timeout when that is shorter). Loaded sessions are cached in memory (`crate::cache`), so that most
//! requests cost no database round trip.

use std::collections::HashMap;
use std::sync::Arc;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration as CookieDuration;
use anyhow::anyhow;
use chrono::Duration;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app_cache::AppCache;
use crate::clock::SharedClock;
use crate::crypto::{random_token, sha256};
use crate::db;
use crate::domain::session::LiveSession;

/// The session-state entry that names the session's row.
pub const SESSION_ID_KEY: &str = "courier.session";

/// The session-state entry that names the login provider the session came from. Written by
/// `load` from the row on every load, never trusted from the stored state.
pub const SESSION_PROVIDER_KEY: &str = "courier.provider";

/// The session-state entry that `load` sets, alone, for a session that has just ended with its
/// grant (no refresh token, access token expired): the request is answered `reauth_required`.
pub const SESSION_ENDED_KEY: &str = "courier.ended";

/// Entries of the state that `load` derives from the row: whatever a save stored under these
/// names is dropped.
const DERIVED_KEYS: &[&str] = &[SESSION_PROVIDER_KEY, SESSION_ENDED_KEY];

/// A state value as actix-session keeps it: JSON text.
fn json_text(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

#[derive(Clone)]
pub struct PgSessionStore {
    pool: PgPool,
    cache: Arc<AppCache>,
    clock: SharedClock,
    idle_timeout: Duration,
}

impl PgSessionStore {
    pub fn new(
        pool: PgPool,
        cache: Arc<AppCache>,
        clock: SharedClock,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            cache,
            clock,
            idle_timeout,
        }
    }
}

fn key_hash(key: &SessionKey) -> [u8; 32] {
    sha256(key.as_ref().as_bytes())
}

fn to_json(state: &HashMap<String, String>) -> serde_json::Value {
    serde_json::Value::Object(
        state
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

fn from_json(state: serde_json::Value) -> Option<HashMap<String, String>> {
    match state {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

impl SessionStore for PgSessionStore {
    async fn load(
        &self,
        session_key: &SessionKey,
    ) -> Result<Option<HashMap<String, String>>, LoadError> {
        let hash = key_hash(session_key);
        let now = self.clock.now();
        if let Some(live) = self
            .cache
            .session(&hash)
            .filter(|s| s.usable(now, db::sessions::touch_interval(self.idle_timeout)))
        {
            return Ok(Some(live.state.as_ref().clone()));
        }
        let epoch = self.cache.epoch();
        let Some(row) = db::sessions::touch(&self.pool, &hash, now, self.idle_timeout)
            .await
            .map_err(|e| LoadError::Other(e.into()))?
        else {
            return Ok(None);
        };
        if row.grant_ended {
            // Ended everywhere before the answer, as a refused refresh ends a session; the
            // request that finds it is told why, the ones after find no session.
            super::end::end_session(&self.pool, &self.cache, row.id)
                .await
                .map_err(|e| LoadError::Other(e.into()))?;
            tracing::info!(session_id = %row.id, "session ended with its access token (no refresh token)");
            return Ok(Some(HashMap::from([(
                SESSION_ENDED_KEY.to_owned(),
                json_text("reauth_required"),
            )])));
        }
        let mut state = from_json(row.state)
            .ok_or_else(|| LoadError::Deserialization(anyhow!("session state is not a map")))?;
        for key in DERIVED_KEYS {
            state.remove(*key);
        }
        state.insert(SESSION_PROVIDER_KEY.to_owned(), json_text(&row.provider));
        let live = LiveSession {
            state: Arc::new(state.clone()),
            last_seen_at: row.last_seen_at,
            expires_at: row.idle_expires_at.min(row.absolute_expires_at),
        };
        self.cache.put_session(epoch, hash, row.id, live);
        Ok(Some(state))
    }

    async fn save(
        &self,
        session_state: HashMap<String, String>,
        _ttl: &CookieDuration,
    ) -> Result<SessionKey, SaveError> {
        let id: Uuid = session_state
            .get(SESSION_ID_KEY)
            .and_then(|v| serde_json::from_str(v).ok())
            .ok_or_else(|| SaveError::Other(anyhow!("only a completed login makes a session")))?;
        let key: SessionKey = random_token()
            .try_into()
            .map_err(|e| SaveError::Other(anyhow!("{e}")))?;
        let bound =
            db::sessions::bind_key(&self.pool, id, &key_hash(&key), &to_json(&session_state))
                .await
                .map_err(|e| SaveError::Other(e.into()))?;
        if !bound {
            return Err(SaveError::Other(anyhow!(
                "session {id} does not exist or is bound already"
            )));
        }
        Ok(key)
    }

    async fn update(
        &self,
        session_key: SessionKey,
        session_state: HashMap<String, String>,
        _ttl: &CookieDuration,
    ) -> Result<SessionKey, UpdateError> {
        let hash = key_hash(&session_key);
        let updated = db::sessions::update_state(&self.pool, &hash, &to_json(&session_state))
            .await
            .map_err(|e| UpdateError::Other(e.into()))?;
        self.cache.forget_session_key(&hash);
        if updated {
            Ok(session_key)
        } else {
            Err(UpdateError::Other(anyhow!(
                "the session ended during the request"
            )))
        }
    }

    async fn update_ttl(
        &self,
        _session_key: &SessionKey,
        _ttl: &CookieDuration,
    ) -> Result<(), anyhow::Error> {
        // `load` extends the idle expiry already, when it is due (at most once a minute, or a
        // quarter of the idle timeout), not on every request.
        Ok(())
    }

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        let hash = key_hash(session_key);
        db::sessions::delete_by_key(&self.pool, &hash).await?;
        self.cache.forget_session_key(&hash);
        Ok(())
    }
}
