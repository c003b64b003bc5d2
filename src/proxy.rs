//! Forwarding a browser's request to a dependent service and the answer back, as streams.
//!
//! Dropped on the way out: the browser's `Cookie`, `Authorization` and `DPoP`, hop-by-hop
//! headers, courier's own `X-CSRF`, any `Forwarded`/`X-Forwarded-*` the browser sent (courier
//! sets its own), and `X-Original-URL`/`X-Rewrite-URL`. Dropped on the way back: hop-by-hop
//! headers, `Set-Cookie`, and every header that would act on courier's own origin rather than
//! describe the service's answer (`DROPPED_RESPONSE_HEADERS`, a `WWW-Authenticate` challenge of
//! a scheme other than Bearer or DPoP). Redirects are not followed: `/api/*` never redirects.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderName;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use url::Url;
use uuid::Uuid;

use crate::error::ApiError;
use crate::live::{Binding, CloseCause, LinkedAccount, LiveConnections};
use crate::request_context::{Proxied, TraceContext};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus ones courier
/// sets itself or must never pass on.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "cookie",
    "authorization",
    // courier's own proof is the only one a service may see: a browser's would sit beside
    // courier's token as if courier had made it.
    "dpop",
    "x-csrf",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    // Servers such as IIS and Symfony route by these instead of the request line: a browser's
    // copy would step around the path checks.
    "x-original-url",
    "x-rewrite-url",
    "traceparent",
    "tracestate",
    "x-request-id",
    // A WebSocket is two connections, each with its own handshake (`websocket`): the browser's
    // key and extensions are for courier, and `send` makes the service's.
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "set-cookie",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    // Each of these would act on courier's origin, the SPA's and every other service's: a
    // redirect the proxy otherwise refuses, wiping courier's cookie and the SPA's storage,
    // pinning transport or CORS policy, widening a service worker's scope, reporting
    // endpoints, alternative services, client hints.
    "refresh",
    "clear-site-data",
    "strict-transport-security",
    "service-worker-allowed",
    "nel",
    "report-to",
    "alt-svc",
    "accept-ch",
];

/// Prefixes of response headers dropped for the same reason (CORS is courier's to answer).
const DROPPED_RESPONSE_PREFIXES: &[&str] = &["access-control-"];

/// The client for service calls on this thread: one per actix worker. reqwest runs each pooled
/// connection on the runtime that opened it, so one client shared by the workers has a request
/// on one worker wake its connection's task on another (a cross-thread wake-up, a system call,
/// per request); a worker's own client keeps its connections on its thread (bench/: rows (g)
/// and (gw), about 60% more requests per second for the bare stack).
pub fn client() -> reqwest::Client {
    thread_local! {
        static CLIENT: reqwest::Client = build_client();
    }
    CLIENT.with(reqwest::Client::clone)
}

/// Builds a client for services: no redirects, bounded connection set-up. Each call sets its
/// service's own timeout.
#[allow(
    clippy::expect_used,
    reason = "start-up only; fails only without a TLS backend"
)]
fn build_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the TLS backend initialises")
}

/// The request body, held when small enough to send twice.
pub enum OutgoingBody {
    Buffered(Bytes),
    Streaming {
        receiver: mpsc::Receiver<Result<Bytes, std::io::Error>>,
        length: Option<u64>,
        /// Set when the body outgrew the limit on its way through.
        too_large: Arc<AtomicBool>,
    },
}

