//! W3C Trace Context (`traceparent`) continued across services. The middleware reads
//! the incoming `traceparent` (or starts a trace when there is none or it is malformed)
//! and keeps it for the duration of the request in a task-local; every internal call
//! made while handling the request ([`crate::internal::Peer::request`]) carries the
//! same trace id with a fresh parent id, so one request is one trace across services.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, never all zero.
    pub trace_id: String,
    /// This service's span: 16 lowercase hex digits.
    pub span_id: String,
    /// The flags byte (`01` = sampled).
    pub flags: String,
    /// The caller's span, when a valid `traceparent` came in.
    pub parent_id: Option<String>,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

fn hex_of(bytes: &[u8]) -> String {
    // By table: `write!` per byte went through the formatting machinery twice per id.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// Continues an incoming `traceparent` (version 00) with a new span of ours, or
    /// starts a new sampled trace.
    pub fn continue_from(header: Option<&str>) -> Self {
        let span_id = hex_of(&rand::random::<[u8; 8]>());
        if let Some(parts) = header.map(|h| h.trim().split('-').collect::<Vec<_>>()) {
            if let [version, trace_id, parent, flags] = parts.as_slice() {
                if *version == "00"
                    && is_hex(trace_id, 32)
                    && is_hex(parent, 16)
                    && flags.len() == 2
                    && flags.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Self {
                        trace_id: (*trace_id).to_owned(),
                        span_id,
                        flags: flags.to_ascii_lowercase(),
                        parent_id: Some((*parent).to_owned()),
                    };
                }
            }
        }
        Self {
            trace_id: hex_of(&rand::random::<[u8; 16]>()),
            span_id,
            flags: "01".to_owned(),
            parent_id: None,
        }
    }

    /// The `traceparent` naming this service's span as the parent.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    /// Makes `span` (a request's span) continue this trace in OpenTelemetry when traces
    /// are exported, and takes the ids OpenTelemetry gave it, so logs, exported spans and
    /// the `traceparent` sent onwards all name the same span.
    pub fn attach(&mut self, span: &tracing::Span) {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if !crate::telemetry::tracing_enabled() {
            return;
        }
        if let Some(parent) = &self.parent_id {
            let ids = (TraceId::from_hex(&self.trace_id), SpanId::from_hex(parent));
            if let (Ok(trace_id), Ok(span_id)) = ids {
                let flags = u8::from_str_radix(&self.flags, 16).unwrap_or(1);
                let remote = SpanContext::new(
                    trace_id,
                    span_id,
                    TraceFlags::new(flags),
                    true,
                    TraceState::default(),
                );
                let _ =
                    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
            }
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            self.trace_id = sc.trace_id().to_string();
            self.span_id = sc.span_id().to_string();
            self.flags = format!("{:02x}", sc.trace_flags().to_u8());
        }
    }

    /// Runs `fut` with this context as the current one.
    pub async fn scope<F: std::future::Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// The context of the request being handled, if any.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lowercase_hex() {
        assert_eq!(hex_of(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn a_valid_parent_is_continued_and_anything_else_starts_a_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::continue_from(Some(parent));
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(c.span_id, "00f067aa0ba902b7");
        assert!(c
            .header()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let c = TraceContext::continue_from(Some(bad));
            assert_ne!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(c.trace_id.len(), 32);
        }
    }
}
