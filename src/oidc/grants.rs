//! Token grants after login: refresh (RFC 6749 §6) and client credentials (§4.4), for
//! OpenID Connect providers and plain OAuth 2.0 ones alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use openidconnect::core::{CoreIdToken, CoreIdTokenClaims};
use openidconnect::{
    ErrorResponseType, OAuth2TokenResponse, RequestTokenError, StandardErrorResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

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
        // As `token_endpoint::read_answer` takes an answer that is no token response; the code
        // exchange reads this one itself (`unreadable`), since a bad ID token in it is no outage.
        RequestTokenError::Parse(error, body) => {
            GrantError::Unavailable(match unreadable(error.path(), &body) {
                UnreadableResponse::IdToken(defect) => format!("the ID token {defect}"),
                UnreadableResponse::Response(detail) => detail,
            })
        }
        RequestTokenError::Other(detail) => GrantError::Unavailable(detail),
    }
}

/// Why openidconnect could not read a token endpoint's answer (`RequestTokenError::Parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnreadableResponse {
    /// A token response whose ID token openidconnect cannot read (it reads the ID token's
    /// claims while parsing the response, so a missing `iat` fails the whole response): what
    /// is wrong with it, naming the claim.
    IdToken(String),
    /// The answer is no token response: where reading it stopped (member names, no values).
    Response(String),
}

/// Sorts an answer openidconnect could not read (`path` is where its parser stopped): a bad
/// ID token in it is the ID token's fault, not the response's.
pub fn unreadable(path: &serde_path_to_error::Path, body: &[u8]) -> UnreadableResponse {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return UnreadableResponse::Response("the answer is not a JSON object".into());
    };
    // A member that is no JWT at all (neither a JWS nor a JWE) makes no ID token to judge:
    // the response is malformed.
    if let Some(defect) = answer
        .get("id_token")
        .and_then(Value::as_str)
        .filter(|raw| matches!(raw.split('.').count(), 3 | 5))
        .and_then(id_token_defect)
    {
        return UnreadableResponse::IdToken(defect);
    }
    let path = path.to_string();
    let path = if path.len() <= 64 && path.bytes().all(|b| b.is_ascii_graphic()) {
        path
    } else {
        "an unreadable member".to_owned()
    };
    UnreadableResponse::Response(format!("the token response does not parse (at `{path}`)"))
}

/// What makes `raw` an ID token that openidconnect cannot read, as the end of a sentence
/// starting "the ID token" ("has no `iat`"); `None` when it reads it. Claim names only,
/// never their values: claims describe a person.
pub fn id_token_defect(raw: &str) -> Option<String> {
    if raw.parse::<CoreIdToken>().is_ok() {
        return None;
    }
    let parts: Vec<&str> = raw.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Some("is encrypted (a JWE), which courier does not decrypt".into()),
        _ => return Some("is not a signed JWT".into()),
    }
    let object = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|json| serde_json::from_slice::<Map<String, Value>>(&json).ok())
    };
    if object(parts[0]).is_none() {
        return Some("has a header that is not a JSON object".into());
    }
    let Some(claims) = object(parts[1]) else {
        return Some("has claims that are not a JSON object".into());
    };
    // OpenID Connect Core §2: the claims every ID token carries, and their JSON types.
    let audience =
        |v: &Value| v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    type WellTyped = fn(&Value) -> bool;
    let required: [(&str, WellTyped); 5] = [
        ("iss", Value::is_string),
        ("sub", Value::is_string),
        ("aud", audience),
        ("exp", Value::is_number),
        ("iat", Value::is_number),
    ];
    for (name, well_typed) in required {
        match claims.get(name) {
            None => return Some(format!("has no `{name}`")),
            Some(value) if !well_typed(value) => return Some(format!("has a malformed `{name}`")),
            Some(_) => {}
        }
    }
    // Another claim of a type openidconnect refuses (`email_verified` as a string, say): the
    // one without which the claims read.
    let reads = |claims: Map<String, Value>| {
        serde_json::from_value::<CoreIdTokenClaims>(Value::Object(claims)).is_ok()
    };
    if reads(claims.clone()) {
        return Some("has a header openidconnect does not accept".into());
    }
    let culprit = claims.keys().find(|name| {
        let mut without = claims.clone();
        without.remove(name.as_str());
        reads(without)
    });
    Some(match culprit {
        Some(name) if name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic()) => {
            format!("has a malformed `{name}`")
        }
        _ => "has claims that do not parse".into(),
    })
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
            // A provider's glitch in one ID token: the grant itself is good, so the session
            // keeps its new access token and its old ID token (and claims).
            Err(_) => {
                let defect =
                    id_token_defect(raw.expose_secret()).unwrap_or_else(|| "does not parse".into());
                tracing::warn!(
                    provider = %provider.id(),
                    error = %format_args!("the ID token {defect}"),
                    "refreshed ID token rejected; kept the old one"
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let header = json!({"alg": "RS256", "kid": "k"});
        format!("{}.{}.c2ln", part(header), part(claims))
    }

    fn claims() -> Value {
        json!({"iss": "https://op.example", "sub": "alice", "aud": "courier",
               "exp": 2_000_000_000, "iat": 1_700_000_000, "email_verified": true})
    }

    fn without(name: &str) -> Value {
        let mut claims = claims();
        claims.as_object_mut().unwrap().remove(name);
        claims
    }

    fn with(name: &str, value: Value) -> Value {
        let mut claims = claims();
        claims[name] = value;
        claims
    }

    /// What openidconnect's own parse of a token response carrying `id_token` makes of it.
    fn read(id_token: &str) -> UnreadableResponse {
        let body =
            json!({"access_token": "a", "token_type": "Bearer", "id_token": id_token}).to_string();
        let mut deserializer = serde_json::Deserializer::from_slice(body.as_bytes());
        let error = serde_path_to_error::deserialize::<_, openidconnect::core::CoreTokenResponse>(
            &mut deserializer,
        )
        .unwrap_err();
        unreadable(error.path(), body.as_bytes())
    }

    #[test]
    fn an_id_token_openidconnect_cannot_read_is_described_by_the_claim_at_fault() {
        assert_eq!(id_token_defect(&jwt(claims())), None);
        for (claims, defect) in [
            (without("iat"), "has no `iat`"),
            (without("sub"), "has no `sub`"),
            (with("exp", json!("soon")), "has a malformed `exp`"),
            (with("aud", json!(["courier", 7])), "has a malformed `aud`"),
            (
                with("email_verified", json!("yes")),
                "has a malformed `email_verified`",
            ),
        ] {
            assert_eq!(
                id_token_defect(&jwt(claims.clone())).as_deref(),
                Some(defect)
            );
            let expected = UnreadableResponse::IdToken(defect.to_owned());
            assert_eq!(read(&jwt(claims)), expected);
        }
        assert_eq!(
            id_token_defect("e30.bm90IGpzb24.c2ln").as_deref(),
            Some("has claims that are not a JSON object")
        );
    }

    #[test]
    fn a_token_response_that_is_not_one_is_no_id_token_fault() {
        assert!(matches!(read("not-a-jwt"), UnreadableResponse::Response(_)));
        let body = b"<html>Bad Gateway</html>";
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let error = serde_path_to_error::deserialize::<_, openidconnect::core::CoreTokenResponse>(
            &mut deserializer,
        )
        .unwrap_err();
        assert_eq!(
            unreadable(error.path(), body),
            UnreadableResponse::Response("the answer is not a JSON object".into())
        );
    }
}
