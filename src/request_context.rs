//! What one request carries through the layers, set by the middleware and read by the proxy,
//! the provider clients and the response rules: its id, its place in a distributed trace, and
//! the mark on a service's own response. A leaf, so that `middleware`, `proxy` and `oidc` can
//! share these without importing each other.

use std::future::Future;
use std::sync::OnceLock;

use actix_web::dev::ServiceRequest;
use actix_web::http::header::HeaderName;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::crypto::id_bytes;

/// Whether spans are exported: then courier's span ids are OpenTelemetry's.
static EXPORTING: OnceLock<bool> = OnceLock::new();

/// Called once by `telemetry::init`.
pub fn set_exporting(exporting: bool) {
    let _ = EXPORTING.set(exporting);
}

/// Marks a response as the service's own, so its error statuses are passed through rather than
/// turned into courier problem documents.
#[derive(Clone, Copy)]
pub struct Proxied;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the caller's `X-Request-Id` when it is short and plain, else a new one.
/// Logged with every line of the request, sent back, and passed on to services.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn for_request(req: &ServiceRequest) -> RequestId {
        let given = req
            .headers()
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        RequestId(match given {
            Some(id) => id.to_owned(),
            None => hex::encode(id_bytes::<16>()),
        })
    }
}

/// A request's place in a distributed trace: its trace id (the caller's, when it sent a valid
/// `traceparent`) and courier's own span id, which services and providers see as their parent.
#[derive(Debug, Clone, Copy)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// The trace context of a request handled in `span`, continuing the caller's
    /// `traceparent` when it is valid.
    pub fn for_request(traceparent: Option<&str>, span: &tracing::Span) -> TraceContext {
        let parent = traceparent.and_then(parse_traceparent);
        if EXPORTING.get().copied().unwrap_or(false) {
            if let Some(parent) = parent {
                let remote = SpanContext::new(
                    TraceId::from_bytes(parent.trace_id),
                    SpanId::from_bytes(parent.span_id),
                    if parent.sampled {
                        TraceFlags::SAMPLED
                    } else {
                        TraceFlags::default()
                    },
                    true,
                    TraceState::default(),
                );
                let _ =
                    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
            }
            let context = span.context();
            let own = context.span().span_context().clone();
            if own.is_valid() {
                return TraceContext {
                    trace_id: own.trace_id().to_bytes(),
                    span_id: own.span_id().to_bytes(),
                    sampled: own.is_sampled(),
                };
            }
        }
        TraceContext {
            trace_id: parent.map_or_else(id_bytes::<16>, |p| p.trace_id),
            span_id: id_bytes::<8>(),
            sampled: parent.is_none_or(|p| p.sampled),
        }
    }

    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The `traceparent` header for a call made on this request's behalf.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Runs `future` (the request's handling) with this as the current trace context.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// The trace context of the request being handled, if any.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(|c| *c).ok()
    }
}

/// A W3C `traceparent` (version 00 layout): trace id and parent id non-zero hex.
fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = hex::decode(trace).ok()?.try_into().ok()?;
    let span_id: [u8; 8] = hex::decode(span).ok()?.try_into().ok()?;
    let flags: [u8; 1] = hex::decode(flags).ok()?.try_into().ok()?;
    (trace_id != [0; 16] && span_id != [0; 8]).then_some(TraceContext {
        trace_id,
        span_id,
        sampled: flags[0] & 1 == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_a_bad_one_is_not() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = parse_traceparent(valid).unwrap();
        assert_eq!(
            hex::encode(parsed.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parsed.sampled);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let context = TraceContext::for_request(Some(valid), &tracing::Span::none());
        let sent = context.traceparent();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "courier's own span is the parent"
        );
        let fresh = TraceContext::for_request(Some("garbage"), &tracing::Span::none());
        assert_ne!(fresh.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(fresh.traceparent().ends_with("-01"));
    }
}