impl OutgoingBody {
    /// Reads up to `buffer_limit` bytes; a larger body continues as a stream fed by a local
    /// task. A body larger than `max` is refused (413), before anything is sent when its length
    /// is declared, else by failing the stream.
    pub async fn read(
        mut payload: web::Payload,
        buffer_limit: usize,
        max: u64,
        length: Option<u64>,
    ) -> Result<OutgoingBody, ApiError> {
        if length.is_some_and(|l| l > max) {
            return Err(ApiError::PayloadTooLarge);
        }
        let limit = buffer_limit.min(max as usize);
        let mut buffer = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                if crate::body_deadline::is_timed_out(&e) {
                    ApiError::RequestTimeout
                } else {
                    ApiError::BadRequest(format!("request body: {e}"))
                }
            })?;
            if buffer.len() + chunk.len() <= limit {
                buffer.extend_from_slice(&chunk);
                continue;
            }
            let (sender, receiver) = mpsc::channel(8);
            let head = buffer.freeze();
            let too_large = Arc::new(AtomicBool::new(false));
            let flag = too_large.clone();
            // The payload is tied to this worker thread; pump it into a channel reqwest can read.
            actix_web::rt::spawn(async move {
                let mut sent = 0u64;
                let mut pieces = futures_util::stream::iter([Ok(head), Ok(chunk)]).chain(payload);
                while let Some(piece) = pieces.next().await {
                    let item = match piece {
                        Ok(bytes) => {
                            sent += bytes.len() as u64;
                            if sent > max {
                                flag.store(true, Ordering::SeqCst);
                                Err(std::io::Error::other("the request body is too large"))
                            } else {
                                Ok(bytes)
                            }
                        }
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    let failed = item.is_err();
                    if sender.send(item).await.is_err() || failed {
                        return;
                    }
                }
            });
            return Ok(OutgoingBody::Streaming {
                receiver,
                length,
                too_large,
            });
        }
        Ok(OutgoingBody::Buffered(buffer.freeze()))
    }
}

/// What the proxy needs to know about the browser's request.
pub struct Incoming<'a> {
    pub req: &'a HttpRequest,
    pub public_url: &'a Url,
    /// The client's address, as `X-Forwarded-For` tells the service: the peer, or the address
    /// a trusted proxy in front of courier vouched for (`limits::Limits::client_of`).
    pub client: Option<std::net::IpAddr>,
}

fn forwarded_headers(incoming: &Incoming<'_>) -> reqwest::header::HeaderMap {
    let mut out = reqwest::header::HeaderMap::new();
    let headers = incoming.req.headers();
    let connection_listed: Vec<String> = headers
        .get_all("connection")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in headers {
        let lower = name.as_str();
        // courier sets the X-Forwarded-* it vouches for; a browser's own (X-Forwarded-Prefix,
        // X-Forwarded-Uri, …) would be believed by the service as courier's.
        if DROPPED_REQUEST_HEADERS.contains(&lower)
            || lower.starts_with("x-forwarded-")
            || connection_listed.iter().any(|c| c == lower)
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(n, v);
        }
    }
    // A value built here is handed over as it is: `from_maybe_shared` takes the bytes without
    // copying them again.
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = reqwest::header::HeaderValue::from_maybe_shared(Bytes::from(value)) {
            out.insert(name, v);
        }
    };
    if let Some(client) = incoming.client {
        set("x-forwarded-for", client.to_string());
    }
    set("x-forwarded-proto", incoming.public_url.scheme().to_owned());
    if let Some(host) = incoming.public_url.host_str() {
        let host = match incoming.public_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        set("x-forwarded-host", host);
    }
    if let Some(trace) = incoming.req.extensions().get::<TraceContext>() {
        set("traceparent", trace.traceparent());
    }
    if let Some(id) = incoming
        .req
        .extensions()
        .get::<crate::request_context::RequestId>()
    {
        set("x-request-id", id.0.clone());
    }
    out
}

/// The token a call carries: `Bearer`, or `DPoP` with its proof (RFC 9449 §7).
pub struct Credentials<'a> {
    pub token: &'a SecretString,
    pub dpop_proof: Option<String>,
}

/// The key of the WebSocket handshake `send` made with the service, kept in the response's
/// extensions for `websocket` to check the service's `Sec-WebSocket-Accept` against.
#[derive(Clone)]
pub struct WebSocketKey(pub String);

