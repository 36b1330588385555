use reqwest::header::{HeaderMap, CONTENT_TYPE, SET_COOKIE};
use reqwest::RequestBuilder;
use serde_json::Value;

use crate::cart::{CartView, OpsReply};

/// A response read in full, so a failing assertion can show its body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    /// Sends the request and reads the whole response.
    pub async fn send(request: RequestBuilder) -> Reply {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("request failed without a response: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("cannot read a {status} response body: {e}"));
        Reply {
            status,
            headers,
            text,
        }
    }

    /// Like [`Reply::send`], for a request to the gateway: every gateway response
    /// carries an `X-Request-Id` (API.md, Conventions), whatever its status.
    pub async fn through_gateway(request: RequestBuilder) -> Reply {
        let reply = Reply::send(request).await;
        let id = reply.header("x-request-id").unwrap_or_default();
        assert!(
            !id.trim().is_empty(),
            "a gateway response without an X-Request-Id header: {reply}"
        );
        reply
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header(CONTENT_TYPE.as_str()).unwrap_or("")
    }

    /// The body as JSON; fails showing the body when it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self}"))
    }

    #[track_caller]
    pub fn assert_status(&self, expected: u16, what: &str) -> &Self {
        assert_eq!(
            self.status, expected,
            "{what}: expected HTTP {expected}, got {self}"
        );
        self
    }

    /// A 200 carrying a cart: `application/json`, every field of API.md's cart
    /// representation, and `ETag: "<version>"`.
    #[track_caller]
    pub fn cart(&self, what: &str) -> CartView {
        self.assert_status(200, what);
        assert!(
            self.content_type().starts_with("application/json"),
            "{what}: a cart must be application/json, got {self}"
        );
        let cart = CartView::parse(&self.json(), what);
        let expected_etag = format!("\"{}\"", cart.version);
        assert_eq!(
            self.header("etag"),
            Some(expected_etag.as_str()),
            "{what}: the ETag must be the cart's version: {self}"
        );
        cart
    }

    /// A 200 of `POST /api/v1/cart/ops`: `{"cart", "results"}`, with `ETag` of the cart.
    #[track_caller]
    pub fn ops(&self, what: &str) -> OpsReply {
        self.assert_status(200, what);
        assert!(
            self.content_type().starts_with("application/json"),
            "{what}: an ops result must be application/json, got {self}"
        );
        let ops = OpsReply::parse(&self.json(), what);
        let expected_etag = format!("\"{}\"", ops.cart.version);
        assert_eq!(
            self.header("etag"),
            Some(expected_etag.as_str()),
            "{what}: the ETag must be the resulting cart's version: {self}"
        );
        ops
    }

    /// True when the response carries `Idempotent-Replayed: true` (a stored outcome).
    pub fn is_replay(&self) -> bool {
        self.header("idempotent-replayed")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// An RFC 9457 problem with this status: `application/problem+json`, with `type`,
    /// `title`, `detail` and a `status` equal to the HTTP status.
    #[track_caller]
    pub fn problem(&self, status: u16, what: &str) -> Problem {
        self.assert_status(status, what);
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "{what}: an error must be application/problem+json: {self}"
        );
        let body = self.json();
        for field in ["type", "title", "detail"] {
            assert!(
                body.get(field).is_some_and(Value::is_string),
                "{what}: the problem has no string `{field}`: {self}"
            );
        }
        assert_eq!(
            body.get("status").and_then(Value::as_u64),
            Some(u64::from(status)),
            "{what}: the problem's `status` must equal the HTTP status: {self}"
        );
        if let Some(errors) = body.get("errors") {
            let entries = errors
                .as_array()
                .unwrap_or_else(|| panic!("{what}: `errors` must be an array: {self}"));
            for entry in entries {
                assert!(
                    entry.get("field").is_some_and(Value::is_string)
                        && entry.get("message").is_some_and(Value::is_string),
                    "{what}: each `errors` entry is {{field, message}}: {self}"
                );
            }
        }
        Problem { body }
    }

    /// Every `Set-Cookie` of the response, parsed.
    pub fn set_cookies(&self) -> Vec<SetCookie> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(SetCookie::parse)
            .collect()
    }

    /// The `Set-Cookie` for `name`; fails when there is none.
    #[track_caller]
    pub fn set_cookie(&self, name: &str) -> SetCookie {
        self.set_cookies()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no Set-Cookie for `{name}`: {self}"))
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} (content-type {:?}, x-request-id {:?}) {}",
            self.status,
            self.content_type(),
            self.header("x-request-id").unwrap_or(""),
            self.text
        )
    }
}

/// A parsed problem+json body.
#[derive(Debug, Clone)]
pub struct Problem {
    pub body: Value,
}

impl Problem {
    /// The `field` of each `errors` entry (empty when there is no `errors`).
    pub fn error_fields(&self) -> Vec<String> {
        self.errors()
            .iter()
            .filter_map(|e| e.get("field").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// The problem's `type`, e.g. `/problems/precondition-failed`.
    pub fn kind(&self) -> &str {
        self.body.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// Fails unless the problem's `type` is `/problems/<slug>`.
    #[track_caller]
    pub fn assert_type(&self, slug: &str, what: &str) -> &Self {
        assert_eq!(
            self.kind(),
            format!("/problems/{slug}"),
            "{what}: the problem's `type`: {}",
            self.body
        );
        self
    }

    pub fn errors(&self) -> Vec<Value> {
        self.body
            .get("errors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Fails unless an `errors` entry names this field.
    #[track_caller]
    pub fn assert_field(&self, field: &str, what: &str) -> &Self {
        assert!(
            self.error_fields().iter().any(|f| f == field),
            "{what}: expected an `errors` entry for field `{field}`, got {}",
            self.body
        );
        self
    }
}

/// One `Set-Cookie` header: name, value and attributes (names lower-cased).
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub attributes: Vec<(String, Option<String>)>,
    pub raw: String,
}

impl SetCookie {
    pub fn parse(raw: &str) -> SetCookie {
        let mut parts = raw.split(';').map(str::trim);
        let (name, value) = parts
            .next()
            .and_then(|pair| pair.split_once('='))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .unwrap_or_default();
        let attributes = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_owned())),
                None => (p.to_ascii_lowercase(), None),
            })
            .collect();
        SetCookie {
            name,
            value,
            attributes,
            raw: raw.to_owned(),
        }
    }

    pub fn has(&self, attribute: &str) -> bool {
        let attribute = attribute.to_ascii_lowercase();
        self.attributes.iter().any(|(k, _)| *k == attribute)
    }

    pub fn attribute(&self, attribute: &str) -> Option<&str> {
        let attribute = attribute.to_ascii_lowercase();
        self.attributes
            .iter()
            .find(|(k, _)| *k == attribute)
            .and_then(|(_, v)| v.as_deref())
    }
}
