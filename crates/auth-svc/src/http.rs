//! auth-svc's HTTP surface: the JWKS (public, proxied by the gateway) and the internal
//! API the gateway composes the account endpoints from. Every internal call is safe to
//! retry: a repeated register answers 409, a repeated login re-checks the password, and
//! tokens are only ever issued fresh.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use domain::token::hash_token;
use domain::FieldError;
use prometheus::{IntCounterVec, Opts};
use serde_json::json;
use svc_kit::body::{read_body, require_object, str_field, JsonObject};
use svc_kit::internal::require_internal_token;
use svc_kit::metrics::Metrics;
use svc_kit::Problem;
use uuid::Uuid;

use crate::keys::Claims;
use crate::passwords::HashError;
use crate::store::{self, Refreshed};
use crate::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/.well-known/jwks.json", web::get().to(jwks))
        .service(
            web::scope("/internal/v1")
                .wrap(from_fn(require_internal_token))
                .route("/users", web::post().to(register))
                .route("/login", web::post().to(login))
                .route("/tokens", web::post().to(issue))
                .route("/refresh", web::post().to(refresh))
                .route("/logout", web::post().to(logout)),
        );
}

pub struct AuthMetrics {
    logins: IntCounterVec,
    registrations: IntCounterVec,
    refreshes: IntCounterVec,
}

impl AuthMetrics {
    pub fn new(m: &Metrics) -> Self {
        let counter = |name: &str, help: &str| {
            m.register(
                &IntCounterVec::new(Opts::new(name, help), &["result"])
                    .expect("static metric definition is valid"),
            )
        };
        let m = Self {
            logins: counter(
                "auth_logins_total",
                "Login attempts, by result (ok, failed, throttled, shed).",
            ),
            registrations: counter(
                "auth_registrations_total",
                "Registrations, by result (created, duplicate, shed).",
            ),
            refreshes: counter(
                "auth_refreshes_total",
                "Refresh-token exchanges, by result (ok, invalid, reused).",
            ),
        };
        // Every series exists from the start, so rates and alerts see 0, not nothing.
        for r in ["ok", "failed", "throttled", "shed"] {
            m.logins.with_label_values(&[r]);
        }
        for r in ["created", "duplicate", "shed"] {
            m.registrations.with_label_values(&[r]);
        }
        for r in ["ok", "invalid", "reused"] {
            m.refreshes.with_label_values(&[r]);
        }
        m
    }
}

async fn jwks(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        // Short enough that a rotation is seen within minutes; the gateway also
        // refetches at once when it meets an unknown `kid`.
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(st.keys.jwks())
}

fn db(e: sqlx::Error) -> Problem {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(error = %e, "postgres unavailable");
            Problem::unavailable(1)
        }
        _ => {
            tracing::error!(error = %e, "database error");
            Problem::internal()
        }
    }
}

fn hashing(e: HashError) -> Problem {
    match e {
        HashError::Saturated => {
            Problem::unavailable(1).detail("too many logins at once; retry in a moment")
        }
        HashError::Failed(cause) => {
            tracing::error!(%cause, "password hashing failed");
            Problem::internal()
        }
    }
}

/// Normalises and validates an email: trimmed, lower-cased, one `@` between a non-empty
/// local part and a dotted domain, no spaces, 3–254 characters.
pub fn normalise_email(raw: &str) -> Result<String, FieldError> {
    let email = raw.trim().to_lowercase();
    let bad = || FieldError::new("email", "must be an email address such as name@example.com");
    if !(3..=254).contains(&email.chars().count())
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err(bad());
    }
    Ok(email)
}

pub fn check_password(p: &str) -> Result<(), FieldError> {
    let n = p.chars().count();
    if (8..=128).contains(&n) {
        Ok(())
    } else {
        Err(FieldError::new("password", "must be 8 to 128 characters"))
    }
}

fn credentials(map: &JsonObject) -> Result<(String, String), Problem> {
    let email = str_field(map, "email").and_then(normalise_email);
    let password = str_field(map, "password");
    match (email, password) {
        (Ok(e), Ok(p)) => Ok((e, p.to_owned())),
        (e, p) => Err(Problem::from_field_errors(
            e.err().into_iter().chain(p.err()),
        )),
    }
}

