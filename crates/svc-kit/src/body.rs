//! Reading request bodies the way API.md prescribes: bounded size (413), JSON only
//! (415), a JSON object with only known fields (400, one error per bad field).
//!
//! We parse into a `serde_json` map and validate field by field instead of deriving
//! `Deserialize` on a DTO, because serde stops at the first problem and its messages
//! ("invalid type: string, expected i64 at line 1 column 20") are not what a frontend
//! can show next to a form field.

use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::HttpRequest;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::problem::Problem;

pub type JsonObject = Map<String, Value>;

/// Reads the whole body, refusing (413) anything over `limit` bytes, whether announced
/// by `Content-Length` or discovered while streaming (chunked uploads).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, Problem> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(Problem::payload_too_large(limit));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Problem::malformed("the request body could not be read"))?;
        if buf.len() + chunk.len() > limit {
            return Err(Problem::payload_too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// True for `application/json` and `application/<x>+json`, with any parameters.
pub fn is_json_content_type(req: &HttpRequest) -> bool {
    let Some(ct) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON object body that may hold only `allowed` fields.
///
/// An empty body is `Ok(None)`; the caller decides whether a body was required.
pub fn parse_object(
    req: &HttpRequest,
    body: &[u8],
    allowed: &[&str],
) -> Result<Option<JsonObject>, Problem> {
    let has_content_type = req.headers().contains_key(header::CONTENT_TYPE);
    if body.iter().all(u8::is_ascii_whitespace) {
        if has_content_type && !is_json_content_type(req) {
            return Err(Problem::unsupported_media_type());
        }
        return Ok(None);
    }
    if !is_json_content_type(req) {
        return Err(Problem::unsupported_media_type());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::malformed(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Problem::malformed("the body must be a JSON object"));
    };
    let unknown: Vec<&String> = map
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        let mut p = Problem::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "validation-error",
            "Invalid request",
        )
        .detail(format!(
            "unknown fields; this request accepts only: {}",
            allowed.join(", ")
        ));
        for k in unknown {
            p = p.field(truncate(k, 64), "unknown field");
        }
        return Err(p);
    }
    Ok(Some(map))
}

/// Like [`parse_object`] but a body is required.
pub fn require_object(
    req: &HttpRequest,
    body: &[u8],
    allowed: &[&str],
) -> Result<JsonObject, Problem> {
    parse_object(req, body, allowed)?.ok_or_else(|| {
        Problem::malformed(format!(
            "a JSON body is required with: {}",
            allowed.join(", ")
        ))
    })
}

/// A required JSON integer (not a float, not a string).
pub fn int_field(map: &JsonObject, name: &str) -> Result<i64, domain::FieldError> {
    match map.get(name) {
        None | Some(Value::Null) => Err(domain::FieldError::new(name, "is required")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| domain::FieldError::new(name, "must be an integer")),
        Some(_) => Err(domain::FieldError::new(name, "must be an integer")),
    }
}

/// A required JSON string.
pub fn str_field<'m>(map: &'m JsonObject, name: &str) -> Result<&'m str, domain::FieldError> {
    match map.get(name) {
        None | Some(Value::Null) => Err(domain::FieldError::new(name, "is required")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(domain::FieldError::new(name, "must be a string")),
    }
}

/// An optional JSON string (absent or null is `None`).
pub fn opt_str_field<'m>(
    map: &'m JsonObject,
    name: &str,
) -> Result<Option<&'m str>, domain::FieldError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(domain::FieldError::new(name, "must be a string")),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn json_req() -> HttpRequest {
        TestRequest::default()
            .insert_header((header::CONTENT_TYPE, "application/json; charset=utf-8"))
            .to_http_request()
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse_object(&json_req(), br#"{"a":1,"price":5}"#, &["a"]).unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(err.errors[0].field, "price");
    }

    #[test]
    fn wrong_or_missing_content_type_is_415() {
        let plain = TestRequest::default()
            .insert_header((header::CONTENT_TYPE, "text/plain"))
            .to_http_request();
        assert_eq!(parse_object(&plain, b"{}", &[]).unwrap_err().status, 415);
        let none = TestRequest::default().to_http_request();
        assert_eq!(parse_object(&none, b"{}", &[]).unwrap_err().status, 415);
        assert!(parse_object(&none, b"", &[]).unwrap().is_none());
    }

    #[test]
    fn integers_only() {
        let map = parse_object(&json_req(), br#"{"q":1.5,"s":"2","i":3}"#, &["q", "s", "i"])
            .unwrap()
            .unwrap();
        assert!(int_field(&map, "q").is_err());
        assert!(int_field(&map, "s").is_err());
        assert!(int_field(&map, "missing").is_err());
        assert_eq!(int_field(&map, "i").unwrap(), 3);
    }

    #[test]
    fn non_objects_and_bad_json_are_400() {
        assert_eq!(
            parse_object(&json_req(), b"[1]", &[]).unwrap_err().status,
            400
        );
        assert_eq!(
            parse_object(&json_req(), b"{nope", &[]).unwrap_err().status,
            400
        );
    }
}
