//! ID token checks: signature from the provider's JWKS (re-fetched at once on an unknown
//! `kid`), pinned asymmetric algorithms (the provider's `id_token_signed_response_alg`, else
//! those it advertises; never HMAC, and `none` only where that setting says so), `iss`, `aud`,
//! `azp`, `exp`, `iat` and, at login, `nonce`; reading `auth_time`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use openidconnect::core::{CoreIdToken, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, Nonce};
use serde_json::{Map, Value};

use crate::config::IdTokenAlg;
use crate::oidc::http::ProviderHttp;
use crate::oidc::registry::{Metadata, Provider, error_chain};

/// Clock skew allowed between courier and the provider: how far in the future an `iat` may be,
/// and how much older than a login's `max_age` its `auth_time` may be.
pub const CLOCK_SKEW: Duration = Duration::seconds(60);
/// How old an ID token may be when it arrives: it was minted by the exchange just made.
const IAT_MAX_AGE: Duration = Duration::minutes(10);

const ASYMMETRIC_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("the ID token is malformed")]
    Malformed,
    #[error("the ID token names key `{0}`, which the provider does not publish")]
    UnknownKey(String),
    #[error("the ID token was rejected: {0}")]
    Rejected(String),
    #[error("the provider's keys could not be fetched: {0}")]
    Keys(String),
}

/// The checked contents of an ID token.
#[derive(Debug)]
pub struct VerifiedIdToken {
    pub subject: String,
    pub sid: Option<String>,
    /// Every claim of the token, standard and custom.
    pub claims: Map<String, Value>,
}

/// The only ID token algorithms the FAPI 2.0 profile allows.
const FAPI2_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
];

/// The signing algorithms courier accepts from this provider for signed tokens (ID tokens and
/// logout tokens): its `id_token_signed_response_alg` alone when set; else the asymmetric ones
/// it advertises, RS256 when it advertises none; under the FAPI 2.0 profile only PS256 and
/// ES256 (both, when it advertises neither: a token signed otherwise is refused). With
/// `none` configured, signed tokens (logout tokens) take what it advertises.
pub fn allowed_algs(provider: &Provider, metadata: &Metadata) -> Vec<CoreJwsSigningAlgorithm> {
    if let Some(pinned) = provider
        .config
        .id_token_signed_response_alg
        .and_then(signing_alg)
    {
        return vec![pinned];
    }
    let fapi2 = provider.config.fapi2;
    let advertised: Vec<_> = metadata
        .id_token_signing_alg_values_supported()
        .iter()
        .filter(|alg| ASYMMETRIC_ALGS.contains(alg))
        .filter(|alg| !fapi2 || FAPI2_ALGS.contains(alg))
        .cloned()
        .collect();
    if advertised.is_empty() && fapi2 {
        FAPI2_ALGS.to_vec()
    } else if advertised.is_empty() {
        vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]
    } else {
        advertised
    }
}

/// The JWS algorithm a configured `id_token_signed_response_alg` names (`None` for `none`).
fn signing_alg(alg: IdTokenAlg) -> Option<CoreJwsSigningAlgorithm> {
    Some(match alg {
        IdTokenAlg::Rs256 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        IdTokenAlg::Rs384 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        IdTokenAlg::Rs512 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        IdTokenAlg::Ps256 => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        IdTokenAlg::Ps384 => CoreJwsSigningAlgorithm::RsaSsaPssSha384,
        IdTokenAlg::Ps512 => CoreJwsSigningAlgorithm::RsaSsaPssSha512,
        IdTokenAlg::Es256 => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        IdTokenAlg::Es384 => CoreJwsSigningAlgorithm::EcdsaP384Sha384,
        IdTokenAlg::EdDsa => CoreJwsSigningAlgorithm::EdDsa,
        IdTokenAlg::None => return None,
    })
}

/// Whether this provider's ID tokens come unsigned (`id_token_signed_response_alg = "none"`),
/// which courier takes only from a token endpoint it reaches over TLS or on loopback (OIDC Core
/// §3.1.3.7 step 6: TLS then vouches for the issuer). Every ID token courier checks comes from
/// the token endpoint: it uses neither the implicit nor the hybrid flow.
fn unsigned(
    provider: &Provider,
    metadata: &Metadata,
    header: &Map<String, Value>,
) -> Result<bool, IdTokenError> {
    if provider.config.id_token_signed_response_alg != Some(IdTokenAlg::None) {
        return Ok(false);
    }
    if header.get("alg").and_then(Value::as_str) != Some("none") {
        return Err(IdTokenError::Rejected(
            "the provider's ID tokens are configured unsigned (`none`), and this one is not".into(),
        ));
    }
    let endpoint = metadata
        .token_endpoint()
        .map(|e| e.url().clone())
        .ok_or_else(|| IdTokenError::Rejected("the provider has no token endpoint".into()))?;
    let loopback = match endpoint.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if endpoint.scheme() != "https" && !loopback {
        return Err(IdTokenError::Rejected(
            "an unsigned ID token from a token endpoint reached without TLS".into(),
        ));
    }
    Ok(true)
}

