//! Guards in front of everything: request-head limits (431), ambiguous requests and protocol
//! upgrades (400), deadlines on request bodies (408), and per-client rate limits on the login
//! endpoints (429).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{COOKIE, HOST, RETRY_AFTER, UPGRADE};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::middleware::Next;
use actix_web::web;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::body_deadline::{BodyDeadline, HeldBody};
use crate::config::Config;
use crate::error::{ApiError, problem, problem_response};

/// Headers that ask a server to treat a request as another method. A service behind courier
/// might honour them and so step around `allowed_methods`: courier refuses such requests.
const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

pub struct Limits {
    max_header_bytes: usize,
    max_cookies: usize,
    trusted_proxies: Vec<ipnet::IpNet>,
    logins: DefaultKeyedRateLimiter<IpAddr>,
    /// How long a body to courier's own endpoints may take to arrive.
    body_timeout: Duration,
    /// The same for a call to each service: its `timeout_secs`.
    service_body_timeouts: HashMap<String, Duration>,
    /// The services that take WebSockets (`websocket = true`).
    websocket_services: HashSet<String>,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        let per_minute =
            NonZeroU32::new(config.rate_limit.requests_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.rate_limit.burst).unwrap_or(NonZeroU32::MIN);
        Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_cookies: config.server.max_cookies,
            trusted_proxies: config.rate_limit.trusted_proxies(),
            logins: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            body_timeout: Duration::from_secs(config.server.body_timeout_secs),
            service_body_timeouts: config
                .services
                .iter()
                .map(|s| (s.name.clone(), Duration::from_secs(s.timeout_secs)))
                .collect(),
            websocket_services: config
                .services
                .iter()
                .filter(|s| s.websocket)
                .map(|s| s.name.clone())
                .collect(),
        }
    }

    /// Whether a request that asks for a protocol switch is a WebSocket handshake to a service
    /// that takes them. Every other upgrade is refused before anything reads its body: actix
    /// would read an upgrade request's body to the end of the connection, which never comes.
    /// (A name the router would decode differently is no such service: the handler then
    /// refuses it as a plain call with an `Upgrade` header.)
    fn is_websocket_to_service(&self, req: &ServiceRequest) -> bool {
        let named = req
            .path()
            .strip_prefix("/api/services/")
            .and_then(|rest| rest.split('/').next())
            .is_some_and(|name| self.websocket_services.contains(name));
        named && crate::proxy::is_websocket_upgrade(req.request())
    }

    /// How long the body of a request to `path` may take to arrive: a proxied call's service
    /// timeout, else courier's own. A service name the router would decode differently gets
    /// courier's own (shorter or equal) deadline: never none.
    fn body_timeout(&self, path: &str) -> Duration {
        path.strip_prefix("/api/services/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|name| self.service_body_timeouts.get(name))
            .copied()
            .unwrap_or(self.body_timeout)
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the right-most
    /// address in `X-Forwarded-For` that is not a trusted proxy.
    pub fn client_address(&self, req: &ServiceRequest) -> Option<IpAddr> {
        self.client_of(req.peer_addr()?.ip(), req.headers())
    }

    /// `client_address` for a request's peer and headers.
    pub fn client_of(
        &self,
        peer: IpAddr,
        headers: &actix_web::http::header::HeaderMap,
    ) -> Option<IpAddr> {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        if !trusted(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|ip| !trusted(ip))
                .unwrap_or(peer),
        )
    }

    /// Forgets clients that have been quiet long enough to be back at a full burst.
    pub fn shrink(&self) {
        self.logins.retain_recent();
        self.logins.shrink_to_fit();
    }
}

fn refuse(status: StatusCode, code: &str, detail: &str) -> actix_web::HttpResponse {
    problem_response(status, problem(status, code, detail))
}

/// The limits are registered by `startup` on every app; a missing one is a wiring bug, answered
/// as a 500 rather than a panic.
fn not_registered() -> ApiError {
    ApiError::internal(anyhow::anyhow!("the request limits are not registered"))
}

