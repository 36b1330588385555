//! Logs as JSON lines on stdout, filtered by `RUST_LOG` (default `info`), and — when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set —
//! traces exported over OTLP/HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the
//! default, or `http/json`), named by `OTEL_SERVICE_NAME` (default: the binary's name),
//! sampled per `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: always, or as
//! the caller's `traceparent` says).
//!
//! Request spans carry `request_id`, `trace_id` and `span_id`, so every line logged while
//! serving a request joins its trace. Secrets never reach a log: tokens are only ever
//! logged as a short prefix of their hash, and request headers are never logged.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported (and so carry OpenTelemetry contexts).
pub fn tracing_enabled() -> bool {
    PROVIDER.get().is_some()
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

fn provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("http/json") => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    // The exporter's blocking HTTP client must not be built on an async runtime's
    // thread (it starts a runtime of its own).
    let exporter = std::thread::spawn(move || {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the exporter set-up panicked".to_owned())??;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build())
}

pub fn init_logs(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let (otel, otel_error) = if otlp_configured() {
        match provider(service) {
            Ok(p) => {
                let tracer = p.tracer(service);
                let _ = PROVIDER.set(p);
                (
                    Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                    None,
                )
            }
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let logs = if pretty {
        fmt::layer().with_target(false).boxed()
    } else {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .boxed()
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init();
    // A second init (tests that build several services in one process) keeps the first.
    if result.is_ok() {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            traces = tracing_enabled(),
            "starting"
        );
        if let Some(e) = otel_error {
            tracing::error!(error = %e, "OTLP trace export could not be set up; running without it");
        }
    }
}

/// Exports the spans still buffered; called once, as the process ends.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}
