//! `private_key_jwt` client authentication (RFC 7523 §2.2): the client assertion courier signs
//! with its `client_key` for every authenticated request to a provider (token, PAR,
//! revocation).

use chrono::Utc;
use openidconnect::core::CoreJwsSigningAlgorithm;
use serde::Serialize;

use crate::config::ClientAuth;
use crate::crypto::random_token;
use crate::oidc::registry::Provider;

/// RFC 7523 §2.2's `client_assertion_type`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid: enough for one request, short enough that a captured one
/// is useless soon (and `jti` makes it single use at providers that remember it).
const LIFETIME_SECS: i64 = 60;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

/// A client assertion could not be made (no key, or no audience to name).
#[derive(Debug, thiserror::Error)]
#[error("no client assertion for the provider: {0}")]
pub struct AssertionError(pub String);

/// Whether RSA keys sign PS256 for this provider: always under the FAPI 2.0 profile, else when
/// its metadata lists PS256 for client assertions; RS256 otherwise.
pub fn accepts_ps256(provider: &Provider) -> bool {
    provider.config.fapi2
        || provider.metadata().is_some_and(|m| {
            m.token_endpoint_auth_signing_alg_values_supported()
                .is_some_and(|algs| algs.contains(&CoreJwsSigningAlgorithm::RsaSsaPssSha256))
        })
}

/// The audience of assertions for `provider`: its issuer identifier (as its metadata spells
/// it), or the token endpoint of a plain OAuth 2.0 provider.
fn audience(provider: &Provider) -> Result<String, AssertionError> {
    if let Some(metadata) = provider.metadata() {
        return Ok(metadata.issuer().as_str().to_owned());
    }
    if provider.is_oidc() {
        return Err(AssertionError(
            "the provider's metadata is not loaded".into(),
        ));
    }
    provider
        .config
        .token_endpoint
        .as_ref()
        .map(|u| u.as_str().to_owned())
        .ok_or_else(|| AssertionError("no token_endpoint is configured".into()))
}

/// The form parameters that authenticate courier with a client assertion
/// (`client_assertion_type`, `client_assertion`), or none when the provider's `client_auth`
/// is not `private_key_jwt`. Each call signs a fresh assertion (new `jti`, `iat` now).
pub fn assertion_params(
    provider: &Provider,
) -> Result<Vec<(&'static str, String)>, AssertionError> {
    let config = &provider.config;
    if config.client_auth(provider.is_oidc()) != ClientAuth::PrivateKeyJwt {
        return Ok(Vec::new());
    }
    let key = config
        .signing_key()
        .ok_or_else(|| AssertionError("no client_key is configured".into()))?;
    let aud = audience(provider)?;
    // The provider checks the time with its own clock: the real one, not courier's test clock.
    let now = Utc::now().timestamp();
    let claims = Claims {
        iss: &config.client_id,
        sub: &config.client_id,
        aud: &aud,
        jti: random_token(),
        iat: now,
        exp: now + LIFETIME_SECS,
    };
    let jwt = key
        .sign(&claims, accepts_ps256(provider))
        .map_err(AssertionError)?;
    Ok(vec![
        ("client_assertion_type", ASSERTION_TYPE.to_owned()),
        ("client_assertion", jwt),
    ])
}
