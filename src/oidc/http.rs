//! The one outgoing HTTP client for providers: redirects off, timeouts set, bodies bounded,
//! and an adapter so that openidconnect uses it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Provider responses (metadata, JWKS, tokens, userinfo) are small; anything larger is refused.
const MAX_PROVIDER_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request to the provider failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the provider's response is larger than {MAX_PROVIDER_RESPONSE} bytes")]
    TooLarge,
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl HttpError {
    /// Whether the provider could not be reached at all (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HttpError::Request(e) if e.is_connect() || e.is_timeout())
    }
}

/// A request error as it may be logged: its kind and cause, never the URL (whose query could
/// carry a secret).
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read"
    } else {
        "the request failed"
    };
    let mut detail = kind.to_owned();
    let mut source = e.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

/// Builds the shared client: no redirects (SSRF, and token endpoints never redirect),
/// bounded connect and total time.
#[allow(
    clippy::expect_used,
    reason = "start-up only; fails only without a TLS backend"
)]
pub fn build_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("courier/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initialises")
}

#[derive(Clone)]
pub struct ProviderHttp(pub reqwest::Client);

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut request = reqwest::Request::try_from(request)?;
            if let Some(trace) = crate::request_context::TraceContext::current()
                && let Ok(value) = reqwest::header::HeaderValue::from_str(&trace.traceparent())
            {
                request.headers_mut().insert("traceparent", value);
            }
            let response = self.0.execute(request).await?;
            let mut builder = openidconnect::http::Response::builder().status(response.status());
            let form = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.starts_with("application/x-www-form-urlencoded")
                        || v.starts_with("text/plain")
                });
            for (name, value) in response.headers() {
                if !(form && name == reqwest::header::CONTENT_TYPE) {
                    builder = builder.header(name, value);
                }
            }
            let body = read_limited(response).await?;
            let body = if form {
                builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
                form_to_json(&body)
            } else {
                normalize_scope(body)
            };
            builder
                .body(body)
                .map_err(|e| HttpError::Malformed(e.to_string()))
        })
    }
}

/// Reads a response body, refusing one larger than the provider limit.
pub async fn read_limited(response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_PROVIDER_RESPONSE as u64)
    {
        return Err(HttpError::TooLarge);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_PROVIDER_RESPONSE {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Token responses of some plain OAuth 2.0 servers (GitHub's, by default) are form-encoded;
/// oauth2 reads JSON. Numbers stay numbers; comma-separated scopes become space-separated.
fn form_to_json(body: &[u8]) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        let value = match name.as_ref() {
            "expires_in" | "refresh_token_expires_in" => value
                .parse::<u64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| value.clone().into_owned().into()),
            "scope" => value.replace(',', " ").into(),
            _ => value.into_owned().into(),
        };
        object.insert(name.into_owned(), value);
    }
    serde_json::to_vec(&object).unwrap_or_default()
}

/// A JSON token response whose `scope` separates scopes with commas (GitHub's) gets spaces.
fn normalize_scope(body: Vec<u8>) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut object))
            if object.contains_key("access_token")
                && object
                    .get("scope")
                    .and_then(|s| s.as_str())
                    .is_some_and(|s| s.contains(',')) =>
        {
            let scope = object["scope"]
                .as_str()
                .unwrap_or_default()
                .replace(',', " ");
            object.insert("scope".into(), scope.into());
            serde_json::to_vec(&object).unwrap_or(body)
        }
        _ => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_token_responses_become_json() {
        let json: serde_json::Value = serde_json::from_slice(&form_to_json(
            b"access_token=gho_abc&scope=read%3Auser%2Crepo&token_type=bearer&expires_in=3600",
        ))
        .unwrap();
        assert_eq!(json["access_token"], "gho_abc");
        assert_eq!(json["scope"], "read:user repo");
        assert_eq!(json["expires_in"], 3600);
    }

    #[test]
    fn comma_scopes_in_json_become_spaces() {
        let body = br#"{"access_token":"x","token_type":"bearer","scope":"a,b"}"#.to_vec();
        let json: serde_json::Value = serde_json::from_slice(&normalize_scope(body)).unwrap();
        assert_eq!(json["scope"], "a b");
    }
}
