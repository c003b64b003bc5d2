//! Token grants after login: refresh (RFC 6749 §6) and client credentials (§4.4), for
//! OpenID Connect providers and plain OAuth 2.0 ones alike.

use chrono::{DateTime, Duration, Utc};
use openidconnect::{
    ErrorResponseType, OAuth2TokenResponse, RefreshToken, RequestTokenError, Scope,
    StandardErrorResponse, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};

use crate::oidc::http::{HttpError, ProviderHttp};
use crate::oidc::id_token;
use crate::oidc::registry::Provider;
use crate::tokens::TokenSet;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The provider no longer honours the grant (`invalid_grant`): the user must sign in again.
    #[error("the provider refused the grant: invalid_grant")]
    InvalidGrant,
    /// The provider could not be reached or failed; nothing stored should change.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered with an error other than `invalid_grant`, or nonsense.
    #[error("the grant failed: {0}")]
    Failed(String),
}

/// Sorts a token-endpoint failure: `invalid_grant`, unreachable, or otherwise failed. Nothing
/// the provider sent is quoted beyond its error code (a parse error could quote tokens).
pub fn classify<T: ErrorResponseType + std::fmt::Display>(
    e: RequestTokenError<HttpError, StandardErrorResponse<T>>,
) -> GrantError {
    match e {
        RequestTokenError::ServerResponse(r) => match r.error().to_string().as_str() {
            "invalid_grant" => GrantError::InvalidGrant,
            "temporarily_unavailable" | "server_error" => {
                GrantError::Unavailable(r.error().to_string())
            }
            other => GrantError::Failed(other.to_owned()),
        },
        RequestTokenError::Request(e) => GrantError::Unavailable(e.to_string()),
        RequestTokenError::Parse(_, _) => {
            GrantError::Unavailable("the token response does not parse".into())
        }
        RequestTokenError::Other(detail) if detail.contains("status code 5") => {
            GrantError::Unavailable(detail)
        }
        RequestTokenError::Other(detail) => GrantError::Failed(detail),
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
        scopes: response
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|| fallback_scopes.to_vec()),
    }
}

/// Redeems `previous`'s refresh token. The result keeps what the provider did not replace:
/// the refresh token when it does not rotate, the ID token and scopes when it sends none.
pub async fn refresh(
    provider: &Provider,
    http: &ProviderHttp,
    previous: &TokenSet,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<TokenSet, GrantError> {
    let refresh_token = previous
        .refresh_token
        .as_ref()
        .ok_or(GrantError::InvalidGrant)?;
    let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
    if let Some(client) = provider.plain_client() {
        let response = client
            .exchange_refresh_token(&token)
            .request_async(http)
            .await
            .map_err(classify)?;
        return Ok(token_set(
            &response,
            None,
            Some(refresh_token),
            &previous.scopes,
            now,
        ));
    }
    let metadata = provider
        .metadata()
        .ok_or_else(|| GrantError::Unavailable("provider metadata is not loaded".into()))?;
    let response = provider
        .client(&metadata)
        .exchange_refresh_token(&token)
        .map_err(|e| GrantError::Failed(e.to_string()))?
        .request_async(http)
        .await
        .map_err(classify)?;

    let mut id_token = previous.id_token.clone();
    if let Some(new_id_token) = response.id_token() {
        match id_token::verify(provider, http, new_id_token, None, now).await {
            Ok(verified) if verified.subject == subject => {
                id_token = Some(SecretString::from(new_id_token.to_string()));
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
    Ok(token_set(
        &response,
        id_token,
        Some(refresh_token),
        &previous.scopes,
        now,
    ))
}

/// A client-credentials token for courier itself at `provider`.
pub async fn client_credentials(
    provider: &Provider,
    http: &ProviderHttp,
    scopes: &[String],
    now: DateTime<Utc>,
) -> Result<(SecretString, Option<DateTime<Utc>>), GrantError> {
    // `invalid_grant` makes no sense here: there is no user grant to lose.
    let no_user_grant = |e: GrantError| match e {
        GrantError::InvalidGrant => GrantError::Failed("invalid_grant".into()),
        other => other,
    };
    let scopes = scopes.iter().cloned().map(Scope::new);
    let (access_token, expires_in) = if let Some(client) = provider.plain_client() {
        let response = client
            .exchange_client_credentials()
            .add_scopes(scopes)
            .request_async(http)
            .await
            .map_err(|e| no_user_grant(classify(e)))?;
        (
            response.access_token().secret().clone(),
            response.expires_in(),
        )
    } else {
        let metadata = provider
            .metadata()
            .ok_or_else(|| GrantError::Unavailable("provider metadata is not loaded".into()))?;
        let response = provider
            .client(&metadata)
            .exchange_client_credentials()
            .map_err(|e| GrantError::Failed(e.to_string()))?
            .add_scopes(scopes)
            .request_async(http)
            .await
            .map_err(|e| no_user_grant(classify(e)))?;
        (
            response.access_token().secret().clone(),
            response.expires_in(),
        )
    };
    Ok((
        SecretString::from(access_token),
        expires_at(expires_in, now),
    ))
}
