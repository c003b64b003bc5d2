//! Logging and tracing: text or JSON lines on stderr, filtered by `RUST_LOG` (default `info`);
//! W3C trace context taken from each request and passed on to services and providers; and,
//! when configured, the spans exported by OpenTelemetry (OTLP over HTTP).

use std::sync::OnceLock;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;
use crate::crypto::random_bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether spans are exported: then courier's span ids are OpenTelemetry's.
static EXPORTING: OnceLock<bool> = OnceLock::new();

/// Keeps the exporter; `shutdown` flushes what is still buffered.
pub struct Telemetry(Option<SdkTracerProvider>);

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(e) = provider.shutdown()
        {
            eprintln!("courier: flushing spans failed: {e}");
        }
    }
}

/// Sets up logging, and span export when `config` or the environment names a collector.
/// Call outside any async runtime: the exporter's HTTP client runs its own.
pub fn init(format: LogFormat, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    let provider = exporter(config)?;
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("courier"))
            .with_error_records_to_exceptions(false)
    });
    let _ = EXPORTING.set(provider.is_some());
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .init();
    Ok(Telemetry(provider))
}

fn exporter(config: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var(var).is_ok_and(|v| !v.is_empty()));
    if config.otlp_endpoint.is_none() && !from_env {
        return Ok(None);
    }
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(base) = &config.otlp_endpoint {
        builder = builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = builder
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
    let name = config
        .service_name
        .clone()
        .unwrap_or_else(|| "courier".into());
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(name).build())
            .build(),
    ))
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
            trace_id: parent.map_or_else(random_bytes::<16>, |p| p.trace_id),
            span_id: random_bytes::<8>(),
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
