//! session-svc's internal API (only peers holding the internal credential may call it).

use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use domain::token::{hash_token, is_plausible_token};
use domain::CartId;
use prometheus::{IntCounter, IntCounterVec, Opts};
use serde_json::json;
use svc_kit::body::{opt_str_field, parse_object, read_body, require_object, str_field};
use svc_kit::internal::require_internal_token;
use svc_kit::metrics::Metrics;
use svc_kit::Problem;

use crate::store::{Kind, NewSession, Session, SessionError};
use crate::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/internal/v1/sessions")
            .wrap(from_fn(require_internal_token))
            .route("", web::post().to(create))
            .route("/touch", web::post().to(touch))
            .route("/revoke", web::post().to(revoke)),
    );
}

pub struct SessionMetrics {
    created: IntCounterVec,
    touches: IntCounterVec,
    revoked: IntCounter,
}

impl SessionMetrics {
    pub fn new(m: &Metrics) -> Self {
        Self {
            created: m.register(
                &IntCounterVec::new(
                    Opts::new("sessions_created_total", "Sessions created."),
                    &["kind"],
                )
                .expect("static metric definition is valid"),
            ),
            touches: m.register(
                &IntCounterVec::new(
                    Opts::new(
                        "session_touches_total",
                        "Session look-ups, by result (live or missing).",
                    ),
                    &["result"],
                )
                .expect("static metric definition is valid"),
            ),
            revoked: m.register(
                &IntCounter::new("sessions_revoked_total", "Sessions ended on request.")
                    .expect("static metric definition is valid"),
            ),
        }
    }
}

impl From<SessionError> for Problem {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Unavailable(cause) => {
                tracing::warn!(%cause, "redis unavailable");
                Problem::unavailable(1)
            }
            SessionError::Corrupt(what) => {
                tracing::error!(what, "stored session breaks the model");
                Problem::internal()
            }
        }
    }
}

/// A new secret token: 256 random bits, URL-safe base64 (43 characters).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A short, non-reversible reference to a session for logs (never the token).
pub fn session_ref(token_hash: &str) -> &str {
    &token_hash[..12.min(token_hash.len())]
}

/// Starts a guest session bound to a cart: a new cart id and cart token, or — when the
/// gateway recovered a cart from a `cart_token` — that cart and that token.
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = parse_object(&req, &body, &["kind", "cart_id", "cart_token"])?.unwrap_or_default();
    let kind = opt_str_field(&map, "kind").map_err(|e| Problem::from_field_errors([e]))?;
    if kind.is_some_and(|k| k != "guest") {
        return Err(Problem::validation(
            "kind",
            "only guest sessions are created here",
        ));
    }
    let cart_id = opt_str_field(&map, "cart_id").map_err(|e| Problem::from_field_errors([e]))?;
    let cart_token =
        opt_str_field(&map, "cart_token").map_err(|e| Problem::from_field_errors([e]))?;
    let (cart_id, cart_token) = match (cart_id, cart_token) {
        (Some(id), Some(token)) if is_plausible_token(token) => (
            id.parse::<CartId>()
                .map_err(|_| Problem::validation("cart_id", "must be a UUID"))?,
            token.to_owned(),
        ),
        (None, None) => (CartId::new(), new_token()),
        _ => {
            return Err(Problem::validation(
                "cart_token",
                "cart_id and a well-formed cart_token come together or not at all",
            ))
        }
    };
    let session_token = new_token();
    let token_hash = hash_token(&session_token);
    let session = st
        .store
        .create(
            &token_hash,
            &NewSession {
                kind: Kind::Guest,
                cart_id,
                cart_token_hash: Some(hash_token(&cart_token)),
                idle: st.timeouts.guest_idle,
                absolute: None,
            },
        )
        .await?;
    st.metrics.created.with_label_values(&["guest"]).inc();
    tracing::info!(session = session_ref(&token_hash), "guest session created");
    Ok(HttpResponse::Created().json(json!({
        "session_token": session_token,
        "kind": "guest",
        "cart_id": session.cart_id.to_string(),
        "cart_token": cart_token,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "idle_timeout_seconds": st.timeouts.guest_idle.as_secs(),
    })))
}

fn token_from_body(req: &HttpRequest, body: &[u8]) -> Result<String, Problem> {
    let map = require_object(req, body, &["session_token"])?;
    let token = str_field(&map, "session_token").map_err(|e| Problem::from_field_errors([e]))?;
    Ok(token.to_owned())
}

fn unknown_session() -> Problem {
    Problem::not_found("no live session for this token")
}

/// Looks a session up and slides its idle timeout: called by the gateway on every
/// authenticated request.
async fn touch(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let token = token_from_body(&req, &body)?;
    if !is_plausible_token(&token) {
        st.metrics.touches.with_label_values(&["missing"]).inc();
        return Err(unknown_session());
    }
    let token_hash = hash_token(&token);
    match st.store.touch(&token_hash).await? {
        Some(s) => {
            st.metrics.touches.with_label_values(&["live"]).inc();
            Ok(HttpResponse::Ok().json(identity_json(&s, &token_hash)))
        }
        None => {
            st.metrics.touches.with_label_values(&["missing"]).inc();
            Err(unknown_session())
        }
    }
}

fn identity_json(s: &Session, token_hash: &str) -> serde_json::Value {
    let (kind, user_id) = match s.kind {
        Kind::Guest => ("guest", None),
        Kind::User(u) => ("user", Some(u.to_string())),
    };
    json!({
        "kind": kind,
        "user_id": user_id,
        "cart_id": s.cart_id.to_string(),
        "cart_token_hash": s.cart_token_hash,
        "session_ref": session_ref(token_hash),
        "created_at": s.created_at,
        "last_active": s.last_active,
        "expires_at": s.expires_at,
    })
}

async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let token = token_from_body(&req, &body)?;
    if !is_plausible_token(&token) {
        return Err(unknown_session());
    }
    let token_hash = hash_token(&token);
    if st.store.revoke(&token_hash).await? {
        st.metrics.revoked.inc();
        tracing::info!(session = session_ref(&token_hash), "session revoked");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(unknown_session())
    }
}
