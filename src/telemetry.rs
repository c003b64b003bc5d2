//! Logging and tracing: text or JSON lines on stderr, filtered by `RUST_LOG` (default `info`),
//! and, when configured, the spans exported by OpenTelemetry (OTLP over HTTP). Each request's
//! W3C trace context, passed on to services and providers, is in `request_context`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

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
    crate::request_context::set_exporting(provider.is_some());
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
