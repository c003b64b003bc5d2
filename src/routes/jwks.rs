//! `GET /.well-known/jwks.json`: the public halves of every provider's `client_key`, for
//! providers that fetch the keys of a `private_key_jwt` client from a `jwks_uri`.

use std::collections::HashSet;

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::oidc::client_auth;
use crate::state::AppState;

/// Long enough to spare the keys' readers, short enough that a key added for a rollover is
/// seen within minutes (publish the new key, second in `client_key`, before it signs).
const MAX_AGE_SECS: u32 = 300;

/// 200 `{"keys":[…]}` (each key once, by `kid`, with `use = "sig"` and the `alg` it signs with
/// at its first provider), or 404 when no provider has a `client_key`.
pub async fn jwks(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for config in &state.config.providers {
        let ps256 = state
            .providers
            .get(&config.id)
            .is_some_and(|p| client_auth::accepts_ps256(p));
        for key in &config.client_keys {
            if seen.insert(key.kid().to_owned()) {
                keys.push(key.public_jwk(ps256));
            }
        }
    }
    if keys.is_empty() {
        return Err(ApiError::NotFound("no client keys are configured".into()));
    }
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, format!("public, max-age={MAX_AGE_SECS}")))
        .json(serde_json::json!({ "keys": keys })))
}
