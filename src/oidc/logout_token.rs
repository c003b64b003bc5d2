//! Logout tokens of OpenID Connect Back-Channel Logout 1.0 (with errata 1): signature from the
//! provider's JWKS (re-fetched once on an unknown `kid`), pinned asymmetric algorithms, `iss`,
//! `aud`, `iat`, `exp` (when present), `jti`, the back-channel `events` member, `sid` and/or
//! `sub`, and no `nonce`. Replay (`jti`) is the caller's check; [`LogoutTarget::remember_until`]
//! says how long the `jti` must be kept for that check to hold.
//!
//! Providers in the field differ from the letter of the spec: Keycloak before 25 and
//! IdentityServer 6 type their logout tokens `JWT` (or not at all), and some omit `exp`. So `typ`
//! may be absent, `JWT`, `logout+jwt` or `application/logout+jwt` (any case); anything else (an
//! access token's `at+jwt`, say) is refused, as it is a token made for another purpose. A token
//! without `exp` is taken to expire [`UNDATED_LIFETIME`] after its `iat`, with the same clock
//! skew allowance as an explicit `exp`.

use chrono::{DateTime, Duration, TimeZone, Utc};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::JsonWebKey;
use openidconnect::core::CoreJwsSigningAlgorithm;
use serde_json::Value;

use crate::oidc::http::ProviderHttp;
use crate::oidc::id_token::allowed_algs;
use crate::oidc::registry::Provider;

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Clock skew allowed between courier and the provider.
const SKEW: Duration = Duration::seconds(60);
/// A logout token older than this is refused even when its `exp` is later.
const MAX_AGE: Duration = Duration::minutes(10);
/// How long after its `iat` a logout token without `exp` is accepted (no skew added); its `jti`
/// is still remembered until `iat` + this + [`SKEW`] + [`REMEMBER_MARGIN`].
pub const UNDATED_LIFETIME: Duration = Duration::seconds(120);
/// Extra time a used `jti` is remembered beyond the last moment its token could be accepted:
/// every instance purges used `jti`s by its own clock, and instances' clocks differ a little.
const REMEMBER_MARGIN: Duration = Duration::seconds(60);

#[derive(Debug, thiserror::Error)]
pub enum LogoutTokenError {
    /// The token is not a valid logout token: 400.
    #[error("{0}")]
    Invalid(String),
    /// The provider's metadata or keys cannot be had right now: the provider should retry.
    #[error("{0}")]
    Unavailable(String),
}

fn reject(why: impl Into<String>) -> LogoutTokenError {
    LogoutTokenError::Invalid(why.into())
}

/// Who a valid logout token logs out.
#[derive(Debug)]
pub struct LogoutTarget {
    pub jti: String,
    pub sid: Option<String>,
    pub sub: Option<String>,
    /// The `jti` must be remembered at least until then: until this moment (by courier's
    /// clock) the token would otherwise be accepted again.
    pub remember_until: DateTime<Utc>,
}

/// Whether a JOSE `typ` header is one that logout tokens are sent with in practice.
fn acceptable_typ(typ: &str) -> bool {
    // RFC 7515 §4.1.9: `application/` may be left out of a media type in `typ`; media types are
    // case-insensitive.
    ["logout+jwt", "application/logout+jwt", "JWT"]
        .iter()
        .any(|t| typ.eq_ignore_ascii_case(t))
}

fn jsonwebtoken_alg(alg: &CoreJwsSigningAlgorithm) -> Option<Algorithm> {
    use CoreJwsSigningAlgorithm as C;
    Some(match alg {
        C::RsaSsaPkcs1V15Sha256 => Algorithm::RS256,
        C::RsaSsaPkcs1V15Sha384 => Algorithm::RS384,
        C::RsaSsaPkcs1V15Sha512 => Algorithm::RS512,
        C::RsaSsaPssSha256 => Algorithm::PS256,
        C::RsaSsaPssSha384 => Algorithm::PS384,
        C::RsaSsaPssSha512 => Algorithm::PS512,
        C::EcdsaP256Sha256 => Algorithm::ES256,
        C::EcdsaP384Sha384 => Algorithm::ES384,
        C::EdDsa => Algorithm::EdDSA,
        _ => return None,
    })
}