pub async fn verify(
    provider: &Provider,
    http: &ProviderHttp,
    id_token: &CoreIdToken,
    nonce: Option<&Nonce>,
    now: DateTime<Utc>,
) -> Result<VerifiedIdToken, IdTokenError> {
    let raw = id_token.to_string();
    let (header, payload) = decode_parts(&raw)?;
    let mut metadata = provider
        .metadata()
        .ok_or_else(|| IdTokenError::Keys("provider metadata is not loaded".into()))?;

    let unsigned = unsigned(provider, &metadata, &header)?;
    if !unsigned
        && let Some(kid) = header.get("kid").and_then(Value::as_str)
        && !publishes_key(&metadata, kid)
    {
        metadata = Some(
            provider
                .refetch_jwks(http)
                .await
                .map_err(|e| IdTokenError::Keys(e.to_string()))?,
        )
        .filter(|m| publishes_key(m, kid))
        .ok_or_else(|| IdTokenError::UnknownKey(kid.to_owned()))?;
    }

    let client = provider.client(&metadata);
    let verifier = client.id_token_verifier();
    let verifier = if unsigned {
        verifier.insecure_disable_signature_check()
    } else {
        verifier.set_allowed_algs(allowed_algs(provider, &metadata))
    };
    let verifier = verifier
        .set_time_fn(move || now)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > now + CLOCK_SKEW {
                Err(format!("issued in the future ({iat})"))
            } else if iat < now - IAT_MAX_AGE {
                Err(format!("issued too long ago ({iat})"))
            } else {
                Ok(())
            }
        });
    // A login's ID token must carry the login's nonce; one from a refresh need not have any.
    let claims = match nonce {
        Some(nonce) => id_token.claims(&verifier, nonce),
        None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
    }
    .map_err(|e| IdTokenError::Rejected(error_chain(&e)))?;

    // openidconnect leaves azp unchecked: a token issued to another client must not log in here.
    if let Some(azp) = claims.authorized_party()
        && azp.as_str() != provider.config.client_id
    {
        return Err(IdTokenError::Rejected(format!(
            "authorized party `{}` is not this client",
            azp.as_str()
        )));
    }

    // openidconnect accepts any string as `sub`; an empty one names no one, and would make
    // every such login the same user.
    if claims.subject().as_str().is_empty() {
        return Err(IdTokenError::Rejected(
            "the subject (`sub`) is empty".into(),
        ));
    }

    let sid = payload
        .get("sid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(VerifiedIdToken {
        subject: claims.subject().as_str().to_owned(),
        sid,
        claims: payload,
    })
}

fn publishes_key(metadata: &Metadata, kid: &str) -> bool {
    metadata
        .jwks()
        .keys()
        .iter()
        .any(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
}

pub type JsonObject = Map<String, Value>;

/// The ID token's `auth_time` (seconds since the epoch), when it names a usable one.
pub fn auth_time(claims: &JsonObject) -> Option<DateTime<Utc>> {
    let seconds = claims.get("auth_time")?.as_f64()?;
    if !seconds.is_finite() {
        return None;
    }
    DateTime::from_timestamp(seconds.floor() as i64, 0)
}

/// Decodes a compact JWS's header and payload as JSON objects, without checking anything.
pub fn decode_parts(raw: &str) -> Result<(JsonObject, JsonObject), IdTokenError> {
    let mut parts = raw.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdTokenError::Malformed);
    };
    let decode = |segment: &str| -> Result<JsonObject, IdTokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| IdTokenError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| IdTokenError::Malformed)
    };
    Ok((decode(header)?, decode(payload)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn auth_time_is_read_from_the_claims_when_it_is_a_time() {
        let claims = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert_eq!(
            super::auth_time(&claims(json!({"auth_time": 1_700_000_000}))).map(|t| t.timestamp()),
            Some(1_700_000_000)
        );
        assert_eq!(
            super::auth_time(&claims(json!({"auth_time": 1_700_000_000.7}))).map(|t| t.timestamp()),
            Some(1_700_000_000)
        );
        assert_eq!(super::auth_time(&claims(json!({}))), None);
        assert_eq!(
            super::auth_time(&claims(json!({"auth_time": "yesterday"}))),
            None
        );
        assert_eq!(super::auth_time(&claims(json!({"auth_time": 1e300}))), None);
    }
}
