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
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{JsonFields, JsonVisitor, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported (and so carry OpenTelemetry contexts).
pub fn tracing_enabled() -> bool {
    PROVIDER.get().is_some()
}

/// The span of one call to Redis, for the exported trace. Without export it would
/// only cost the log formatter work (nothing logs inside it), so there is none.
pub fn redis_span() -> tracing::Span {
    if tracing_enabled() {
        tracing::info_span!("redis", otel.kind = "client", db.system = "redis")
    } else {
        tracing::Span::none()
    }
}

/// The span of a request's unit of work in Postgres; see [`redis_span`].
pub fn postgres_span() -> tracing::Span {
    if tracing_enabled() {
        tracing::info_span!("postgres", otel.kind = "client", db.system = "postgresql")
    } else {
        tracing::Span::none()
    }
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
            .fmt_fields(SpanFields)
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

/// Span fields as JSON, like [`JsonFields`], but a field recorded after the span's
/// creation (every request span gets its route and status that way) is appended to the
/// span's JSON object, where `JsonFields` parses the object, adds the field and writes
/// it all again: that rewrite was a sixth of the gateway's instructions per request.
/// The event formatter parses a span's fields as a JSON object when it writes a line,
/// so the lines carry the same fields (a field recorded twice: the last value).
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        JsonFields::new().format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut added = String::new();
        let mut visitor = JsonVisitor::new(&mut added);
        fields.record(&mut visitor);
        visitor.finish()?;
        let object = &mut current.fields;
        if added.len() <= 2 {
            // `{}`: nothing was recorded.
            return Ok(());
        }
        if object.len() <= 2 {
            *object = added;
        } else if object.ends_with('}') && added.starts_with('{') {
            object.pop();
            object.push(',');
            object.push_str(&added[1..]);
        } else {
            return Err(std::fmt::Error);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn fields_recorded_later_join_the_span_object() {
        let out = Lines::default();
        let layer = fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(SpanFields)
            .with_writer(out.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "r1",
                route = tracing::field::Empty,
                status = tracing::field::Empty,
                empty = tracing::field::Empty,
            );
            span.record("route", "/api/v1/cart");
            span.record("status", 200);
            span.record("status", 201);
            span.in_scope(|| tracing::info!(n = 1, "served"));
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            line["span"],
            serde_json::json!({"request_id": "r1", "route": "/api/v1/cart", "status": 201, "name": "request"})
        );
        assert_eq!(line["n"], 1);
    }
}
