//! Logs and traces. Logs: human-readable lines on a terminal by default, JSON lines on
//! request, level from `RUST_LOG` (default `info`). Traces: exported over OTLP (gRPC) when the
//! standard OpenTelemetry environment asks for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`); with neither set there is no exporter
//! and no tracing cost beyond the logs. Trace context travels as W3C `traceparent`.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

use clap::ValueEnum;

const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps the trace exporter alive; `shutdown` flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

/// Installs the global subscriber (logs, and traces when configured). Call from inside the
/// Tokio runtime: the OTLP exporter runs on it.
pub fn init(format: LogFormat) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let (traces, trace_error) = match exporter() {
        Ok(traces) => (traces, None),
        Err(err) => (None, Some(err)),
    };
    // Only keyrelay's own spans are exported, never those of the libraries underneath; the
    // per-call server spans are at debug level, so that logs at info never make them.
    let otel = traces.as_ref().map(|provider| {
        let targets = Targets::new()
            .with_target("keyrelay", Level::INFO)
            .with_target("keyrelay::api::observe", Level::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("keyrelay"))
            .with_filter(targets)
    });
    let installed = Registry::default()
        .with(otel)
        .with(logs.with_filter(filter))
        .try_init();
    if installed.is_err() {
        // A subscriber already exists (a test harness, say): keep it.
        return Telemetry::default();
    }
    if let Some(err) = trace_error {
        tracing::error!(error = %err, "cannot export traces; continuing without them");
    }
    if traces.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { traces }
}

fn exporter() -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    if !ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some())
    {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("keyrelay");
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    Ok(Some(provider))
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.traces else { return };
        // Shutting down blocks until the last batch is exported over the runtime's network.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("keyrelay: could not flush the last traces");
        }
    }
}
