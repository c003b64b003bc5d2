//! `GET /api/me`: who the session user is.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::session::{self, CurrentSession};
use crate::state::AppState;

/// ID-token claims about the login exchange itself, not the user: they mean nothing to the SPA,
/// and the nonce belongs to the login that is over. (`auth_time`, `acr`, `amr` describe the
/// user's authentication and stay.)
const PROTOCOL_CLAIMS: &[&str] = &["nonce", "at_hash", "c_hash", "s_hash"];

pub async fn me(
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let view = session::view::view(&state.pool, &state.cache, current.id, state.clock.now())
        .await?
        .ok_or(ApiError::LoginRequired)?;
    let claim = |name: &str| view.claims.get(name).cloned().unwrap_or(Value::Null);
    // Seconds until the session ends by whichever timeout comes first, so the SPA can warn.
    let expires_in = (view.absolute_expires_at.min(view.idle_expires_at) - state.clock.now())
        .num_seconds()
        .max(0);
    let claims = match &view.claims {
        Value::Object(all) => Value::Object(
            all.iter()
                .filter(|(name, _)| !PROTOCOL_CLAIMS.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        ),
        other => other.clone(),
    };
    Ok(HttpResponse::Ok().json(json!({
        "user_id": view.user_id,
        "provider": view.provider,
        "sub": view.subject,
        "name": claim("name"),
        "email": claim("email"),
        "picture": claim("picture"),
        "claims": claims,
        "session": {
            "created_at": view.created_at,
            "expires_at": view.absolute_expires_at,
            "idle_expires_at": view.idle_expires_at,
            "expires_in": expires_in,
        },
    })))
}