/// Refuses request heads that are too large, carry too many cookies, name the host twice, or
/// (on `/api`) ask for a method override.
pub async fn request_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limits = req
        .app_data::<web::Data<Arc<Limits>>>()
        .ok_or_else(not_registered)?
        .clone();
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let cookies: usize = headers
        .get_all(COOKIE)
        .map(|v| v.as_bytes().split(|b| *b == b';').count())
        .sum();
    let refusal = if header_bytes > limits.max_header_bytes {
        Some(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "bad_request",
            "the request's header fields are too large",
        ))
    } else if cookies > limits.max_cookies {
        Some(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "bad_request",
            "the request carries too many cookies",
        ))
    } else if req.uri().authority().is_some() || req.method() == actix_web::http::Method::CONNECT {
        // courier is no forward proxy: absolute-form and authority-form targets are refused.
        Some(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request target must be a path",
        ))
    } else if headers.contains_key(UPGRADE) && !limits.is_websocket_to_service(&req) {
        // See `is_websocket_to_service`.
        Some(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "only a WebSocket to a service with `websocket = true` may switch protocols",
        ))
    } else if headers.get_all(HOST).count() > 1 {
        Some(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request names its host more than once",
        ))
    } else if req.path().starts_with("/api/")
        && METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| headers.contains_key(*h))
    {
        Some(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "method-override headers are not accepted",
        ))
    } else {
        None
    };
    match refusal {
        Some(mut response) => {
            // The connection may hold more of this request; nothing on it is read further.
            response
                .head_mut()
                .set_connection_type(ConnectionType::Close);
            Ok(req.into_response(response).map_into_right_body())
        }
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// Puts a request's body under a deadline: courier's own `server.body_timeout_secs`, or for a
/// proxied call its service's `timeout_secs`. A body that stops arriving in time gets 408
/// (code `bad_request`: the client was slow, not a service).
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limits = req
        .app_data::<web::Data<Arc<Limits>>>()
        .ok_or_else(not_registered)?
        .clone();
    // A WebSocket's "body" is its frames, for as long as it lives: the relay bounds it.
    if limits.is_websocket_to_service(&req) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let payload = req.take_payload();
    if matches!(payload, Payload::None) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let timeout = limits.body_timeout(req.path());
    let (deadline, body) = BodyDeadline::start(payload, timeout);
    req.set_payload(Payload::Stream {
        payload: Box::pin(body),
    });
    req.extensions_mut().insert(deadline.clone());

    let res = next.call(req).await?;
    if deadline.timed_out() {
        tracing::info!(timeout_secs = timeout.as_secs(), "request body too slow");
        let response = refuse(
            StatusCode::REQUEST_TIMEOUT,
            "bad_request",
            "the request body did not arrive in time",
        );
        return Ok(res.into_response(response).map_into_right_body());
    }
    Ok(res.map_into_left_body())
}

/// The outermost layer: a response to a request whose body was not read to its end (unread,
/// or cut short by `body_deadline`) closes the connection, rather than leave actix draining
/// the rest at the client's pace. Outermost, so that no layer replaces the body after it.
pub async fn close_after_unread_body(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, HeldBody>>, actix_web::Error> {
    let res = next.call(req).await?;
    let unread = res
        .request()
        .extensions()
        .get::<BodyDeadline>()
        .filter(|d| !d.finished())
        .cloned();
    let Some(deadline) = unread else {
        return Ok(res.map_into_left_body());
    };
    let mut res = res.map_body(|_, body| deadline.hold(BoxBody::new(body)));
    res.response_mut()
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    Ok(res.map_into_right_body())
}

/// Rate-limits the login endpoints per client address: 429 `rate_limited` with Retry-After.
pub async fn login_rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limits = req
        .app_data::<web::Data<Arc<Limits>>>()
        .ok_or_else(not_registered)?
        .clone();
    if let Some(client) = limits.client_address(&req)
        && let Err(not_until) = limits.logins.check_key(&client)
    {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        tracing::warn!(%client, path = %req.path(), "rate limited");
        let mut response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address; try again shortly",
        );
        response.headers_mut().insert(
            RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(wait.as_secs() + 1),
        );
        return Ok(req.into_response(response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}