/// One call to the service. `timeout` bounds the wait for the response's headers (and so the
/// request body's upload); the response body then streams for as long as data flows (see
/// `StreamRules`). A browser's WebSocket handshake (`is_websocket_upgrade`) becomes one of
/// courier's own with the service. `Err` carries the problem to answer with.
pub async fn send(
    client: &reqwest::Client,
    incoming: &Incoming<'_>,
    target: &Url,
    body: OutgoingBody,
    token: Option<Credentials<'_>>,
    timeout: Duration,
) -> Result<reqwest::Response, ApiError> {
    let method = reqwest::Method::from_bytes(incoming.req.method().as_str().as_bytes())
        .map_err(|_| ApiError::BadRequest("unsupported method".into()))?;
    let mut headers = forwarded_headers(incoming);
    if let Some(Credentials { token, dpop_proof }) = token {
        let scheme = if dpop_proof.is_some() {
            "DPoP"
        } else {
            "Bearer"
        };
        if let Some(proof) = dpop_proof
            && let Ok(value) = reqwest::header::HeaderValue::from_str(&proof)
        {
            headers.insert("dpop", value);
        }
        let value = format!("{scheme} {}", token.expose_secret());
        let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
            ApiError::internal(anyhow::anyhow!(
                "the access token is not a valid header value"
            ))
        })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let websocket_key = is_websocket_upgrade(incoming.req).then(|| {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        for (name, value) in [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key.as_str()),
        ] {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        WebSocketKey(key)
    });
    let mut request = client.request(method, target.clone()).headers(headers);
    let mut too_large = None;
    request = match body {
        OutgoingBody::Buffered(bytes) if bytes.is_empty() => request,
        OutgoingBody::Buffered(bytes) => request.body(bytes),
        OutgoingBody::Streaming {
            receiver,
            length,
            too_large: flag,
        } => {
            too_large = Some(flag);
            if let Some(length) = length {
                request = request.header(reqwest::header::CONTENT_LENGTH, length);
            }
            let stream = futures_util::stream::unfold(receiver, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            request.body(reqwest::Body::wrap_stream(stream))
        }
    };
    let sent = match tokio::time::timeout(timeout, request.send()).await {
        Ok(sent) => sent,
        Err(_) => {
            return Err(ApiError::UpstreamTimeout(
                "the service did not answer in time".into(),
            ));
        }
    };
    let mut response = sent.map_err(|e| {
        // reqwest's errors show the URL, query and all (`error sending request for url
        // (…?api_key=…)`); the query may carry secrets, so no error keeps it.
        let e = e.without_url();
        if let Some(flag) = &too_large
            && flag.load(Ordering::SeqCst)
        {
            return ApiError::PayloadTooLarge;
        }
        if e.is_timeout() {
            ApiError::UpstreamTimeout("the service did not answer in time".into())
        } else {
            tracing::warn!(error = %crate::oidc::registry::error_chain(&e), "service call failed");
            ApiError::ServiceUnreachable("the service cannot be reached".into())
        }
    })?;
    if let Some(key) = websocket_key {
        response.extensions_mut().insert(key);
    }
    Ok(response)
}

