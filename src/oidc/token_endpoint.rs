//! Grants at a provider's token endpoint after login (refresh, client credentials), sent with
//! the shared client and classified as the SPEC's properties say.
//!
//! openidconnect/oauth2 turn an empty or non-JSON error body into a generic error that hides the
//! status, and read GitHub's `200 {"error":"bad_refresh_token"}` as a malformed success. Real
//! providers answer a dead refresh token with anything from a bare `400` to `invalid_request`,
//! so the answer is read here: by its parsed `error` whatever the status, else by the status.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::ClientAuth;
use crate::dpop::DpopKey;
use crate::oidc::http::{HttpError, ProviderHttp, read_limited};
use crate::oidc::registry::Provider;

/// Why a grant failed, by what it means for the tokens it was made with.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The grant is gone for good (`invalid_grant`, GitHub's `bad_refresh_token`, a bare 400):
    /// the session ends, a linked account needs connecting again.
    #[error("the provider refused the grant ({0})")]
    Dead(String),
    /// courier's own configuration is wrong at this provider (`invalid_client` and its kin, a
    /// bare 401/403): nothing is deleted, an operator has to act.
    #[error("the provider refused courier's request ({0}); check the client configuration")]
    Misconfigured(String),
    /// The provider failed or could not be reached: try again later, keep everything.
    #[error("the provider is unavailable ({0})")]
    Unavailable(String),
    /// `invalid_target` (RFC 8707 §2, RFC 8693 §2.2.2): the provider will not issue a token for
    /// the resource or audience asked for. The grant itself is fine; this service's call is
    /// refused (403 `not_allowed`), and nothing pauses the owner's other grants.
    #[error("the provider refused to issue a token for this target")]
    InvalidTarget,
}

impl GrantError {
    /// The metric label of the outcome.
    pub fn label(&self) -> &'static str {
        match self {
            GrantError::Dead(_) => "dead",
            GrantError::Misconfigured(_) => "misconfigured",
            GrantError::Unavailable(_) => "unavailable",
            GrantError::InvalidTarget => "invalid_target",
        }
    }
}

/// The RFC 6749 §5.1 answer, as far as courier reads it.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub id_token: Option<SecretString>,
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl TokenResponse {
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }

    /// The granted scopes, when the provider says (space-separated; GitHub uses commas).
    pub fn scopes(&self) -> Option<Vec<String>> {
        self.scope.as_ref().map(|s| {
            s.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }
}

/// `expires_in` as a number or a numeric string (some providers quote it).
fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(f64),
        Text(String),
    }
    Ok(match Option::<Seconds>::deserialize(d)? {
        Some(Seconds::Number(n)) if n >= 0.0 => Some(n as u64),
        Some(Seconds::Text(t)) => t.trim().parse().ok(),
        _ => None,
    })
}

/// Error codes that mean "this grant will never work again".
const DEAD: &[&str] = &["invalid_grant", "bad_refresh_token"];
/// Error codes that mean courier's request or registration is wrong.
const MISCONFIGURED: &[&str] = &[
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_request",
    "invalid_scope",
    "invalid_dpop_proof",
    // Asked for again after the retry with the nonce it sent (or without DPoP at all): the
    // provider and courier disagree about DPoP; nothing is dead.
    "use_dpop_nonce",
    "incorrect_client_credentials",
    "redirect_uri_mismatch",
];
/// Error codes that mean "try again later".
const TRANSIENT: &[&str] = &["temporarily_unavailable", "server_error", "slow_down"];

/// Classifies a token-endpoint answer that is not a token response.
pub fn classify(status: StatusCode, error: Option<&str>) -> GrantError {
    if let Some(code) = error {
        // The provider's own code is quoted only when it is a plain token, never free text.
        let quoted = if code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            code.to_owned()
        } else {
            "an unreadable error code".to_owned()
        };
        if DEAD.contains(&code) {
            return GrantError::Dead(quoted);
        }
        if code == "invalid_target" {
            return GrantError::InvalidTarget;
        }
        if MISCONFIGURED.contains(&code) {
            return GrantError::Misconfigured(quoted);
        }
        if TRANSIENT.contains(&code) {
            return GrantError::Unavailable(quoted);
        }
        // An error code of the provider's own: its status says what it means.
        return by_status(status, &quoted);
    }
    by_status(status, "no error code")
}

fn by_status(status: StatusCode, what: &str) -> GrantError {
    let detail = format!("HTTP {}, {what}", status.as_u16());
    match status.as_u16() {
        400 => GrantError::Dead(detail),
        408 | 425 | 429 | 500..=599 => GrantError::Unavailable(detail),
        // 401/403, other 4xx, and a 2xx or 3xx that is no token response.
        _ if status.is_success() => GrantError::Unavailable(detail),
        _ => GrantError::Misconfigured(detail),
    }
}

