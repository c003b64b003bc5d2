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

/// Builds the shared client: no redirects (SSRF, and token endpoints never redirect),
/// bounded connect and total time.
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
            let request = reqwest::Request::try_from(request)?;
            let response = self.0.execute(request).await?;
            let mut builder = openidconnect::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = read_limited(response).await?;
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
