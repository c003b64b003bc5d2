//! Pushed authorization requests (RFC 9126): the authorization request goes to the provider
//! over the back channel, client-authenticated, and the browser carries only `client_id` and
//! the `request_uri` the provider returned. Used as the provider's `par` says: `auto` when its
//! metadata has a `pushed_authorization_request_endpoint`, `required` always (a provider
//! without one cannot start a login), `off` never. A failed push is an error, never a silent
//! fallback to a front-channel request.

use reqwest::header::ACCEPT;
use serde::Deserialize;
use url::Url;

use crate::config::ParMode;
use crate::oidc::http::{HttpError, ProviderHttp, read_limited};
use crate::oidc::login::provider_error_code;
use crate::oidc::registry::Provider;
use crate::oidc::token_endpoint::{self, GrantError};

/// Why a login could not be started through PAR.
#[derive(Debug, thiserror::Error)]
pub enum ParError {
    /// `par = "required"`, and the provider's metadata names no PAR endpoint.
    #[error(
        "par = \"required\", but the provider advertises no pushed_authorization_request_endpoint"
    )]
    NotSupported,
    /// The provider could not be reached or failed (5xx, timeout).
    #[error("the pushed authorization request failed: {0}")]
    Unavailable(String),
    /// courier could not authenticate as its client: it cannot make its client assertion, or
    /// the provider refused its credentials (`invalid_client`, a bare 401).
    #[error("the pushed authorization request was not authenticated: {0}")]
    ClientAuthentication(String),
    /// The provider refused the request itself (node-oidc-provider answers a `prompt` it does
    /// not support with `invalid_request`): `code` is its error as a callback reports it.
    #[error("the provider refused the pushed authorization request ({detail})")]
    Refused { code: &'static str, detail: String },
}

impl ParError {
    /// The `login_error` (or `connect_error`) code the browser is sent back with.
    pub fn code(&self) -> &'static str {
        match self {
            ParError::Unavailable(_) => "provider_unavailable",
            // courier's configuration, registration or keys are wrong: nothing the user can do.
            ParError::NotSupported | ParError::ClientAuthentication(_) => "server_error",
            // What the request asked for: the same answer at the authorization endpoint would
            // have come back to the callback with this code.
            ParError::Refused { code, .. } => code,
        }
    }
}

/// RFC 9126 §2.2's answer.
#[derive(Deserialize)]
struct Pushed {
    request_uri: String,
}

/// The provider's PAR endpoint, when it has one.
pub fn endpoint(provider: &Provider) -> Option<Url> {
    provider
        .metadata()?
        .additional_metadata()
        .pushed_authorization_request_endpoint
        .clone()
}

/// The URL to send the browser to for the authorization request `url` (as `login::start`
/// made it): `url` itself when PAR is not used, else the authorization endpoint with only
/// `client_id` and the `request_uri` the provider returned for the pushed request.
pub async fn authorization_url(
    provider: &Provider,
    http: &ProviderHttp,
    url: Url,
) -> Result<Url, ParError> {
    let endpoint = match (provider.config.par(), endpoint(provider)) {
        (ParMode::Off, _) | (ParMode::Auto, None) => return Ok(url),
        (ParMode::Required, None) => return Err(ParError::NotSupported),
        (_, Some(endpoint)) => endpoint,
    };
    // The request's parameters move into the form, with `client_id` once.
    let mut form: Vec<(&'static str, String)> = Vec::new();
    let params: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| name != "client_id")
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    let request = token_endpoint::authenticate(
        provider,
        http.0.post(endpoint).header(ACCEPT, "application/json"),
        &mut form,
    )
    .map_err(|e| ParError::ClientAuthentication(e.to_string()))?;
    // RFC 9126 §2.1: the pushed request names its client even when HTTP Basic authenticates
    // it (node-oidc-provider refuses it otherwise).
    if !form.iter().any(|(name, _)| *name == "client_id") {
        form.push(("client_id", provider.config.client_id.clone()));
    }
    let mut body: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    body.extend(form.iter().map(|(n, v)| (*n, v.as_str())));
    let response = request.form(&body).send().await.map_err(|e| {
        ParError::Unavailable(if e.is_timeout() {
            "timed out".into()
        } else if e.is_connect() {
            "could not connect".into()
        } else {
            crate::oidc::http::describe(&e)
        })
    })?;
    let status = response.status();
    let answer = read_limited(response).await.map_err(|e| {
        ParError::Unavailable(match e {
            HttpError::TooLarge => "the answer is too large".into(),
            _ => "the answer could not be read".into(),
        })
    })?;
    if status.is_success()
        && let Ok(pushed) = serde_json::from_slice::<Pushed>(&answer)
        && !pushed.request_uri.is_empty()
    {
        let mut front = url;
        front.set_query(None);
        front
            .query_pairs_mut()
            .append_pair("client_id", &provider.config.client_id)
            .append_pair("request_uri", &pushed.request_uri);
        return Ok(front);
    }
    let error = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    Err(refusal(status, error.as_deref()))
}

/// Sorts a PAR endpoint's answer that holds no `request_uri`: an outage as at the token
/// endpoint; a refusal of courier's client authentication as courier's own failure; any other
/// refusal by the provider's error code.
fn refusal(status: reqwest::StatusCode, error: Option<&str>) -> ParError {
    let detail = match token_endpoint::classify(status, error) {
        GrantError::Unavailable(detail) => return ParError::Unavailable(detail),
        GrantError::Dead(detail) | GrantError::Misconfigured(detail) => detail,
        GrantError::InvalidTarget => "invalid_target".into(),
    };
    let client_refused = match error {
        Some(code) => code == "invalid_client",
        None => status == reqwest::StatusCode::UNAUTHORIZED,
    };
    if client_refused {
        return ParError::ClientAuthentication(detail);
    }
    ParError::Refused {
        code: provider_error_code(error.unwrap_or_default()),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn a_refused_push_is_reported_by_the_providers_code() {
        let code = |status: u16, error: Option<&str>| {
            refusal(StatusCode::from_u16(status).unwrap(), error).code()
        };
        assert_eq!(code(400, Some("invalid_request")), "invalid_request");
        assert_eq!(code(400, Some("invalid_scope")), "invalid_scope");
        assert_eq!(code(400, Some("something_else")), "provider_error");
        assert_eq!(code(400, Some("invalid_target")), "provider_error");
        assert_eq!(code(400, None), "provider_error");
        assert_eq!(code(403, None), "provider_error");
        assert_eq!(code(401, Some("invalid_client")), "server_error");
        assert_eq!(code(400, Some("invalid_client")), "server_error");
        assert_eq!(code(401, None), "server_error");
        assert_eq!(code(503, None), "provider_unavailable");
        assert_eq!(
            code(400, Some("temporarily_unavailable")),
            "provider_unavailable"
        );
        assert_eq!(code(500, Some("server_error")), "provider_unavailable");
        assert_eq!(code(200, None), "provider_unavailable");
    }
}
