//! Token revocation at the provider (RFC 7009).

use secrecy::{ExposeSecret, SecretString};

use crate::oidc::grants::GrantError;
use crate::oidc::http::ProviderHttp;
use crate::oidc::registry::Provider;

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
    let mut request = http.0.post(endpoint);
    let secret = provider.config.client_secret.as_ref();
    if provider.is_oidc() {
        request = request.basic_auth(
            &provider.config.client_id,
            secret.map(|s| s.expose_secret().to_owned()),
        );
    } else {
        form.push(("client_id", provider.config.client_id.clone()));
        if let Some(secret) = secret {
            form.push(("client_secret", secret.expose_secret().to_owned()));
        }
    }
    let response = request
        .form(&form)
        .send()
        .await
        .map_err(|e| GrantError::Unavailable(e.to_string()))?;
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
