//! Who is calling: the credential a request carries, and the identity behind it
//! (API.md "Who is calling"). A guest presents a session token (`X-Session-Token` or the
//! `cart_session` cookie), resolved by session-svc; a user presents a Bearer access
//! token, verified here and then checked against session-svc, so a logout ends it at
//! once.

use actix_web::http::{header, Method};
use actix_web::HttpRequest;
use serde::Deserialize;
use svc_kit::Problem;

use crate::guard::Priority;
use crate::upstream;
use crate::AppState;

pub const SESSION_HEADER: &str = "x-session-token";
pub const SESSION_COOKIE: &str = "cart_session";
pub const CART_TOKEN_COOKIE: &str = "cart_token";

#[derive(Debug, Clone)]
pub enum Credential {
    /// A guest's session token, and where it came from (cookies need CSRF protection,
    /// headers don't: a browser never attaches a custom header to a cross-site request
    /// on its own).
    Session { token: String, from_cookie: bool },
    /// A user's access token (JWT).
    Bearer(String),
}

impl Credential {
    /// The guest credential a request carries, if any (login merges its cart).
    pub fn session_from_request(req: &HttpRequest) -> Option<Self> {
        if let Some(v) = req.headers().get(SESSION_HEADER) {
            return Some(Self::Session {
                token: v.to_str().unwrap_or_default().trim().to_owned(),
                from_cookie: false,
            });
        }
        req.cookie(SESSION_COOKIE).map(|c| Self::Session {
            token: c.value().to_owned(),
            from_cookie: true,
        })
    }

    pub fn from_cookie(&self) -> bool {
        matches!(
            self,
            Credential::Session {
                from_cookie: true,
                ..
            }
        )
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
    /// User sessions only: the `sid` of their access tokens.
    #[serde(default)]
    pub session_id: Option<String>,
    pub expires_at: String,
    pub last_active: String,
}

pub fn unauthenticated() -> Problem {
    Problem::unauthorized(
        "a valid session token (X-Session-Token header or cart_session cookie) or a Bearer access token is required",
    )
}

/// The caller's credential, or 401. A Bearer token wins when both are sent.
pub fn credential(req: &HttpRequest) -> Result<Credential, Problem> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| unauthenticated())?.trim();
        let token = match v.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => return Err(unauthenticated()),
        };
        if token.is_empty() || token.len() > 4096 {
            return Err(unauthenticated());
        }
        return Ok(Credential::Bearer(token.to_owned()));
    }
    match Credential::session_from_request(req) {
        Some(Credential::Session { token, from_cookie })
            if domain::token::is_plausible_token(&token) =>
        {
            Ok(Credential::Session { token, from_cookie })
        }
        _ => Err(unauthenticated()),
    }
}

/// Who the credential belongs to. For a session token: its live guest session (its
/// idle timeout slides). For an access token: the verified claims, then its session
/// (`sid`), which must be alive and the same user's.
pub async fn authenticate(
    st: &AppState,
    cred: &Credential,
    priority: Priority,
    request_id: Option<&str>,
) -> Result<Identity, Problem> {
    match cred {
        Credential::Session { token, .. } => {
            let id = touch(st, priority, SessionKey::SessionToken(token), request_id).await?;
            if id.kind != "guest" {
                return Err(unauthenticated());
            }
            Ok(id)
        }
        Credential::Bearer(token) => {
            let claims = st.jwt.verify(token, request_id).await?;
            let id = touch(st, priority, SessionKey::SessionId(&claims.sid), request_id)
                .await
                .map_err(|p| {
                    if p.status_code() == actix_web::http::StatusCode::UNAUTHORIZED {
                        Problem::unauthorized(
                            "the session of this access token has ended; log in again",
                        )
                    } else {
                        p
                    }
                })?;
            if id.kind != "user" || id.user_id.as_deref() != Some(claims.sub.as_str()) {
                return Err(unauthenticated());
            }
            Ok(id)
        }
    }
}

/// How a touch names its session; serialises as session-svc's body,
/// `{"session_token": "…"}` or `{"session_id": "…"}`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKey<'a> {
    SessionToken(&'a str),
    SessionId(&'a str),
}

/// Looks a session up through session-svc, which also slides its idle timeout.
pub async fn touch(
    st: &AppState,
    priority: Priority,
    body: SessionKey<'_>,
    request_id: Option<&str>,
) -> Result<Identity, Problem> {
    let sessions = &st.sessions;
    // A touch only reads and slides a TTL: safe to repeat.
    let res = st
        .guards
        .sessions
        .call(priority, true, || {
            sessions
                .request(
                    reqwest::Method::POST,
                    "/internal/v1/sessions/touch",
                    request_id,
                )
                .json(&body)
                .send()
        })
        .await?;
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
    if !cred.from_cookie() || !unsafe_method {
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
