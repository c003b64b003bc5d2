//! actix-session's `SessionStore` over Postgres.
//!
//! The cookie carries a random key; the row is found by the key's SHA-256. A row is created by
//! the login callback (with the user and the tokens, in one transaction) and bound to its key
//! here, once, when actix-session saves the renewed session. Expiry is the server's: a row past
//! its idle or absolute expiry does not load, and each load extends the idle expiry.

use std::collections::HashMap;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration as CookieDuration;
use anyhow::anyhow;
use chrono::Duration;
use sqlx::PgPool;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::crypto::{random_token, sha256};
use crate::db;

/// The session-state entry that names the session's row.
pub const SESSION_ID_KEY: &str = "courier.session";

#[derive(Clone)]
pub struct PgSessionStore {
    pool: PgPool,
    clock: SharedClock,
    idle_timeout: Duration,
}

impl PgSessionStore {
    pub fn new(pool: PgPool, clock: SharedClock, idle_timeout: Duration) -> Self {
        Self {
            pool,
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
        let state = db::sessions::touch(
            &self.pool,
            &key_hash(session_key),
            self.clock.now(),
            self.idle_timeout,
        )
        .await
        .map_err(|e| LoadError::Other(e.into()))?;
        match state {
            None => Ok(None),
            Some(state) => from_json(state)
                .map(Some)
                .ok_or_else(|| LoadError::Deserialization(anyhow!("session state is not a map"))),
        }
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
        let updated = db::sessions::update_state(
            &self.pool,
            &key_hash(&session_key),
            &to_json(&session_state),
        )
        .await
        .map_err(|e| UpdateError::Other(e.into()))?;
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
        // `load` extends the idle expiry on every request already.
        Ok(())
    }

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        db::sessions::delete_by_key(&self.pool, &key_hash(session_key)).await?;
        Ok(())
    }
}
