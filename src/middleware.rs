//! Cross-cutting response rules: `Cache-Control: no-store` on `/auth` and `/api`, problem+json
//! for every error on `/api` (including ones raised outside our handlers), no 500 page on the
//! login callback, one log line per request that never includes the query string, and the
//! CSRF guard on `/api/*`.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::HttpResponse;
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION};
use actix_web::middleware::Next;
use tracing::Instrument;

use crate::error::{ApiError, problem, problem_response};
use crate::request_context::{Proxied, RequestId, TraceContext, X_REQUEST_ID};

pub async fn response_policy(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let path = req.path();
    let is_api = path.starts_with("/api/") || path == "/api";
    let is_auth = path.starts_with("/auth/");
    let is_callback = path.starts_with("/auth/callback/");

    let mut res = match next.call(req).await {
        Ok(res) => res.map_into_boxed_body(),
        // An error from a middleware (the session store when Postgres is down, for one) has no
        // request left to attach a response to: answer through the error instead.
        Err(e) => {
            let status = e.as_response_error().status_code();
            let mut response = if is_api {
                generic_problem(status)
            } else if is_callback && status.is_server_error() {
                callback_failure()
            } else {
                e.error_response()
            };
            if is_api || is_auth {
                response
                    .headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            security_headers(response.headers_mut(), is_auth);
            return Err(InternalError::from_response(e, response).into());
        }
    };

    let is_proxied = res.response().extensions().contains::<Proxied>();
    if is_api && !is_proxied && (res.status().is_client_error() || res.status().is_server_error()) {
        let is_problem = res
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
        if !is_problem {
            let mut replacement = generic_problem(res.status());
            // A 405 keeps the router's `Allow`.
            if let Some(allow) = res.headers().get(ALLOW).cloned() {
                replacement.headers_mut().insert(ALLOW, allow);
            }
            res = res.into_response(replacement);
        }
    } else if is_callback && res.status().is_server_error() {
        res = res.into_response(callback_failure());
    }
    if is_api || is_auth {
        res.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    security_headers(res.headers_mut(), is_auth);
    Ok(res)
}

/// On every reply: no MIME sniffing and no referrer (URLs can carry codes and states); on
/// `/auth`, no framing (clickjacking of the login and connect flows).
fn security_headers(headers: &mut actix_web::http::header::HeaderMap, is_auth: bool) {
    use actix_web::http::header::{
        CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if is_auth {
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        );
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
}

/// The login callback never shows a 500 page: the browser goes back with a login error.
fn callback_failure() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((LOCATION, "/?login_error=server_error"))
        .finish()
}

/// A problem document for an error response that did not come from `ApiError`.
fn generic_problem(status: StatusCode) -> HttpResponse {
    let (status, code, detail) = match status {
        StatusCode::NOT_FOUND => (status, "not_found", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => (status, "not_allowed", "method not allowed here"),
        s if s.is_client_error() => (s, "bad_request", "the request is malformed"),
        // A fault below the handlers: the session store could not reach Postgres.
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            "a backing service is not available; try again",
        ),
    };
    problem_response(status, problem(status, code, detail))
}

/// One line per request: method, path (never the query: it can hold codes and states),
/// status and time taken.
pub async fn request_log(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // Span names and metric labels must not take any value a client makes up.
    let method_label = crate::metrics::method_label(req.method());
    // The line's fields, copied only when the line will be written.
    let line = tracing::enabled!(tracing::Level::INFO)
        .then(|| (req.method().clone(), req.path().to_owned()));
    let request_id = RequestId::for_request(&req);
    // Every log line made while handling the request carries its id.
    let span = tracing::info_span!(
        "request",
        otel.name = crate::metrics::span_name(method_label),
        otel.kind = "server",
        request_id = %request_id.0,
        trace_id = tracing::field::Empty,
    );
    let trace = TraceContext::for_request(
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
        &span,
    );
    if !span.is_disabled() {
        span.record("trace_id", trace.trace_id());
    }
    let header = HeaderValue::from_str(&request_id.0).ok();
    req.extensions_mut().insert(request_id);
    req.extensions_mut().insert(trace);
    let mut res = trace.scope(next.call(req).instrument(span.clone())).await;
    let (status, route) = match &res {
        Ok(r) => (r.status(), r.request().match_pattern()),
        Err(e) => (e.as_response_error().status_code(), None),
    };
    if let Ok(r) = &mut res
        && let Some(value) = header
    {
        r.headers_mut().insert(X_REQUEST_ID, value);
    }
    // The route pattern, never the path: paths are unbounded and would flood the metrics.
    crate::metrics::record_http_request(
        method_label,
        route.as_deref().unwrap_or("unmatched"),
        status.as_u16(),
        started.elapsed().as_secs_f64(),
    );
    if let Some((method, path)) = line {
        span.in_scope(|| {
            tracing::info!(
                %method,
                path = %path,
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            )
        });
    }
    res
}

/// The CSRF guard on `/api/*`: every request carries `X-CSRF: 1`. A cross-site form cannot set
/// a custom header, and a cross-site fetch that does needs a CORS preflight courier never grants.
/// A browser's WebSocket and `EventSource` cannot set one either: a WebSocket handshake or a GET
/// that asks for `text/event-stream` may come without it, when its `Origin` is courier's own
/// (`live_origin_ok`).
pub async fn require_csrf_header(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let has_header = req
        .headers()
        .get("x-csrf")
        .is_some_and(|v| v.as_bytes() == b"1");
    if has_header || live_request(&req).is_some_and(|kind| live_origin_ok(&req, kind)) {
        Ok(next.call(req).await?.map_into_left_body())
    } else {
        Ok(req
            .error_response(ApiError::CsrfRequired)
            .map_into_right_body())
    }
}

/// What a browser's WebSocket or `EventSource` sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LiveRequest {
    WebSocket,
    EventStream,
}

fn live_request(req: &ServiceRequest) -> Option<LiveRequest> {
    if req.method() != actix_web::http::Method::GET {
        return None;
    }
    // Any other upgrade was refused by the request guard already.
    if crate::proxy::is_websocket_upgrade(req.request()) {
        return Some(LiveRequest::WebSocket);
    }
    req.headers()
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
        .then_some(LiveRequest::EventStream)
}

/// Whether a live request comes from courier's own origin: `Origin` is `public_url`'s exactly
/// (a `null` or other origin is not). For an event stream without `Origin`, the browser's own
/// word that the request is same-origin, `Sec-Fetch-Site: same-origin`, counts instead:
/// Chromium sends no `Origin` on a same-origin `EventSource` request (nor on a same-origin `GET`
/// fetch), but always sends `Sec-Fetch-Site`. Neither header can be set by a page, and a
/// cross-site request carries both (its own origin, `cross-site`); a request with neither is
/// refused. A WebSocket handshake always carries `Origin` in a browser: one without is refused.
fn live_origin_ok(req: &ServiceRequest, kind: LiveRequest) -> bool {
    let Some(state) = req.app_data::<actix_web::web::Data<crate::state::AppState>>() else {
        return false;
    };
    let headers = req.headers();
    let mut origins = headers.get_all(actix_web::http::header::ORIGIN);
    match (origins.next(), origins.next()) {
        (Some(origin), None) => {
            let ours = state
                .config
                .server
                .public_url
                .origin()
                .ascii_serialization();
            origin.as_bytes() == ours.as_bytes()
        }
        (None, _) if kind == LiveRequest::EventStream => {
            let mut sites = headers.get_all("sec-fetch-site");
            matches!((sites.next(), sites.next()), (Some(site), None) if site.as_bytes() == b"same-origin")
        }
        _ => false,
    }
}
