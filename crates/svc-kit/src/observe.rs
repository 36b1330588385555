//! The middleware on every service: request id, access log span, latency histogram by
//! route template, and the guarantee that every error leaves as problem+json (framework
//! errors such as an unknown route or a wrong method included).

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::problem::{self, Problem};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id, in the request extensions for handlers that forward it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client-chosen id is kept when it is short and printable, so it can be searched for
/// in logs; anything else is replaced.
fn acceptable_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().clone();

    let mut trace = crate::trace::TraceContext::continue_from(
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    // The exported span's name is the route template, as the router will match it
    // (never the raw path: span names are grouped by it). Matching walks the routes, so
    // it is done only when spans are exported.
    let otel_name = if crate::telemetry::tracing_enabled() {
        format!(
            "{method} {}",
            req.match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned())
        )
    } else {
        String::new()
    };
    // Without export the ids are final now: give them to the span at its creation, as
    // every later `record` costs the log formatter a rewrite of the span's fields.
    let span = if crate::telemetry::tracing_enabled() {
        let span = tracing::info_span!(
            "request",
            otel.name = %otel_name,
            otel.kind = "server",
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            method = %method,
            route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        trace.attach(&span);
        span.record("trace_id", trace.trace_id.as_str());
        span.record("span_id", trace.span_id.as_str());
        span
    } else {
        tracing::info_span!(
            "request",
            otel.name = "",
            otel.kind = "server",
            request_id = request_id.as_str(),
            trace_id = trace.trace_id.as_str(),
            span_id = trace.span_id.as_str(),
            method = method.as_str(),
            route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        )
    };
    let result = trace.scope(next.call(req).instrument(span.clone())).await;
    let res = match result {
        Ok(res) => res.map_into_boxed_body(),
        // An error that escaped the handlers' own mapping: render it like any other.
        Err(e) => return Err(e),
    };
    let mut res = ensure_problem_body(res);

    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    span.record("route", route.as_str());
    span.record("http.response.status_code", status_code_of(&res));
    let status = res.status();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    let elapsed = started.elapsed();
    if let Some(m) = metrics {
        m.http_server_duration
            .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
            .observe(elapsed.as_secs_f64());
    }
    span.in_scope(|| {
        tracing::info!(
            target: "access",
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request served"
        );
    });
    Ok(res)
}

fn status_code_of(res: &ServiceResponse<BoxBody>) -> u16 {
    res.status().as_u16()
}

/// Replaces a non-problem error body (the framework's plain-text 404/405/400s) with a
/// problem+json of the same status, keeping the other headers (e.g. `Allow`).
fn ensure_problem_body(res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(problem::CONTENT_TYPE));
    if is_problem {
        return res;
    }
    let (req, old) = res.into_parts();
    let mut fresh = Problem::for_status(status).error_response();
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    ServiceResponse::new(req, fresh)
}