fn timestamp(claims: &Value, name: &str) -> Result<DateTime<Utc>, LogoutTokenError> {
    claims
        .get(name)
        .and_then(Value::as_i64)
        .and_then(|t| Utc.timestamp_opt(t, 0).single())
        .ok_or_else(|| reject(format!("`{name}` is missing or not a timestamp")))
}

pub async fn verify(
    provider: &Provider,
    http: &ProviderHttp,
    token: &str,
    now: DateTime<Utc>,
) -> Result<LogoutTarget, LogoutTokenError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| reject("not a signed JWT with a supported algorithm"))?;
    if let Some(typ) = &header.typ
        && !acceptable_typ(typ)
    {
        return Err(reject(format!(
            "`typ` is `{typ}`, not logout+jwt, JWT or absent"
        )));
    }
    let mut metadata = provider.metadata().ok_or_else(|| {
        LogoutTokenError::Unavailable("the provider's metadata is not loaded".into())
    })?;
    let allowed: Vec<Algorithm> = allowed_algs(provider, &metadata)
        .iter()
        .filter_map(jsonwebtoken_alg)
        .collect();
    if !allowed.contains(&header.alg) {
        return Err(reject(format!("algorithm {:?} is not allowed", header.alg)));
    }

    let find_key = |m: &crate::oidc::registry::Metadata| -> Option<Jwk> {
        m.jwks()
            .keys()
            .iter()
            .find(|k| match (&header.kid, k.key_id()) {
                (Some(kid), Some(id)) => id.as_str() == kid,
                // Without a kid, the provider's only key (or the first) is the one.
                (None, _) => true,
                _ => false,
            })
            .and_then(|k| serde_json::to_value(k).ok())
            .and_then(|v| serde_json::from_value(v).ok())
    };
    let jwk = match find_key(&metadata) {
        Some(jwk) => jwk,
        None => {
            metadata = provider.refetch_jwks(http).await.map_err(|e| {
                LogoutTokenError::Unavailable(format!(
                    "the provider's keys could not be fetched: {e}"
                ))
            })?;
            find_key(&metadata)
                .ok_or_else(|| reject("the token names a key the provider does not publish"))?
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| reject("the provider's key is unusable"))?;

    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.set_issuer(&[metadata.issuer().as_str()]);
    validation.set_audience(&[&provider.config.client_id]);
    // Times are checked below against courier's clock.
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["iss", "aud"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| reject(format!("the token does not verify: {e}")))?
        .claims;

    let iat = timestamp(&claims, "iat")?;
    if iat > now + SKEW {
        return Err(reject("issued in the future"));
    }
    if iat < now - MAX_AGE {
        return Err(reject("issued too long ago"));
    }
    // Only an absent `exp` counts as "none"; a present one must be a timestamp.
    let valid_until = match claims.get("exp") {
        Some(_) => timestamp(&claims, "exp")?,
        None => iat + UNDATED_LIFETIME,
    };
    // The SPEC's rule for an undated token is strict: at most 120 s after its `iat` (skew
    // only forgives an `iat` slightly in the future, above). A dated one gets the usual skew.
    let expired = match claims.get("exp") {
        Some(_) => valid_until <= now - SKEW,
        None => now > valid_until,
    };
    if expired {
        return Err(reject(if claims.get("exp").is_some() {
            "expired"
        } else {
            "has no `exp` and was issued more than 120 s ago"
        }));
    }
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err(reject("`events` lacks the back-channel logout member"));
    }
    if claims.get("nonce").is_some() {
        return Err(reject("a logout token must not have a nonce"));
    }
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let (sid, sub) = (text("sid"), text("sub"));
    if sid.is_none() && sub.is_none() {
        return Err(reject("neither `sid` nor `sub`"));
    }
    let jti = text("jti").ok_or_else(|| reject("`jti` is missing"))?;
    Ok(LogoutTarget {
        jti,
        sid,
        sub,
        // Accepted only while `now < valid_until + SKEW`: remembered at least that long.
        remember_until: valid_until.max(now) + SKEW + REMEMBER_MARGIN,
    })
}
