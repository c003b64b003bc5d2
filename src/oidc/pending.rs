//! The pending login: what the browser holds, sealed in a cookie of its own, between
//! `/auth/login` (or `/auth/connect/…`) and the callback, and the cookies that carry it.

use std::collections::HashMap;

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::{KeyRing, constant_time_eq, sha256};

/// How long a started login may take to come back.
pub const PENDING_LOGIN_TTL: Duration = Duration::minutes(10);

/// How many pending logins (one cookie each) a browser keeps. Enough for logins in several tabs
/// at once; few enough that abandoned ones can never push the request head past
/// `max_header_bytes` or `max_cookies` and lock the browser out (431).
pub const MAX_PENDING_LOGINS: usize = 10;

/// Why the browser went to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Purpose {
    /// Signing in with a login provider (the pending login names which).
    Login,
    /// Connecting the session user's account at another provider, for `service`.
    Connect { service: String, user_id: Uuid },
}

/// What the browser holds, sealed, between `/auth/login` (or `/auth/connect/…`) and the
/// callback.
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    pub provider: String,
    pub state: String,
    /// Set when the provider speaks OpenID Connect.
    pub nonce: Option<String>,
    pub pkce_verifier: String,
    pub return_to: String,
    pub started_at: DateTime<Utc>,
    pub purpose: Purpose,
    /// A silent login (`prompt=none`): the provider's "the user must interact" answers go
    /// back to `return_to`, not to `/`. (Absent from cookies made before it existed.)
    #[serde(default)]
    pub silent: bool,
    /// The `max_age` the authorization request carried: the ID token must then name an
    /// `auth_time` at most this old. (Absent from cookies made before it existed.)
    #[serde(default)]
    pub max_age: Option<u32>,
}

impl PendingLogin {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.started_at + PENDING_LOGIN_TTL || now < self.started_at - Duration::minutes(1)
    }

    /// Records that this login has come back, once for all instances: `false` when its state
    /// was used before (a replayed callback). Kept until the login would have expired anyway.
    pub async fn claim(&self, pool: &sqlx::PgPool) -> Result<bool, crate::db::DbError> {
        let hash = sha256(self.state.as_bytes());
        let until = self.started_at + PENDING_LOGIN_TTL;
        crate::db::login_states::mark_used(pool, &hash, until).await
    }
}

/// The name of the cookie that holds the pending login for `state`: one cookie per login, so
/// that logins started in two tabs both complete.
fn cookie_name(base: &str, state: &str) -> String {
    let digest = hex::encode(sha256(state.as_bytes()));
    format!("{base}-login-{}", &digest[..16])
}

fn cookie_aad(name: &str) -> Vec<u8> {
    format!("pending_login:{name}").into_bytes()
}

fn base_cookie(name: String, value: String) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .finish()
}

/// The sealed cookie that binds a pending login to this browser.
#[allow(
    clippy::expect_used,
    reason = "a struct of strings, numbers and string maps always serializes to JSON"
)]
pub fn pending_cookie(keys: &KeyRing, base: &str, pending: &PendingLogin) -> Cookie<'static> {
    let name = cookie_name(base, &pending.state);
    let json = serde_json::to_vec(pending).expect("a pending login serializes");
    let value = URL_SAFE_NO_PAD.encode(keys.seal(&json, &cookie_aad(&name)));
    let mut cookie = base_cookie(name, value);
    cookie.set_max_age(CookieDuration::seconds(PENDING_LOGIN_TTL.num_seconds()));
    cookie
}

/// The cookie that clears the pending login for `state`.
pub fn removal_cookie(base: &str, state: &str) -> Cookie<'static> {
    removal_cookie_named(cookie_name(base, state))
}

/// Removal cookies for the browser's oldest pending logins, so that with one more started it
/// holds at most `MAX_PENDING_LOGINS`. A cookie that does not open (tampered with, or sealed
/// under a retired key) counts as the oldest.
pub fn evict_oldest(req: &HttpRequest, keys: &KeyRing, base: &str) -> Vec<Cookie<'static>> {
    let prefix = format!("{base}-login-");
    let Ok(cookies) = req.cookies() else {
        return Vec::new();
    };
    // By name (a cookie sent twice counts once), then oldest first; unreadable ones (`None`)
    // sort before every readable one.
    let by_name: HashMap<&str, Option<DateTime<Utc>>> = cookies
        .iter()
        .filter(|c| c.name().starts_with(&prefix))
        .map(|c| {
            let started = open_pending(keys, c.name(), c.value()).map(|p| p.started_at);
            (c.name(), started)
        })
        .collect();
    let mut pending: Vec<(Option<DateTime<Utc>>, &str)> = by_name
        .into_iter()
        .map(|(name, started)| (started, name))
        .collect();
    pending.sort();
    let excess = (pending.len() + 1).saturating_sub(MAX_PENDING_LOGINS);
    pending
        .into_iter()
        .take(excess)
        .map(|(_, name)| removal_cookie_named(name.to_owned()))
        .collect()
}

fn open_pending(keys: &KeyRing, name: &str, value: &str) -> Option<PendingLogin> {
    let sealed = URL_SAFE_NO_PAD.decode(value).ok()?;
    let json = keys.open(&sealed, &cookie_aad(name)).ok()?;
    serde_json::from_slice(&json).ok()
}

fn removal_cookie_named(name: String) -> Cookie<'static> {
    let mut cookie = base_cookie(name, String::new());
    cookie.make_removal();
    cookie
}

/// Finds and opens this browser's pending login for `state`. `None` when the browser has no
/// such login, or the cookie was tampered with.
pub fn find_pending(
    req: &HttpRequest,
    keys: &KeyRing,
    base: &str,
    state: &str,
) -> Option<PendingLogin> {
    let name = cookie_name(base, state);
    let cookie = req.cookie(&name)?;
    let pending = open_pending(keys, &name, cookie.value())?;
    constant_time_eq(pending.state.as_bytes(), state.as_bytes()).then_some(pending)
}