/// Whether a request asks to become a WebSocket (RFC 6455 §4.1): a `GET` with one `Upgrade`
/// header, `websocket`. The one test for it: `limits` lets only these through (to services
/// that take them), the CSRF guard and the handler tell them from other calls by it.
pub fn is_websocket_upgrade(req: &HttpRequest) -> bool {
    let mut upgrade = req.headers().get_all(actix_web::http::header::UPGRADE);
    req.method() == actix_web::http::Method::GET
        && matches!((upgrade.next(), upgrade.next()), (Some(value), None)
            if value.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket")))
}

/// How a response body may stream: cut off after `idle` without a chunk, and when its
/// session ends — at once for a live connection (server-sent events, `binding`), and for any
/// other body still open after `live::FOLLOW_AFTER` (`follow`).
pub struct StreamRules {
    pub idle: Duration,
    pub binding: Option<Binding>,
    pub follow: Option<Follow>,
}

/// What binds a response body to its session once it has streamed for `live::FOLLOW_AFTER`.
pub struct Follow {
    pub live: Arc<LiveConnections>,
    pub session: Uuid,
    pub linked: Option<LinkedAccount>,
}

/// The service's answer, streamed back without hop-by-hop headers and cookies. A redirect is
/// not passed on: `/api/*` never redirects, or the SPA's fetch would follow it off to wherever
/// the service pointed.
pub fn respond(upstream: reqwest::Response, rules: StreamRules) -> Result<HttpResponse, ApiError> {
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
        return Err(ApiError::ServiceUnreachable(format!(
            "the service answered with a redirect ({})",
            status.as_u16()
        )));
    }
    let mut response = HttpResponse::build(status);
    let connection_listed: Vec<String> = upstream
        .headers()
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in upstream.headers() {
        let lower = name.as_str();
        if DROPPED_RESPONSE_HEADERS.contains(&lower)
            || DROPPED_RESPONSE_PREFIXES
                .iter()
                .any(|p| lower.starts_with(p))
            || connection_listed.iter().any(|c| c == lower)
        {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
            continue;
        };
        if name == actix_web::http::header::WWW_AUTHENTICATE {
            // A Basic (or any other) challenge would pop the browser's password prompt on
            // courier's origin; Bearer and DPoP challenges are the service's word to the SPA.
            if let Some(kept) = value.to_str().ok().and_then(token_challenges) {
                response.append_header((name, kept));
            }
            continue;
        }
        response.append_header((name, value.as_bytes()));
    }
    let length = upstream.content_length();
    // actix logs a failed response stream with the error's Debug, which would show a URL;
    // reqwest 0.13 sets none on body errors today, and this keeps it so.
    let stream = upstream
        .bytes_stream()
        .map(|chunk| chunk.map_err(|e| std::io::Error::other(e.without_url())));
    let stream = GuardedBody::new(stream, rules);
    let mut response = match length {
        Some(length) => response.no_chunking(length).streaming(stream),
        None => response.streaming(stream),
    };
    response.extensions_mut().insert(Proxied);
    Ok(response)
}

/// The Bearer and DPoP challenges of a `WWW-Authenticate` value (RFC 9110 §11.6.1: one or more
/// challenges, each a scheme followed by a token68 or comma-separated parameters), or `None`
/// when it has none. A comma inside a quoted string separates nothing.
fn token_challenges(value: &str) -> Option<String> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    let mut kept: Vec<&str> = Vec::new();
    let mut keeping = false;
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        // A challenge starts with its scheme: a token followed by a space or nothing. An
        // item whose first token is followed by `=` is a parameter of the challenge before.
        let token_end = item.find([' ', '\t', '=']).unwrap_or(item.len());
        let starts_challenge = !item[token_end..].starts_with('=');
        if starts_challenge {
            let scheme = &item[..token_end];
            keeping = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop");
        }
        if keeping {
            kept.push(item);
        }
    }
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// Whether a response is a stream of server-sent events (bound to the session as a live
/// connection).
pub fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}