fn request_error(e: &HttpError) -> GrantError {
    // Never the URL: a token endpoint's query could carry something it should not.
    match e {
        HttpError::Request(e) if e.is_timeout() => GrantError::Unavailable("timed out".into()),
        HttpError::Request(e) if e.is_connect() => {
            GrantError::Unavailable("could not connect".into())
        }
        HttpError::Request(e) => GrantError::Unavailable(crate::oidc::http::describe(e)),
        HttpError::TooLarge => GrantError::Unavailable("the answer is too large".into()),
        HttpError::Malformed(_) => GrantError::Unavailable("the answer is malformed".into()),
    }
}

/// The token endpoint: discovered, or configured for plain OAuth 2.0 providers.
fn endpoint(provider: &Provider) -> Result<url::Url, GrantError> {
    if let Some(metadata) = provider.metadata() {
        return metadata
            .token_endpoint()
            .map(|u| u.url().clone())
            .ok_or_else(|| GrantError::Misconfigured("the provider has no token endpoint".into()));
    }
    if provider.is_oidc() {
        return Err(GrantError::Unavailable(
            "the provider's metadata is not loaded".into(),
        ));
    }
    provider
        .config
        .token_endpoint
        .clone()
        .ok_or_else(|| GrantError::Misconfigured("no token_endpoint is configured".into()))
}

/// RFC 6749 §2.3.1: the client's id and secret, form-encoded, as HTTP Basic credentials.
fn basic_credentials(client_id: &str, secret: &str) -> String {
    use base64::Engine;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Adds the client's authentication to a request to the provider's token, revocation, PAR or
/// introspection endpoint: HTTP Basic, `client_id` and `client_secret` in the form, or a
/// signed client assertion (`private_key_jwt`).
pub fn authenticate(
    provider: &Provider,
    request: reqwest::RequestBuilder,
    form: &mut Vec<(&'static str, String)>,
) -> Result<reqwest::RequestBuilder, GrantError> {
    let config = &provider.config;
    Ok(
        match (
            config.client_auth(provider.is_oidc()),
            &config.client_secret,
        ) {
            (ClientAuth::PrivateKeyJwt, _) => {
                let assertion = crate::oidc::client_auth::assertion_params(provider)
                    .map_err(|e| GrantError::Misconfigured(e.to_string()))?;
                form.push(("client_id", config.client_id.clone()));
                form.extend(assertion);
                request
            }
            (ClientAuth::ClientSecretBasic, Some(secret)) => request.header(
                AUTHORIZATION,
                basic_credentials(&config.client_id, secret.expose_secret()),
            ),
            (ClientAuth::ClientSecretPost, Some(secret)) => {
                form.push(("client_id", config.client_id.clone()));
                form.push(("client_secret", secret.expose_secret().to_owned()));
                request
            }
            // A public client identifies itself only.
            (_, None) => {
                form.push(("client_id", config.client_id.clone()));
                request
            }
        },
    )
}

/// Sends one grant (`form` holds `grant_type` and its parameters) with the client's
/// authentication, and reads the answer. With a DPoP key, the request carries a proof (RFC
/// 9449 §5) with the provider's last nonce; a `use_dpop_nonce` answer is retried once with
/// the nonce it brought.
pub async fn grant(
    provider: &Provider,
    http: &ProviderHttp,
    form: Vec<(&'static str, String)>,
    dpop: Option<&DpopKey>,
) -> Result<TokenResponse, GrantError> {
    let endpoint = endpoint(provider)?;
    let mut retried = false;
    loop {
        let (status, headers, body) =
            send_once(provider, http, &endpoint, form.clone(), dpop).await?;
        let new_nonce = dpop.is_some() && provider.keep_dpop_nonce(&headers);
        let form_encoded = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.starts_with("application/x-www-form-urlencoded") || v.starts_with("text/plain")
            });
        if new_nonce && !retried && error_code(&body).as_deref() == Some("use_dpop_nonce") {
            retried = true;
            continue;
        }
        return read_answer(status, &body, form_encoded);
    }
}

/// The `error` member of a JSON error answer.
fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("error")?
        .as_str()
        .map(str::to_owned)
}

async fn send_once(
    provider: &Provider,
    http: &ProviderHttp,
    endpoint: &url::Url,
    mut form: Vec<(&'static str, String)>,
    dpop: Option<&DpopKey>,
) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), GrantError> {
    let mut request = authenticate(
        provider,
        http.0
            .post(endpoint.clone())
            .header(ACCEPT, "application/json"),
        &mut form,
    )?;
    if let Some(key) = dpop {
        let proof = key
            .proof(
                "POST",
                endpoint,
                None,
                provider.dpop_nonce().as_deref(),
                chrono::Utc::now().timestamp(),
            )
            .map_err(|e| GrantError::Misconfigured(e.to_string()))?;
        request = request.header("dpop", proof);
    }
    let mut request = request
        .form(&form)
        .build()
        .map_err(|_| GrantError::Misconfigured("the token request cannot be built".into()))?;
    if let Some(trace) = crate::request_context::TraceContext::current()
        && let Ok(value) = reqwest::header::HeaderValue::from_str(&trace.traceparent())
    {
        request.headers_mut().insert("traceparent", value);
    }
    let response = http
        .0
        .execute(request)
        .await
        .map_err(|e| request_error(&HttpError::Request(e)))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_limited(response)
        .await
        .map_err(|e| request_error(&e))?;
    Ok((status, headers, body))
}

