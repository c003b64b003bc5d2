//! Token revocation at the provider (RFC 7009).

use secrecy::{ExposeSecret, SecretString};

use crate::oidc::grants::GrantError;
use crate::oidc::http::ProviderHttp;
use crate::oidc::registry::Provider;
use crate::oidc::token_endpoint;

/// Revokes `token` (a refresh token when `is_refresh`, else an access token). Ok(false) when
/// the provider has no revocation endpoint. A provider that cannot be reached is an error;
/// one that refuses (for instance because the token is already dead) is not.
pub async fn revoke(
    provider: &Provider,
    http: &ProviderHttp,
    token: &SecretString,
    is_refresh: bool,
) -> Result<bool, GrantError> {
    let Some(endpoint) = provider.revocation_endpoint() else {
        return Ok(false);
    };
    let hint = if is_refresh {
        "refresh_token"
    } else {
        "access_token"
    };
    let mut form = vec![
        ("token", token.expose_secret().to_owned()),
        ("token_type_hint", hint.to_owned()),
    ];
    let request = token_endpoint::authenticate(provider, http.0.post(endpoint), &mut form)?;
    let response = request
        .form(&form)
        .send()
        .await
        .map_err(|e| GrantError::Unavailable(crate::oidc::http::describe(&e)))?;
    if response.status().is_server_error() {
        return Err(GrantError::Unavailable(format!(
            "revocation answered {}",
            response.status()
        )));
    }
    if !response.status().is_success() {
        tracing::warn!(provider = %provider.id(), status = %response.status(), "revocation refused");
    }
    Ok(true)
}