async fn register(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["email", "password"])?;
    let (email, password) = credentials(&map)?;
    check_password(&password).map_err(|e| Problem::from_field_errors([e]))?;
    let phc = st.hasher.hash(password).await.map_err(|e| {
        st.metrics.registrations.with_label_values(&["shed"]).inc();
        hashing(e)
    })?;
    let user_id = Uuid::now_v7();
    if !store::insert_user(&st.pool, user_id, &email, &phc)
        .await
        .map_err(db)?
    {
        st.metrics
            .registrations
            .with_label_values(&["duplicate"])
            .inc();
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "email-taken",
            "Email already registered",
        )
        .detail("an account with this email exists; log in instead")
        .field("email", "is already registered"));
    }
    st.metrics
        .registrations
        .with_label_values(&["created"])
        .inc();
    tracing::info!(%user_id, "user registered");
    Ok(HttpResponse::Created().json(json!({ "user_id": user_id, "email": email })))
}

fn bad_credentials() -> Problem {
    Problem::unauthorized("the email or password is wrong")
}

fn throttled(until: chrono::DateTime<Utc>) -> Problem {
    let secs = (until - Utc::now()).num_seconds().max(1);
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "login-throttled",
        "Too many failed logins",
    )
    .detail("too many failed logins for this account; retry later")
    .retry_after(u64::try_from(secs).unwrap_or(1))
}

/// Checks credentials. Unknown email and wrong password take the same path — a lookup,
/// one argon2id verification (against a dummy hash when there is no user), a counted
/// failure — and end in the same 401.
async fn login(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["email", "password"])?;
    let (email, password) = credentials(&map)?;
    if st.hasher.saturated() {
        st.metrics.logins.with_label_values(&["shed"]).inc();
        return Err(hashing(HashError::Saturated));
    }
    if let Some(until) = store::blocked_until(&st.pool, &email).await.map_err(db)? {
        st.metrics.logins.with_label_values(&["throttled"]).inc();
        return Err(throttled(until));
    }
    let user = store::find_user(&st.pool, &email).await.map_err(db)?;
    let (user_id, stored) = match user {
        Some(u) => (Some(u.user_id), Some(u.password_hash)),
        None => (None, None),
    };
    let ok = st.hasher.verify(password, stored).await.map_err(|e| {
        st.metrics.logins.with_label_values(&["shed"]).inc();
        hashing(e)
    })?;
    match user_id.filter(|_| ok) {
        Some(user_id) => {
            store::clear_failures(&st.pool, &email).await.map_err(db)?;
            st.metrics.logins.with_label_values(&["ok"]).inc();
            Ok(HttpResponse::Ok().json(json!({ "user_id": user_id })))
        }
        None => {
            st.metrics.logins.with_label_values(&["failed"]).inc();
            if let Some(until) = store::record_failure(&st.pool, &email, &st.throttle)
                .await
                .map_err(db)?
            {
                tracing::info!("login throttled after repeated failures");
                return Err(throttled(until));
            }
            Err(bad_credentials())
        }
    }
}

fn user_id_field(map: &JsonObject) -> Result<Uuid, Problem> {
    str_field(map, "user_id")
        .map_err(|e| Problem::from_field_errors([e]))?
        .parse()
        .map_err(|_| Problem::validation("user_id", "must be a UUID"))
}

fn sid_field(map: &JsonObject) -> Result<String, Problem> {
    let sid = str_field(map, "sid").map_err(|e| Problem::from_field_errors([e]))?;
    if is_session_id(sid) {
        Ok(sid.to_owned())
    } else {
        Err(Problem::validation("sid", "is not a session id"))
    }
}

