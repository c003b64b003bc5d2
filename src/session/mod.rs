//! Sessions: the Postgres `SessionStore`, the typed current session, and starting a session
//! after a login. (The CSRF guard is in `middleware`; extracting the current session from a
//! request, which answers 401 without one, in `routes::extract`.)

pub mod end;
pub mod store;
pub mod view;

use actix_identity::Identity;
use actix_session::SessionExt;
use actix_web::{HttpMessage, HttpRequest};
use chrono::Duration;
use sqlx::PgPool;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::config::SessionConfig;
use crate::crypto::KeyRing;
use crate::db;
use crate::oidc::login::CompletedLogin;

pub use store::{PgSessionStore, SESSION_ID_KEY};

/// The live session of the request (as a handler argument: 401 `login_required` without one).
#[derive(Debug, Clone, Copy)]
pub struct CurrentSession {
    pub id: Uuid,
    pub user_id: Uuid,
}

/// Records a completed login: the user and identity, a session row with its tokens, all in one
/// transaction. Then attaches it to the browser's (renewed) session, which binds the row to a
/// new cookie key when the response is sent.
pub async fn start(
    req: &HttpRequest,
    pool: &PgPool,
    keys: &KeyRing,
    clock: &SharedClock,
    config: &SessionConfig,
    provider: &str,
    login: &CompletedLogin,
) -> Result<Uuid, anyhow::Error> {
    let session_id = Uuid::new_v4();
    let claims = serde_json::Value::Object(login.claims.clone());
    let mut tx = pool.begin().await?;
    let user_id = db::users::upsert_identity(&mut tx, provider, &login.subject, &claims).await?;
    db::sessions::insert_unbound(
        &mut tx,
        &db::sessions::NewSession {
            id: session_id,
            user_id,
            provider,
            subject: &login.subject,
            provider_sid: login.sid.as_deref(),
            now: clock.now(),
            idle_timeout: Duration::seconds(config.idle_timeout_secs as i64),
            absolute_timeout: Duration::seconds(config.absolute_timeout_secs as i64),
        },
    )
    .await?;
    db::session_tokens::insert(
        &mut tx,
        keys,
        session_id,
        &login.tokens,
        login.dpop_key.as_deref(),
    )
    .await?;
    tx.commit().await?;

    // `login` renews the session key; the old session (if any) is deleted by the middleware.
    Identity::login(&req.extensions(), user_id.to_string())?;
    req.get_session().insert(SESSION_ID_KEY, session_id)?;
    Ok(session_id)
}
