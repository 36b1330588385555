//! Who is calling: the credential a request carries, and the identity session-svc
//! vouches for. Two credentials exist (API.md "Who is calling"); this gateway
//! accepts the session token, from the `X-Session-Token` header or the `cart_session`
//! cookie.

use actix_web::http::{header, Method};
use actix_web::HttpRequest;
use serde::Deserialize;
use serde_json::json;
use svc_kit::internal::Peer;
use svc_kit::Problem;

use crate::upstream;

pub const SESSION_HEADER: &str = "x-session-token";
pub const SESSION_COOKIE: &str = "cart_session";
pub const CART_TOKEN_COOKIE: &str = "cart_token";

/// A session token, and where it came from (cookies need CSRF protection, headers don't:
/// a browser never attaches a custom header to a cross-site request on its own).
#[derive(Debug, Clone)]
pub struct Credential {
    pub token: String,
    pub from_cookie: bool,
}

impl Credential {
    pub fn from_request(req: &HttpRequest) -> Option<Self> {
        if let Some(v) = req.headers().get(SESSION_HEADER) {
            return Some(Self {
                token: v.to_str().unwrap_or_default().trim().to_owned(),
                from_cookie: false,
            });
        }
        req.cookie(SESSION_COOKIE).map(|c| Self {
            token: c.value().to_owned(),
            from_cookie: true,
        })
    }
}

/// The identity session-svc returned for a live session.
#[derive(Debug, Clone, Deserialize)]
pub struct Identity {
    pub kind: String,
    pub user_id: Option<String>,
    pub cart_id: String,
    pub cart_token_hash: Option<String>,
    pub session_ref: String,
    pub expires_at: String,
    pub last_active: String,
}

pub fn unauthenticated() -> Problem {
    Problem::unauthorized(
        "a valid session token (X-Session-Token header or cart_session cookie) is required",
    )
}

/// The caller's credential, or 401.
pub fn credential(req: &HttpRequest) -> Result<Credential, Problem> {
    match Credential::from_request(req) {
        Some(c) if domain::token::is_plausible_token(&c.token) => Ok(c),
        Some(_) => Err(unauthenticated()),
        None if req.headers().contains_key(header::AUTHORIZATION) => Err(Problem::unauthorized(
            "this deployment accepts session tokens only (X-Session-Token or the cart_session cookie)",
        )),
        None => Err(unauthenticated()),
    }
}

/// Resolves a session token through session-svc, which also slides its idle timeout.
pub async fn resolve(
    sessions: &Peer,
    cred: &Credential,
    request_id: Option<&str>,
) -> Result<Identity, Problem> {
    let res = sessions
        .request(
            reqwest::Method::POST,
            "/internal/v1/sessions/touch",
            request_id,
        )
        .json(&json!({ "session_token": cred.token }))
        .send()
        .await
        .map_err(|e| upstream::failure(sessions.name, &e))?;
    match res.status().as_u16() {
        200 => res
            .json::<Identity>()
            .await
            .map_err(|e| upstream::failure(sessions.name, &e)),
        404 => Err(unauthenticated()),
        status => {
            tracing::warn!(status, "session-svc refused a touch");
            Err(Problem::unavailable(1))
        }
    }
}

/// Cross-site request forgery check for cookie-authenticated unsafe requests (API.md
/// conventions): refuse when the browser says the request is cross-site, or when it
/// comes from an origin that is neither ours nor on the allow-list.
pub fn check_csrf(
    req: &HttpRequest,
    cred: &Credential,
    allowed_origins: &[String],
) -> Result<(), Problem> {
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !cred.from_cookie || !unsafe_method {
        return Ok(());
    }
    let forbidden =
        || Problem::forbidden("cross-site requests authenticated by cookie are not allowed");
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Err(forbidden());
    }
    if let Some(origin) = header("origin") {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let host = req.connection_info().host().to_ascii_lowercase();
        let same_origin = origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host);
        if !same_origin && !allowed_origins.contains(&origin) {
            return Err(forbidden());
        }
    }
    Ok(())
}
