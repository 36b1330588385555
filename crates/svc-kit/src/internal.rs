//! Trust between services: every internal call carries the shared internal credential,
//! and backends refuse any request without it (ARCHITECTURE.md, "Internal trust").

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::problem::Problem;
use domain::identity::INTERNAL_TOKEN_HEADER;

/// The expected internal credential, in app data.
#[derive(Clone)]
pub struct InternalToken(pub Secret);

impl InternalToken {
    /// Constant-time, so response timing says nothing about how much of a guess matched.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.expose().as_bytes();
        expected.len() == presented.len() && bool::from(expected.ct_eq(presented))
    }
}

/// Middleware for backend routes: 401 unless the request carries the internal token.
pub async fn require_internal_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let ok = match (
        req.app_data::<web::Data<InternalToken>>(),
        req.headers().get(INTERNAL_TOKEN_HEADER),
    ) {
        (Some(expected), Some(presented)) => expected.matches(presented.as_bytes()),
        _ => false,
    };
    if !ok {
        let res = Problem::unauthorized(
            "this endpoint is internal: a valid internal credential is required",
        )
        .error_response();
        return Ok(req.into_response(res));
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// Timeouts and pool bounds of an internal HTTP client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_idle_per_host: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            max_idle_per_host: 256,
        }
    }
}

/// A pooled keep-alive client for calls to one peer. Build once at start-up and clone.
pub fn http_client(settings: ClientSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .pool_max_idle_per_host(settings.max_idle_per_host)
        // Shorter than the servers' keep-alive (75 s, `server::serve`), see there.
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(30))
        .build()
        // Building fails only if the TLS backend cannot initialise; we compile none.
        .expect("an HTTP client without TLS always builds")
}

/// A peer service: its base URL, a client, and the credential to present.
#[derive(Clone)]
pub struct Peer {
    pub name: &'static str,
    pub base_url: String,
    /// `base_url` parsed once, when it has no path of its own: a call's URL is then this
    /// with the call's path set, instead of a string parsed afresh (host and all) on
    /// every call.
    base: Option<reqwest::Url>,
    pub client: reqwest::Client,
    token: Secret,
}

impl Peer {
    pub fn new(
        name: &'static str,
        base_url: String,
        token: Secret,
        settings: ClientSettings,
    ) -> Self {
        let base = reqwest::Url::parse(&base_url)
            .ok()
            .filter(|u| u.path() == "/" && u.query().is_none() && u.fragment().is_none());
        Self {
            name,
            base_url,
            base,
            client: http_client(settings),
            token,
        }
    }

    /// The URL of `path` (which may carry a query) on this peer, without parsing the
    /// host again; `None` when the base URL has a path prefix.
    fn url(&self, path: &str) -> Option<reqwest::Url> {
        let base = self.base.as_ref()?;
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        // A `#` would start a fragment in the concatenation: leave that to the parser.
        if !p.starts_with('/') || path.contains('#') {
            return None;
        }
        let mut url = base.clone();
        url.set_path(p);
        url.set_query(q);
        Some(url)
    }

    /// A request to `path` on this peer with the internal credential and the caller's
    /// request id attached.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        request_id: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let rb = match self.url(path) {
            Some(url) => self.client.request(method, url),
            None => self
                .client
                .request(method, format!("{}{}", self.base_url, path)),
        };
        let mut rb = rb.header(INTERNAL_TOKEN_HEADER, self.token.expose());
        if let Some(id) = request_id {
            rb = rb.header(crate::observe::REQUEST_ID_HEADER, id);
        }
        if let Some(trace) = crate::trace::TraceContext::current() {
            rb = rb.header("traceparent", trace.header());
        }
        rb
    }

    /// Readiness probe: the peer answers its `/livez`.
    pub async fn alive(&self) -> Result<(), String> {
        let res = self
            .client
            .get(format!("{}/livez", self.base_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|_| "unreachable".to_owned())?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", res.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_url_is_the_concatenation_of_base_and_path() {
        let peer = |base: &str| {
            Peer::new(
                "t",
                base.to_owned(),
                Secret::new("s".to_owned()),
                ClientSettings::default(),
            )
        };
        let plain = peer("http://127.0.0.1:8083");
        assert!(plain.base.is_some());
        for path in [
            "/api/v1/cart",
            "/api/v1/cart/items/sku-1?x=1&y=%20z",
            "/api/v1/cart/items/a b/../c",
            "/api/v1/cart/items/%E2%82%AC?",
            "/internal/v1/sessions/touch",
            "/a?b?c",
        ] {
            let expected = reqwest::Url::parse(&format!("http://127.0.0.1:8083{path}")).unwrap();
            assert_eq!(plain.url(path), Some(expected), "{path}");
        }
        assert_eq!(plain.url("/a#b"), None);
        assert_eq!(peer("http://host:1/prefix").url("/a"), None);
    }
}