type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A service's response body on its way to the browser, under its `StreamRules`. A body cut
/// off — idle too long, or its session ended — fails, so that the browser sees the response
/// cut short (no final chunk), never a complete one; an `EventSource` then tries again and
/// learns that the session is gone.
struct GuardedBody {
    inner: BodyStream,
    idle: Duration,
    /// Armed when the body first waits, so that an answer that is there at once costs no timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    closed: Option<Pin<Box<dyn Future<Output = CloseCause> + Send>>>,
    /// The body's place among the live connections while it streams.
    binding: Option<Binding>,
    /// Not bound yet: bound when still streaming at `follow_at`.
    follow: Option<Follow>,
    follow_at: tokio::time::Instant,
    /// Armed only when the body waits before `follow_at`.
    follow_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl GuardedBody {
    fn new(
        inner: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        rules: StreamRules,
    ) -> Self {
        let mut body = Self {
            inner: Box::pin(inner),
            idle: rules.idle,
            deadline: None,
            closed: None,
            binding: None,
            follow: rules.follow,
            follow_at: tokio::time::Instant::now() + crate::live::FOLLOW_AFTER,
            follow_timer: None,
        };
        if let Some(binding) = rules.binding {
            body.bind(binding);
            body.follow = None;
        }
        body
    }

    fn bind(&mut self, binding: Binding) {
        self.closed = Some(Box::pin(binding.closed()));
        self.binding = Some(binding);
    }

    /// Binds the body once it has streamed for `FOLLOW_AFTER`; before that, makes sure it is
    /// woken then when it waits (`waiting`).
    fn follow_when_due(&mut self, cx: &mut Context<'_>, waiting: bool) {
        let Some(follow) = &self.follow else {
            return;
        };
        let due = tokio::time::Instant::now() >= self.follow_at
            || (waiting
                && self
                    .follow_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(self.follow_at)))
                    .as_mut()
                    .poll(cx)
                    .is_ready());
        if !due {
            return;
        }
        let binding = follow.live.follow(follow.session, follow.linked.clone());
        self.follow = None;
        self.follow_timer = None;
        if let Some(binding) = binding {
            self.bind(binding);
        }
    }

    /// Cuts the body off when its binding says the session ended (or courier stops).
    fn cut_off_when_closed(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Option<Result<Bytes, std::io::Error>>>> {
        let cause = match self.closed.as_mut()?.as_mut().poll(cx) {
            Poll::Ready(cause) => cause,
            Poll::Pending => return None,
        };
        tracing::info!(
            code = cause.code(),
            reason = cause.reason(),
            "streamed response cut off"
        );
        Some(self.cut_off(std::io::Error::other(cause.reason())))
    }

    /// Ends the body with an error: what reaches the browser is incomplete.
    fn cut_off(&mut self, why: std::io::Error) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.inner = Box::pin(futures_util::stream::empty());
        self.closed = None;
        self.follow = None;
        Poll::Ready(Some(Err(why)))
    }
}

impl Stream for GuardedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.follow_when_due(cx, false);
        if let Some(cut) = this.cut_off_when_closed(cx) {
            return cut;
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(item) => {
                if let Some(deadline) = &mut this.deadline {
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.idle);
                }
                Poll::Ready(item)
            }
            Poll::Pending => {
                if this.follow.is_some() {
                    this.follow_when_due(cx, true);
                    // Just bound: its close signal wakes this body from now on.
                    if let Some(cut) = this.cut_off_when_closed(cx) {
                        return cut;
                    }
                }
                let idle = this.idle;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::info!(
                            idle_secs = idle.as_secs(),
                            "streamed response cut off: idle"
                        );
                        this.cut_off(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the service sent nothing for stream_idle_timeout_secs",
                        ))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::token_challenges;

    #[test]
    fn only_bearer_and_dpop_challenges_pass() {
        assert_eq!(
            token_challenges(r#"Bearer realm="api", error="invalid_token""#).as_deref(),
            Some(r#"Bearer realm="api", error="invalid_token""#)
        );
        assert_eq!(
            token_challenges(r#"DPoP algs="ES256", error="use_dpop_nonce""#).as_deref(),
            Some(r#"DPoP algs="ES256", error="use_dpop_nonce""#)
        );
        assert_eq!(token_challenges(r#"Basic realm="x""#), None);
        assert_eq!(token_challenges("Negotiate abc=="), None);
        assert_eq!(
            token_challenges(r#"Basic realm="a, b", Bearer error="insufficient_user_authentication", acr_values="mfa", NTLM"#)
                .as_deref(),
            Some(r#"Bearer error="insufficient_user_authentication", acr_values="mfa""#)
        );
        assert_eq!(
            token_challenges(r#"bearer, Digest realm="x", nonce="y""#).as_deref(),
            Some("bearer")
        );
        assert_eq!(token_challenges(""), None);
    }
}
