//! Token grants after login: refresh (RFC 6749 §6) and client credentials (§4.4), for
//! OpenID Connect providers and plain OAuth 2.0 ones alike.

use chrono::{DateTime, Duration, Utc};
use openidconnect::core::CoreIdToken;
use openidconnect::{
    ErrorResponseType, OAuth2TokenResponse, RequestTokenError, StandardErrorResponse,
};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::tokens::TokenSet;
use crate::dpop::DpopKey;
use crate::oidc::http::{HttpError, ProviderHttp};
use crate::oidc::id_token;
use crate::oidc::registry::Provider;
use crate::oidc::token_endpoint::{self, TokenResponse};

pub use crate::oidc::token_endpoint::GrantError;

/// Sorts a failure of a grant sent through openidconnect (the code exchange at login) the way
/// `token_endpoint::classify` sorts the others. Nothing the provider sent is quoted beyond its
/// error code (a parse error could quote tokens).
pub fn classify<T: ErrorResponseType + std::fmt::Display>(
    e: RequestTokenError<HttpError, StandardErrorResponse<T>>,
) -> GrantError {
    match e {
        RequestTokenError::ServerResponse(r) => token_endpoint::classify(
            reqwest::StatusCode::BAD_REQUEST,
            Some(r.error().to_string().as_str()),
        ),
        RequestTokenError::Request(_) => GrantError::Unavailable("the request failed".into()),
        RequestTokenError::Parse(_, _) => {
            GrantError::Unavailable("the token response does not parse".into())
        }
        RequestTokenError::Other(detail) => GrantError::Unavailable(detail),
    }
}

fn expires_at(
    expires_in: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    expires_in
        .and_then(|d| Duration::from_std(d).ok())
        .map(|d| now + d)
}

/// The token set a token response makes, keeping from `previous` what it does not replace:
/// the refresh token when the provider does not rotate, the scopes when it does not say.
pub fn token_set<R: OAuth2TokenResponse>(
    response: &R,
    id_token: Option<SecretString>,
    previous_refresh: Option<&SecretString>,
    fallback_scopes: &[String],
    now: DateTime<Utc>,
) -> TokenSet {
    TokenSet {
        access_token: SecretString::from(response.access_token().secret().clone()),
        refresh_token: response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().clone()))
            .or_else(|| previous_refresh.cloned()),
        id_token,
        expires_at: expires_at(response.expires_in(), now),
        obtained_at: Some(now),
        scopes: response
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|| fallback_scopes.to_vec()),
    }
}

/// The token set a response of `token_endpoint::grant` makes (see `token_set`).
fn token_set_of(
    response: &TokenResponse,
    id_token: Option<SecretString>,
    previous_refresh: Option<&SecretString>,
    fallback_scopes: &[String],
    now: DateTime<Utc>,
) -> TokenSet {
    TokenSet {
        access_token: response.access_token.clone(),
        refresh_token: response
            .refresh_token
            .clone()
            .filter(|t| !t.expose_secret().is_empty())
            .or_else(|| previous_refresh.cloned()),
        id_token,
        expires_at: expires_at(response.expires_in(), now),
        obtained_at: Some(now),
        scopes: response
            .scopes()
            .unwrap_or_else(|| fallback_scopes.to_vec()),
    }
}

/// Redeems `previous`'s refresh token, for an access token restricted to `resource` when one is
/// given (RFC 8707). The result keeps what the provider did not replace: the refresh token
/// when it does not rotate, the ID token and scopes when it sends none.
pub async fn refresh(
    provider: &Provider,
    http: &ProviderHttp,
    previous: &TokenSet,
    subject: &str,
    resource: Option<&str>,
    dpop: Option<&DpopKey>,
    now: DateTime<Utc>,
) -> Result<TokenSet, GrantError> {
    // A token set without a refresh token cannot be renewed: the grant ends with the token.
    let refresh_token = previous
        .refresh_token
        .as_ref()
        .ok_or_else(|| GrantError::Dead("no refresh token".into()))?;
    let mut form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.expose_secret().to_owned()),
    ];
    if let Some(resource) = resource {
        form.push(("resource", resource.to_owned()));
    }
    let response = token_endpoint::grant(provider, http, form, dpop).await?;

    let mut id_token = previous.id_token.clone();
    if provider.is_oidc()
        && let Some(raw) = &response.id_token
    {
        match raw.expose_secret().parse::<CoreIdToken>() {
            Ok(new_id_token) => {
                match id_token::verify(provider, http, &new_id_token, None, now).await {
                    Ok(verified) if verified.subject == subject => {
                        id_token = Some(raw.clone());
                    }
                    Ok(_) => tracing::warn!(
                        provider = %provider.id(),
                        "refreshed ID token names another subject; kept the old one"
                    ),
                    Err(e) => tracing::warn!(
                        provider = %provider.id(),
                        error = %e,
                        "refreshed ID token rejected; kept the old one"
                    ),
                }
            }
            Err(_) => tracing::warn!(
                provider = %provider.id(),
                "refreshed ID token is not a JWT; kept the old one"
            ),
        }
    }
    Ok(token_set_of(
        &response,
        id_token,
        Some(refresh_token),
        &previous.scopes,
        now,
    ))
}

/// A client-credentials token for courier itself at `provider` (restricted to `resource` when
/// one is given, RFC 8707): the token, when it expires, and when it was obtained.
pub async fn client_credentials(
    provider: &Provider,
    http: &ProviderHttp,
    scopes: &[String],
    resource: Option<&str>,
    dpop: Option<&DpopKey>,
    now: DateTime<Utc>,
) -> Result<TokenSet, GrantError> {
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    if let Some(resource) = resource {
        form.push(("resource", resource.to_owned()));
    }
    let response = token_endpoint::grant(provider, http, form, dpop)
        .await
        .map_err(|e| match e {
            // There is no user grant to lose: a refusal is courier's configuration.
            GrantError::Dead(detail) => GrantError::Misconfigured(detail),
            other => other,
        })?;
    Ok(token_set_of(&response, None, None, scopes, now))
}

/// What an RFC 8693 exchange asks for: a token for `audience` and/or `resource`, with `scopes`.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeTarget<'a> {
    pub audience: Option<&'a str>,
    pub resource: Option<&'a str>,
    pub scopes: &'a [String],
}

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: an OAuth 2.0 access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Exchanges the user's access token (`subject`) at `provider` for an access token made for
/// `target` (RFC 8693). `GrantError::Dead` means the subject token is no longer accepted;
/// `InvalidTarget` that the provider will not issue one for the target. A refresh token the
/// provider may add is not kept: the exchange is repeated with the user's token when due.
pub async fn exchange(
    provider: &Provider,
    http: &ProviderHttp,
    subject: &SecretString,
    target: ExchangeTarget<'_>,
    dpop: Option<&DpopKey>,
    now: DateTime<Utc>,
) -> Result<TokenSet, GrantError> {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE.to_owned()),
        ("subject_token", subject.expose_secret().to_owned()),
        ("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()),
        ("requested_token_type", ACCESS_TOKEN_TYPE.to_owned()),
    ];
    if let Some(audience) = target.audience {
        form.push(("audience", audience.to_owned()));
    }
    if let Some(resource) = target.resource {
        form.push(("resource", resource.to_owned()));
    }
    if !target.scopes.is_empty() {
        form.push(("scope", target.scopes.join(" ")));
    }
    let response = token_endpoint::grant(provider, http, form, dpop).await?;
    let mut tokens = token_set_of(&response, None, None, target.scopes, now);
    tokens.refresh_token = None;
    Ok(tokens)
}