/// Reads a token-endpoint answer: an `error` member wins whatever the status (GitHub sends its
/// errors with 200); a success must be a token response.
pub fn read_answer(
    status: StatusCode,
    body: &[u8],
    form_encoded: bool,
) -> Result<TokenResponse, GrantError> {
    // JSON whatever the content type says (some servers label it text/plain); form-encoded
    // when the type says so and it is not JSON (GitHub without `Accept`).
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok().or_else(|| {
        form_encoded.then(|| {
            serde_json::Value::Object(
                url::form_urlencoded::parse(body)
                    .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                    .collect(),
            )
        })
    });
    let error = value
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.as_str());
    if error.is_some() || !status.is_success() {
        return Err(classify(status, error));
    }
    value
        .and_then(|v| serde_json::from_value::<TokenResponse>(v).ok())
        .filter(|t| !t.access_token.expose_secret().is_empty())
        .ok_or_else(|| GrantError::Unavailable("the token response does not parse".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<TokenResponse, GrantError> {
        read_answer(
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
            false,
        )
    }

    #[test]
    fn an_error_code_wins_over_the_status() {
        assert!(matches!(
            answer(200, r#"{"error":"bad_refresh_token"}"#),
            Err(GrantError::Dead(_))
        ));
        assert!(matches!(
            answer(400, r#"{"error":"invalid_grant"}"#),
            Err(GrantError::Dead(_))
        ));
        assert!(matches!(
            answer(401, r#"{"error":"invalid_grant"}"#),
            Err(GrantError::Dead(_))
        ));
        for code in [
            "invalid_client",
            "unauthorized_client",
            "invalid_request",
            "invalid_scope",
        ] {
            assert!(matches!(
                answer(400, &format!(r#"{{"error":"{code}"}}"#)),
                Err(GrantError::Misconfigured(_))
            ));
        }
        assert!(matches!(
            answer(400, r#"{"error":"temporarily_unavailable"}"#),
            Err(GrantError::Unavailable(_))
        ));
        assert!(matches!(
            answer(400, r#"{"error":"invalid_target"}"#),
            Err(GrantError::InvalidTarget)
        ));
    }

    #[test]
    fn without_an_error_code_the_status_decides() {
        assert!(matches!(answer(400, ""), Err(GrantError::Dead(_))));
        assert!(matches!(
            answer(400, "<html>no</html>"),
            Err(GrantError::Dead(_))
        ));
        assert!(matches!(answer(401, ""), Err(GrantError::Misconfigured(_))));
        assert!(matches!(
            answer(403, "denied"),
            Err(GrantError::Misconfigured(_))
        ));
        assert!(matches!(answer(500, ""), Err(GrantError::Unavailable(_))));
        assert!(matches!(answer(503, "{}"), Err(GrantError::Unavailable(_))));
        assert!(matches!(
            answer(200, "not json"),
            Err(GrantError::Unavailable(_))
        ));
        // An unknown code of the provider's own goes by the status.
        assert!(matches!(
            answer(400, r#"{"error":"refresh_token_expired"}"#),
            Err(GrantError::Dead(_))
        ));
    }

    #[test]
    fn a_token_response_parses_with_quoted_numbers_and_comma_scopes() {
        let t = answer(
            200,
            r#"{"access_token":"a","token_type":"bearer","expires_in":"20","scope":"x,y"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, Some(20));
        assert_eq!(t.scopes(), Some(vec!["x".to_owned(), "y".to_owned()]));
    }

    #[test]
    fn form_encoded_answers_are_read_too() {
        let t = read_answer(
            StatusCode::OK,
            b"access_token=gho_abc&scope=read%3Auser&token_type=bearer",
            true,
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "gho_abc");
        assert!(matches!(
            read_answer(StatusCode::OK, b"error=bad_refresh_token", true),
            Err(GrantError::Dead(_))
        ));
    }

    #[test]
    fn json_labelled_as_text_is_read_as_json() {
        assert!(matches!(
            read_answer(
                StatusCode::BAD_REQUEST,
                br#"{"error":"invalid_request"}"#,
                true
            ),
            Err(GrantError::Misconfigured(_))
        ));
    }

    #[test]
    fn error_codes_that_are_not_tokens_are_not_quoted() {
        let e = classify(StatusCode::BAD_REQUEST, Some("<script>secret=1</script>"));
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        assert_eq!(
            basic_credentials("a b", "s:c"),
            format!(
                "Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "a+b:s%3Ac")
            )
        );
    }
}
