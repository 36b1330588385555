//! session-svc's internal API (only peers holding the internal credential may call it).

use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use domain::token::{hash_token, is_plausible_token};
use domain::{CartId, UserId};
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
            .route("/revoke", web::post().to(revoke))
            .route("/bind", web::post().to(bind)),
    )
    .service(
        web::scope("/internal/v1/users")
            .wrap(from_fn(require_internal_token))
            .route("/revoke-sessions", web::post().to(revoke_all)),
    );
}

pub struct SessionMetrics {
    created: IntCounterVec,
    touches: IntCounterVec,
    revoked: IntCounter,
    rotated: IntCounter,
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
            rotated: m.register(
                &IntCounter::new(
                    "sessions_rotated_total",
                    "Guest sessions replaced by a user session at login.",
                )
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
    let map = parse_object(&req, &body, &["kind", "cart_id", "cart_token", "user_id"])?
        .unwrap_or_default();
    let kind = opt_str_field(&map, "kind").map_err(|e| Problem::from_field_errors([e]))?;
    match kind {
        None | Some("guest") => {}
        Some("user") => return create_user(&st, &map).await,
        Some(_) => return Err(Problem::validation("kind", "must be guest or user")),
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

/// A user session (login on a device without a guest session): the token becomes the
/// access token's `sid`.
async fn create_user(
    st: &AppState,
    map: &svc_kit::body::JsonObject,
) -> Result<HttpResponse, Problem> {
    let (user_id, cart_id) = user_and_cart(map)?;
    let id = new_session_id();
    let session = st
        .store
        .create(&id, &st.user_session(user_id, cart_id))
        .await?;
    st.metrics.created.with_label_values(&["user"]).inc();
    tracing::info!(session = session_ref(&id), "user session created");
    Ok(HttpResponse::Created().json(user_created_json(st, &id, &session)))
}

fn user_and_cart(map: &svc_kit::body::JsonObject) -> Result<(UserId, CartId), Problem> {
    let user_id = str_field(map, "user_id")
        .map_err(|e| Problem::from_field_errors([e]))?
        .parse::<UserId>()
        .map_err(|_| Problem::validation("user_id", "must be a UUID"))?;
    let cart_id = str_field(map, "cart_id")
        .map_err(|e| Problem::from_field_errors([e]))?
        .parse::<CartId>()
        .map_err(|_| Problem::validation("cart_id", "must be a UUID"))?;
    Ok((user_id, cart_id))
}

/// A user session is named by a random 256-bit id (64 hex digits, the access token's
/// `sid`) rather than by a token: the client's credential is the signed access token,
/// and the id alone grants nothing. It is stored under the same key scheme as guest
/// sessions (`session:<64 hex>`), so every session is swept and indexed alike.
fn new_session_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn is_session_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn user_created_json(st: &AppState, id: &str, s: &Session) -> serde_json::Value {
    let user_id = match s.kind {
        Kind::User(u) => Some(u.to_string()),
        Kind::Guest => None,
    };
    json!({
        "session_id": id,
        "kind": "user",
        "user_id": user_id,
        "cart_id": s.cart_id.to_string(),
        "created_at": s.created_at,
        "expires_at": s.expires_at,
        "idle_timeout_seconds": st.timeouts.user_idle.as_secs(),
    })
}

/// Login with a guest session: the guest session ends and a user session with a new
/// token begins (no session fixation). 404 when the guest session is already gone, so
/// a retried login falls back to a plain user session.
async fn bind(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["session_token", "user_id", "cart_id"])?;
    let old = str_field(&map, "session_token").map_err(|e| Problem::from_field_errors([e]))?;
    let (user_id, cart_id) = user_and_cart(&map)?;
    if !is_plausible_token(old) {
        return Err(unknown_session());
    }
    let id = new_session_id();
    let bound = st
        .store
        .bind(&hash_token(old), &id, &st.user_session(user_id, cart_id))
        .await?;
    let Some(session) = bound else {
        return Err(unknown_session());
    };
    st.metrics.created.with_label_values(&["user"]).inc();
    st.metrics.rotated.inc();
    tracing::info!(
        session = session_ref(&id),
        "guest session rotated into a user session"
    );
    Ok(HttpResponse::Created().json(user_created_json(&st, &id, &session)))
}

/// Ends every session of a user (e.g. after a stolen refresh token was detected).
async fn revoke_all(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["user_id"])?;
    let user_id = str_field(&map, "user_id")
        .map_err(|e| Problem::from_field_errors([e]))?
        .parse::<UserId>()
        .map_err(|_| Problem::validation("user_id", "must be a UUID"))?;
    let n = st.store.revoke_all(user_id).await?;
    st.metrics.revoked.inc_by(n);
    tracing::info!(%user_id, sessions = n, "all sessions of a user revoked");
    Ok(HttpResponse::Ok().json(json!({ "revoked": n })))
}

/// The Redis name of the session a request names: the hash of a `session_token`
/// (guests), or a user session's `session_id` as is. `None` for a malformed value (it
/// names no session).
fn key_from_body(req: &HttpRequest, body: &[u8]) -> Result<Option<(String, bool)>, Problem> {
    let map = require_object(req, body, &["session_token", "session_id"])?;
    if let Some(id) =
        opt_str_field(&map, "session_id").map_err(|e| Problem::from_field_errors([e]))?
    {
        return Ok(is_session_id(id).then(|| (id.to_owned(), true)));
    }
    let token = str_field(&map, "session_token").map_err(|e| Problem::from_field_errors([e]))?;
    Ok(is_plausible_token(token).then(|| (hash_token(token), false)))
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
    let Some((key, by_id)) = key_from_body(&req, &body)? else {
        st.metrics.touches.with_label_values(&["missing"]).inc();
        return Err(unknown_session());
    };
    match st.store.touch(&key).await? {
        // A session id names user sessions only: a guest session is reached by its
        // token, never by the hash of it.
        Some(s) if by_id && s.kind == Kind::Guest => {
            st.metrics.touches.with_label_values(&["missing"]).inc();
            Err(unknown_session())
        }
        Some(s) => {
            st.metrics.touches.with_label_values(&["live"]).inc();
            Ok(HttpResponse::Ok().json(identity_json(&s, &key)))
        }
        None => {
            st.metrics.touches.with_label_values(&["missing"]).inc();
            Err(unknown_session())
        }
    }
}

/// The identity a touch answers with (the gateway's `caller::Identity`). Typed rather
/// than a `json!` tree: it is written for every authenticated request.
#[derive(serde::Serialize)]
struct IdentityBody<'a> {
    kind: &'static str,
    user_id: Option<String>,
    session_id: Option<&'a str>,
    cart_id: String,
    cart_token_hash: Option<&'a str>,
    session_ref: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
    last_active: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
}

fn identity_json<'a>(s: &'a Session, token_hash: &'a str) -> IdentityBody<'a> {
    let (kind, user_id) = match s.kind {
        Kind::Guest => ("guest", None),
        Kind::User(u) => ("user", Some(u.to_string())),
    };
    // A user session's id is its access tokens' `sid` (an identifier, not a secret);
    // a guest session's key is the hash of its token and is never handed out.
    let session_id = user_id.as_ref().map(|_| token_hash);
    IdentityBody {
        kind,
        user_id,
        session_id,
        cart_id: s.cart_id.to_string(),
        cart_token_hash: s.cart_token_hash.as_deref(),
        session_ref: session_ref(token_hash),
        created_at: s.created_at,
        last_active: s.last_active,
        expires_at: s.expires_at,
    }
}

async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let Some((key, _)) = key_from_body(&req, &body)? else {
        return Err(unknown_session());
    };
    if st.store.revoke(&key).await? {
        st.metrics.revoked.inc();
        tracing::info!(session = session_ref(&key), "session revoked");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(unknown_session())
    }
}
