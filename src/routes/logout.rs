//! Logging out: `POST /auth/logout` (the SPA's sign-out) and
//! `POST /auth/backchannel-logout/{provider}` (the provider's, OIDC Back-Channel Logout 1.0).

use actix_session::SessionExt;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use url::form_urlencoded;

use crate::error::ApiError;
use crate::oidc::logout_token::{self, LogoutTokenError};
use crate::session::CurrentSession;
use crate::session::end::{self, ProviderLogout};
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
    let local = &state.config.server.post_logout_redirect;
    let Some(current) = current else {
        return Ok(HttpResponse::Ok().json(json!({ "logout_url": local })));
    };
    let redirects = end::LogoutRedirects {
        local,
        absolute: &post_logout_uri(&state),
    };
    let logout_url = end::rp_logout(
        &state.pool,
        &state.keys,
        &state.cache,
        &state.providers,
        current.id,
        redirects,
    )
    .await?;
    // The row is gone; this clears the cookie.
    req.get_session().purge();
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
    let now = state.clock.now();
    let target = match logout_token::verify(provider, &state.providers.http, &token, now).await {
        Ok(target) => target,
        Err(e) => return refused(provider.id(), e),
    };
    match end::end_for_provider_logout(&state.pool, &state.cache, provider.id(), &target).await {
        Ok(ProviderLogout::Ended(ended)) => {
            tracing::info!(provider = %provider.id(), ended, "back-channel logout");
            metrics::counter!("courier_logouts_total", "kind" => "back_channel").increment(ended);
            HttpResponse::Ok().finish()
        }
        Ok(ProviderLogout::Replayed) => backchannel_error("the logout token was used already"),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "back-channel logout failed");
            unavailable()
        }
    }
}

/// A logout token that failed its checks (400), or could not be checked now (503: the
/// provider retries).
fn refused(provider: &str, e: LogoutTokenError) -> HttpResponse {
    match e {
        LogoutTokenError::Invalid(why) => {
            tracing::warn!(%provider, error = %why, "logout token refused");
            backchannel_error(&why)
        }
        LogoutTokenError::Unavailable(why) => {
            tracing::warn!(%provider, error = %why, "logout token not checkable now");
            unavailable()
        }
    }
}

/// The error and its sources, outermost first.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn unavailable() -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"error": "temporarily_unavailable"}))
}
