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
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{JsonFields, JsonVisitor, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
            .event_format(JsonLines)
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

/// One JSON object per line, with the members of tracing-subscriber's JSON format as we
/// configure it (flattened event, current span, target): `timestamp`, `level`, the
/// event's fields, `target`, and `span` with the current span's fields and `name`. The
/// span's fields (already JSON, see [`SpanFields`]) are copied as they are, where the
/// stock format parses them into a map and serialises them again on every line: that
/// was most of the cost of the access log line every request writes.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = String::with_capacity(512);
        line.push_str("{\"timestamp\":\"");
        SystemTime.format_time(&mut Writer::new(&mut line))?;
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        let mut fields = JsonMembers {
            out: &mut line,
            failed: false,
        };
        event.record(&mut fields);
        if fields.failed {
            return Err(std::fmt::Error);
        }
        line.push_str(",\"target\":");
        push_json(&mut line, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            let ext = span.extensions();
            let object = ext
                .get::<FormattedFields<N>>()
                .map(|f| f.fields.as_str())
                .filter(|f| f.len() > 2 && f.starts_with('{') && f.ends_with('}'));
            line.push_str(",\"span\":{");
            if let Some(object) = object {
                line.push_str(&object[1..object.len() - 1]);
                line.push(',');
            }
            line.push_str("\"name\":");
            push_json(&mut line, span.name())?;
            line.push('}');
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut String, value: &T) -> std::fmt::Result {
    let text = serde_json::to_string(value).map_err(|_| std::fmt::Error)?;
    out.push_str(&text);
    Ok(())
}

/// Writes an event's fields as `,"name":value` members, valued as tracing-serde does
/// (numbers and booleans as such, everything else as a string).
struct JsonMembers<'a> {
    out: &'a mut String,
    failed: bool,
}

impl JsonMembers<'_> {
    fn member<T: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &T) {
        self.out.push(',');
        self.failed |= push_json(self.out, field.name()).is_err();
        self.out.push(':');
        self.failed |= push_json(self.out, value).is_err();
    }
}

impl Visit for JsonMembers<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, &value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, &value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, &value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.member(field, &value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.member(field, &format!("{value:?}"));
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
    fn lines_carry_what_the_stock_json_format_writes() {
        let (stock, ours) = (Lines::default(), Lines::default());
        let subscriber = tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true)
                    .with_writer(stock.clone()),
            )
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true)
                    .fmt_fields(SpanFields)
                    .event_format(JsonLines)
                    .with_writer(ours.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(error = %"a \"quoted\"\nline", n = -3, ok = true, "outside any span");
            let span = tracing::info_span!(
                "request",
                otel.kind = "server",
                request_id = "r1",
                route = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
            );
            span.in_scope(
                || tracing::info!(target: "access", x = 0.25, list = ?vec![1, 2], "inside"),
            );
            span.record("route", "/api/v1/cart");
            span.record("http.response.status_code", 200);
            span.in_scope(|| {
                tracing::info!(target: "access", status = 200u64, duration_ms = 1.5, "request served")
            });
            let empty = tracing::info_span!("bare");
            empty.in_scope(|| tracing::error!("no fields in the span"));
        });
        let parse = |l: &Lines| -> Vec<serde_json::Value> {
            String::from_utf8(l.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| {
                    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                    v.as_object_mut().unwrap().remove("timestamp").unwrap();
                    v
                })
                .collect()
        };
        let (stock, ours) = (parse(&stock), parse(&ours));
        assert_eq!(stock.len(), 4);
        assert_eq!(stock, ours);
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
