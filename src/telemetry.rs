//! Logging and tracing: text or JSON lines on stderr, filtered by `RUST_LOG` (default `info`),
//! and, when configured, the spans exported by OpenTelemetry (OTLP over HTTP). Each request's
//! W3C trace context, passed on to services and providers, is in `request_context`.
//!
//! Lines go to stderr through one shared 64 KiB buffer, written out when it fills and at least
//! every 50 ms by a thread of its own, and at shutdown: a request pays a lock and a copy for its
//! line instead of a `write` system call (bench/: that call cost more than the rest of the line).
//! Nothing is dropped; the price is that a line can reach stderr up to 50 ms late, and that a
//! process killed with SIGKILL loses the last 50 ms of lines.

use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Keeps the exporter and the log buffer; `shutdown` flushes what is still buffered.
pub struct Telemetry {
    spans: Option<SdkTracerProvider>,
    lines: BufferedStderr,
}

/// stderr behind a shared buffer (see the module's comment).
#[derive(Clone)]
pub struct BufferedStderr(Arc<Mutex<BufWriter<std::io::Stderr>>>);

/// How often the buffer is written out at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

impl BufferedStderr {
    fn start() -> BufferedStderr {
        let buffer = BufferedStderr(Arc::new(Mutex::new(BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ))));
        let flusher = buffer.clone();
        // A thread, not a task: it must keep flushing whatever the runtimes are doing.
        let _ = std::thread::Builder::new()
            .name("courier-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flusher.flush();
                }
            });
        buffer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufWriter<std::io::Stderr>> {
        // A panic while writing leaves at worst a torn line; keep logging.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn flush(&self) {
        let mut buffer = self.lock();
        if !buffer.buffer().is_empty() {
            let _ = buffer.flush();
        }
    }
}

/// One formatted line at a time (tracing-subscriber writes each event with one `write_all`).
pub struct LineWriter<'a>(std::sync::MutexGuard<'a, BufWriter<std::io::Stderr>>);

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Written out by the flusher, not per line.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter(self.lock())
    }
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.spans
            && let Err(e) = provider.shutdown()
        {
            eprintln!("courier: flushing spans failed: {e}");
        }
        self.lines.flush();
    }
}

/// Sets up logging, and span export when `config` or the environment names a collector.
/// Call outside any async runtime: the exporter's HTTP client runs its own.
pub fn init(format: LogFormat, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let buffer = BufferedStderr::start();
    // Colours only for a person at a terminal: in a file or a pipe the escape codes are noise
    // that every reader and log collector must strip (`NO_COLOR` turns them off there too).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(buffer.clone());
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
    Ok(Telemetry {
        spans: provider,
        lines: buffer,
    })
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
