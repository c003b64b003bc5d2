//! Sessions: the Postgres `SessionStore`, the typed current session, and starting a session
//! after a login. (The CSRF guard is in `middleware`; extracting the current session from a
//! request, which answers 401 without one, in `routes::extract`.)

pub mod end;
pub mod store;
pub mod user_sessions;
pub mod view;

use actix_identity::Identity;
use actix_session::SessionExt;
use actix_web::http::header::USER_AGENT;
use actix_web::{HttpMessage, HttpRequest};
use chrono::Duration;
use sqlx::PgPool;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::config::SessionConfig;
use crate::crypto::KeyRing;
use crate::db;
use crate::domain::user_agent;
use crate::oidc::id_token;
use crate::oidc::login::CompletedLogin;

pub use store::{PgSessionStore, SESSION_ENDED_KEY, SESSION_ID_KEY, SESSION_PROVIDER_KEY};

/// The live session of the request (as a handler argument: 401 `login_required` without one).
#[derive(Debug, Clone)]
pub struct CurrentSession {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The login provider the session came from: a service of this provider uses the
    /// session's tokens, any other provider's a linked account.
    pub provider: String,
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
    let now = clock.now();
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .map(|v| user_agent::summarize(&String::from_utf8_lossy(v.as_bytes())));
    // A session lives no longer than its grant: without a refresh token, it ends when its
    // access token expires (the store then answers `reauth_required` once).
    let mut absolute_timeout = Duration::seconds(config.absolute_timeout_secs as i64);
    if login.tokens.refresh_token.is_none()
        && let Some(expires_at) = login.tokens.expires_at
    {
        absolute_timeout = absolute_timeout.min(expires_at - now);
    }
    // No `auth_time`, no time: a silent login's "now" is not an authentication (it rides on the
    // provider's single sign-on), so such a session counts as authenticated long ago. One from
    // a provider whose clock runs ahead counts from now, not from later.
    let auth_time = id_token::auth_time(&login.claims).map(|t| t.min(now));
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
            public_id: Uuid::new_v4(),
            user_agent: user_agent.as_deref(),
            auth_time,
            now,
            idle_timeout: Duration::seconds(config.idle_timeout_secs as i64),
            absolute_timeout,
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