/// A session id (the `sid` claim) is the 64-hex-digit name session-svc gives a user
/// session. It is an identifier, not a credential: it grants nothing without a signed
/// access token, so it may be stored and compared in clear.
pub fn is_session_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new refresh token: 256 random bits, URL-safe base64.
fn new_refresh_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn access_token(st: &AppState, user_id: Uuid, sid: &str) -> Result<String, Problem> {
    let now = Utc::now().timestamp();
    let ttl = i64::try_from(st.tokens.access_ttl.as_secs()).unwrap_or(900);
    st.keys
        .sign(&Claims {
            iss: st.tokens.issuer.clone(),
            aud: st.tokens.audience.clone(),
            sub: user_id.to_string(),
            sid: sid.to_owned(),
            iat: now,
            exp: now + ttl,
            jti: Uuid::new_v4().to_string(),
        })
        .map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            Problem::internal()
        })
}

fn token_reply(
    st: &AppState,
    access: String,
    refresh: String,
    user_id: Uuid,
    sid: Option<&str>,
) -> HttpResponse {
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": st.tokens.access_ttl.as_secs(),
        "refresh_token": refresh,
        "user_id": user_id,
    });
    if let (Some(sid), Some(obj)) = (sid, body.as_object_mut()) {
        obj.insert("sid".to_owned(), json!(sid));
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// Tokens for a user's new session (after login): an access token naming the session,
/// and the first refresh token of a new family.
async fn issue(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["user_id", "sid"])?;
    let user_id = user_id_field(&map)?;
    let sid = sid_field(&map)?;
    let access = access_token(&st, user_id, &sid)?;
    let refresh = new_refresh_token();
    let expires = Utc::now()
        + chrono::Duration::from_std(st.tokens.refresh_ttl).unwrap_or(chrono::Duration::days(30));
    store::insert_refresh(
        &st.pool,
        &hash_token(&refresh),
        Uuid::now_v7(),
        user_id,
        &sid,
        expires,
    )
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            Problem::validation("user_id", "no such user")
        }
        _ => db(e),
    })?;
    Ok(token_reply(&st, access, refresh, user_id, None))
}

/// Exchanges a refresh token: the presented one stops working and a new pair is issued
/// for the same session (named as `sid`, so the gateway can check it is still alive). A
/// token presented a second time revokes its whole family; the 401 then names the
/// family's session (`revoked_sid`) so the gateway ends it too.
async fn refresh(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["refresh_token"])?;
    let presented =
        str_field(&map, "refresh_token").map_err(|e| Problem::from_field_errors([e]))?;
    let invalid = || Problem::unauthorized("the refresh token is unknown, expired or revoked");
    if !domain::token::is_plausible_token(presented) {
        st.metrics.refreshes.with_label_values(&["invalid"]).inc();
        return Err(invalid());
    }
    let next = new_refresh_token();
    let outcome = store::rotate_refresh(
        &st.pool,
        &hash_token(presented),
        &hash_token(&next),
        st.tokens.refresh_ttl,
    )
    .await
    .map_err(db)?;
    match outcome {
        Refreshed::Invalid => {
            st.metrics.refreshes.with_label_values(&["invalid"]).inc();
            Err(invalid())
        }
        Refreshed::Reused {
            user_id,
            session_id,
        } => {
            st.metrics.refreshes.with_label_values(&["reused"]).inc();
            tracing::warn!(%user_id, "refresh token reused: family revoked");
            Err(invalid().extension("revoked_sid", json!(session_id)))
        }
        Refreshed::Rotated {
            user_id,
            session_id,
        } => {
            st.metrics.refreshes.with_label_values(&["ok"]).inc();
            let access = access_token(&st, user_id, &session_id)?;
            Ok(token_reply(&st, access, next, user_id, Some(&session_id)))
        }
    }
}

/// Ends the refresh tokens of a session (logout).
async fn logout(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["sid"])?;
    let sid = sid_field(&map)?;
    let n = store::revoke_session(&st.pool, &sid).await.map_err(db)?;
    Ok(HttpResponse::Ok().json(json!({ "revoked_refresh_tokens": n })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_validated() {
        assert_eq!(
            normalise_email("  Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "a",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@c.de",
            "a@b@c.de",
            "ann@.com",
            "ann@example..com",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_8_to_128_characters() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
    }
}
