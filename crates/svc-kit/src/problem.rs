//! RFC 9457 problem details: the one error body every service returns.
//!
//! Status codes are decided where an error is classified (each service's error enum);
//! this type only renders them. 5xx details never carry internal information.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// RFC 9457 extension members (e.g. the current cart on a 412).
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    #[serde(skip)]
    pub etag: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl Problem {
    /// A problem of a known kind; `slug` names the type, documented at `/problems/<slug>`
    /// in the OpenAPI document the gateway serves.
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Self {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
            etag: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.errors.push(FieldProblem {
            field: field.into(),
            message: message.into(),
        });
        self
    }

    pub fn extension(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(key.to_owned(), value);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn with_etag(mut self, etag: String) -> Self {
        self.etag = Some(etag);
        self
    }

    // The vocabulary shared by every service.

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation-error",
            "Invalid request",
        )
        .detail("one or more fields are invalid; see errors")
        .field(field, message)
    }

    pub fn from_field_errors(errors: impl IntoIterator<Item = domain::FieldError>) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "validation-error",
            "Invalid request",
        )
        .detail("one or more fields are invalid; see errors");
        for e in errors {
            p = p.field(e.field, e.message);
        }
        p
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
        )
        .detail(detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
        )
        .detail(format!("request bodies are limited to {limit} bytes"))
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("send the body as application/json")
    }

    /// A dependency failed or is overloaded; the client may retry after a moment.
    pub fn unavailable(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service-unavailable",
            "Service unavailable",
        )
        .detail("the service is temporarily unable to handle the request; retry later")
        .retry_after(retry_after_secs)
    }

    /// An unexpected failure. The cause is logged by the caller, never sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "Internal server error",
        )
        .detail("an unexpected error occurred; it has been logged")
    }

    /// A generic problem for a status that a framework produced without a body of ours.
    pub fn for_status(status: StatusCode) -> Self {
        let (slug, title) = match status.as_u16() {
            400 => ("malformed-request", "Malformed request"),
            401 => ("unauthorized", "Unauthorized"),
            403 => ("forbidden", "Forbidden"),
            404 => ("not-found", "Not found"),
            405 => ("method-not-allowed", "Method not allowed"),
            406 => ("not-acceptable", "Not acceptable"),
            408 => ("request-timeout", "Request timeout"),
            413 => ("payload-too-large", "Payload too large"),
            414 => ("uri-too-long", "URI too long"),
            415 => ("unsupported-media-type", "Unsupported media type"),
            431 => ("headers-too-large", "Request header fields too large"),
            503 => ("service-unavailable", "Service unavailable"),
            504 => ("gateway-timeout", "Gateway timeout"),
            s if s >= 500 => ("internal-error", "Internal server error"),
            _ => ("client-error", "Request error"),
        };
        let mut p = Self::new(status, slug, title);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            p.retry_after_secs = Some(1);
        }
        p
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn to_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)));
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(etag) = &self.etag {
            res.insert_header((header::ETAG, etag.as_str()));
        }
        // Serialising this struct cannot fail (string keys, no non-finite floats).
        res.body(serde_json::to_vec(self).unwrap_or_default())
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        Problem::status_code(self)
    }

    fn error_response(&self) -> HttpResponse {
        self.to_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9457_members() {
        let p = Problem::validation("quantity", "must be an integer")
            .extension("cart", serde_json::json!({"version": 3}));
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "/problems/validation-error");
        assert_eq!(v["status"], 400);
        assert_eq!(v["errors"][0]["field"], "quantity");
        assert_eq!(v["cart"]["version"], 3);
        assert!(v.get("retry_after_secs").is_none());
    }
}
