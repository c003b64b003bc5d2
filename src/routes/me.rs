//! `GET /api/me`: who the session user is.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::db;
use crate::error::ApiError;
use crate::session::CurrentSession;
use crate::startup::AppState;

pub async fn me(
    current: CurrentSession,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let view = db::sessions::view(&state.pool, current.id, state.clock.now())
        .await?
        .ok_or(ApiError::LoginRequired)?;
    let claim = |name: &str| view.claims.get(name).cloned().unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(json!({
        "user_id": view.user_id,
        "provider": view.provider,
        "sub": view.subject,
        "name": claim("name"),
        "email": claim("email"),
        "picture": claim("picture"),
        "claims": view.claims,
        "session": {
            "created_at": view.created_at,
            "expires_at": view.expires_at,
        },
    })))
}
