//! Logging out: `POST /auth/logout` (the SPA's sign-out) and
//! `POST /auth/backchannel-logout/{provider}` (the provider's, OIDC Back-Channel Logout 1.0).

use actix_session::SessionExt;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use serde_json::json;
use url::form_urlencoded;

use crate::cache;
use crate::db;
use crate::error::ApiError;
use crate::oidc::logout_token::{self, LogoutTokenError};
use crate::oidc::revocation;
use crate::session::CurrentSession;
use crate::state::AppState;

/// `post_logout_redirect` as an absolute URL on courier's origin (providers want one).
fn post_logout_uri(state: &AppState) -> String {
    let target = &state.config.server.post_logout_redirect;
    if target.starts_with('/') {
        format!("{}{target}", state.config.public_origin())
    } else {
        target.clone()
    }
}

/// `POST /auth/logout` → 200 `{"logout_url"}`. The session and its tokens are gone before the
/// reply; the refresh token is revoked at the provider where it can be; `logout_url` ends the
/// provider's session too when the provider has an `end_session_endpoint`.
pub async fn logout(
    req: HttpRequest,
    current: Option<CurrentSession>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let local = state.config.server.post_logout_redirect.clone();
    let Some(current) = current else {
        return Ok(HttpResponse::Ok().json(json!({ "logout_url": local })));
    };
    let stored = db::session_tokens::get(&state.pool, &state.keys, current.id)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the session's tokens could not be read at logout");
            None
        });
    let mut tx = state.pool.begin().await?;
    db::sessions::delete(&mut tx, current.id).await?;
    let announced = cache::announce(&mut tx, &cache::session_key(current.id)).await?;
    tx.commit().await?;
    // Every instance has dropped the session before the SPA is told.
    state.cache.confirm(&state.pool, &[announced]).await;
    // The row is gone; this clears the cookie.
    req.get_session().purge();

    let Some(stored) = stored else {
        return Ok(HttpResponse::Ok().json(json!({ "logout_url": local })));
    };
    let provider = state.providers.get(&stored.provider);
    if let (Some(provider), Some(refresh)) = (provider, &stored.tokens.refresh_token)
        && let Err(e) = revocation::revoke(provider, &state.providers.http, refresh, true).await
    {
        tracing::warn!(provider = %provider.id(), error = %e, "revoking the refresh token at logout failed");
    }
    let logout_url = match provider.and_then(|p| p.end_session_endpoint()) {
        Some(mut endpoint) => {
            {
                let mut query = endpoint.query_pairs_mut();
                if let Some(id_token) = &stored.tokens.id_token {
                    query.append_pair("id_token_hint", id_token.expose_secret());
                }
                query.append_pair("post_logout_redirect_uri", &post_logout_uri(&state));
                if let Some(provider) = provider {
                    query.append_pair("client_id", &provider.config.client_id);
                }
            }
            endpoint.to_string()
        }
        None => local,
    };
    tracing::info!(provider = %stored.provider, "logged out");
    metrics::counter!("courier_logouts_total", "kind" => "rp_initiated").increment(1);
    Ok(HttpResponse::Ok().json(json!({ "logout_url": logout_url })))
}

fn backchannel_error(description: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "error": "invalid_request",
        "error_description": description,
    }))
}

/// `POST /auth/backchannel-logout/{provider}` (form field `logout_token`) → 200 when the token
/// is valid and its sessions have ended (on every instance: they share the rows), else 400.
pub async fn backchannel(
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(provider) = state.providers.get(&path) else {
        return backchannel_error("unknown provider");
    };
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned());
    let Some(token) = token else {
        return backchannel_error("the logout_token form field is missing");
    };
    let target = match logout_token::verify(
        provider,
        &state.providers.http,
        &token,
        state.clock.now(),
    )
    .await
    {
        Ok(target) => target,
        Err(LogoutTokenError::Invalid(why)) => {
            tracing::warn!(provider = %provider.id(), error = %why, "logout token refused");
            return backchannel_error(&why);
        }
        Err(LogoutTokenError::Unavailable(why)) => {
            tracing::warn!(provider = %provider.id(), error = %why, "logout token not checkable now");
            return unavailable();
        }
    };
    // The jti is recorded and the sessions end in one transaction: if either fails, the
    // provider's retry with the same token is not taken for a replay.
    let outcome = async {
        let mut tx = state.pool.begin().await?;
        let fresh = db::logout_tokens::mark_used(
            &mut tx,
            provider.id(),
            &target.jti,
            target.remember_until,
        )
        .await?;
        if !fresh {
            return Ok(None);
        }
        let ended = db::sessions::delete_for_provider_logout(
            &mut tx,
            provider.id(),
            target.sid.as_deref(),
            target.sub.as_deref(),
        )
        .await?;
        let mut announced = Vec::with_capacity(ended.len());
        for id in &ended {
            announced.push(cache::announce(&mut tx, &cache::session_key(*id)).await?);
        }
        tx.commit().await?;
        state.cache.confirm(&state.pool, &announced).await;
        Ok::<_, sqlx::Error>(Some(ended.len() as u64))
    }
    .await;
    match outcome {
        Ok(Some(ended)) => {
            tracing::info!(provider = %provider.id(), ended, "back-channel logout");
            metrics::counter!("courier_logouts_total", "kind" => "back_channel").increment(ended);
            HttpResponse::Ok().finish()
        }
        Ok(None) => backchannel_error("the logout token was used already"),
        Err(e) => {
            tracing::error!(error = %e, "back-channel logout failed");
            unavailable()
        }
    }
}

fn unavailable() -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"error": "temporarily_unavailable"}))
}
