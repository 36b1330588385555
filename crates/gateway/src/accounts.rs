//! The account endpoints (API.md "Accounts"), composed from internal calls:
//! auth-svc checks passwords and issues tokens, session-svc holds sessions, cart-svc
//! merges carts. Login runs its steps in the one order that is safe to retry from any
//! point: check the password, merge the guest cart (exactly once, by cart-svc), rotate
//! the guest session into a user session, issue tokens. A failure before the rotation
//! leaves the guest session alive, so the client simply logs in again; the merge it
//! may already have done is not repeated.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use svc_kit::body::{read_body, require_object};
use svc_kit::internal::Peer;
use svc_kit::Problem;

use crate::caller::{self, Credential, Identity, CART_TOKEN_COOKIE, SESSION_COOKIE};
use crate::guard::Priority;
use crate::openapi as api;
use crate::routes::{cookie, request_id};
use crate::upstream;
use crate::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/auth/register", web::post().to(register))
        .route("/api/v1/auth/login", web::post().to(login))
        .route("/api/v1/auth/refresh", web::post().to(refresh))
        .route("/api/v1/auth/logout", web::post().to(logout))
        .route("/.well-known/jwks.json", web::get().to(jwks));
}

/// POSTs JSON to a peer through its guard. Every internal call used here is safe to
/// repeat (see the module note), so a transport failure is retried once within budget.
async fn call(
    st: &AppState,
    peer: &Peer,
    priority: Priority,
    path: &str,
    body: &Value,
    rid: Option<&str>,
) -> Result<reqwest::Response, Problem> {
    st.guard(peer)
        .call(priority, true, || {
            peer.request(reqwest::Method::POST, path, rid)
                .json(body)
                .send()
        })
        .await
}

async fn json_of<T: for<'de> Deserialize<'de>>(
    peer: &Peer,
    res: reqwest::Response,
) -> Result<T, Problem> {
    res.json::<T>()
        .await
        .map_err(|e| upstream::failure(peer.name, &e))
}

/// Relays a peer's answer (success or problem) as ours.
async fn relay(peer: &Peer, res: reqwest::Response) -> HttpResponse {
    if res.status().is_success() {
        let status = actix_web::http::StatusCode::from_u16(res.status().as_u16())
            .unwrap_or(actix_web::http::StatusCode::OK);
        match res.bytes().await {
            Ok(body) => HttpResponse::build(status)
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .content_type("application/json")
                .body(body),
            Err(e) => upstream::failure(peer.name, &e).to_response(),
        }
    } else {
        upstream::relay_error(peer.name, res).await
    }
}

/// Register
///
/// Creates an account. The email is normalised (trimmed, lower-cased) and validated;
/// the password must be 8–128 characters. It does not log in.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "accounts",
    request_body = api::Credentials,
    responses(
        (status = 201, description = "The account.", body = api::Registered, headers(("Cache-Control"))),
        (status = 400, response = api::BadRequest),
        (status = 409, response = api::EmailTaken),
        (status = 413, response = api::PayloadTooLarge),
        (status = 415, response = api::UnsupportedMediaType),
        (status = 500, response = api::InternalError),
        api::BackendErrors,
    ),
)]
pub(crate) async fn register(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.cfg.max_body_bytes).await?;
    let map = require_object(&req, &body, &["email", "password"])?;
    let rid = request_id(&req);
    let res = call(
        &st,
        &st.auth,
        Priority::Low,
        "/internal/v1/users",
        &Value::Object(map),
        rid.as_deref(),
    )
    .await?;
    Ok(relay(&st.auth, res).await)
}

#[derive(Deserialize)]
struct Verified {
    user_id: String,
}

#[derive(Deserialize)]
struct Merged {
    cart: Value,
}

#[derive(Deserialize)]
struct UserSession {
    session_id: String,
}

#[derive(Deserialize)]
struct Tokens {
    access_token: String,
    token_type: String,
    expires_in: u64,
    refresh_token: String,
}

/// Log in
///
/// Checks the credentials (a wrong email and a wrong password get the same 401, in
/// about the same time; repeated failures → 429). When the request carries a guest
/// session (`X-Session-Token` or the `cart_session` cookie), its cart is merged into the
/// account's cart — exactly once, even if the login is retried — the guest session ends
/// and both guest cookies are cleared. Every login gets a new session; a second device
/// gets its own, on the same cart.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "accounts",
    request_body = api::Credentials,
    security((), ("session_token" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Logged in.", body = api::LoginResponse, headers(
            ("Cache-Control"),
            ("Set-Cookie" = String, description = "When a guest session came with the request: `cart_session` and `cart_token` cleared."),
        )),
        (status = 400, response = api::BadRequest),
        (status = 401, response = api::Unauthorized),
        (status = 403, response = api::Forbidden),
        (status = 413, response = api::PayloadTooLarge),
        (status = 415, response = api::UnsupportedMediaType),
        (status = 429, response = api::TooManyRequests),
        (status = 500, response = api::InternalError),
        api::BackendErrors,
    ),
)]
pub(crate) async fn login(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.cfg.max_body_bytes).await?;
    let map = require_object(&req, &body, &["email", "password"])?;
    let rid = request_id(&req);
    let rid = rid.as_deref();

    // The guest session that came along, if it is still alive: its cart is merged. A
    // stale or unknown one is ignored (the login itself must not fail for it), but a
    // cookie sent cross-site is refused like any cookie-authenticated write.
    let guest = match Credential::session_from_request(&req) {
        Some(cred @ Credential::Session { .. }) => {
            caller::check_csrf(&req, &cred, &st.cfg.allowed_origins)?;
            guest_session(&st, &cred, rid).await?
        }
        _ => None,
    };

    let res = call(
        &st,
        &st.auth,
        Priority::Low,
        "/internal/v1/login",
        &Value::Object(map),
        rid,
    )
    .await?;
    if !res.status().is_success() {
        return Ok(upstream::relay_error(st.auth.name, res).await);
    }
    let user: Verified = json_of(&st.auth, res).await?;

    let guest_cart = guest.as_ref().map(|(_, id)| id.cart_id.clone());
    let res = call(
        &st,
        &st.carts,
        Priority::Low,
        "/internal/v1/carts/merge",
        &json!({ "user_id": user.user_id, "guest_cart_id": guest_cart }),
        rid,
    )
    .await?;
    if !res.status().is_success() {
        return Ok(upstream::relay_error(st.carts.name, res).await);
    }
    let merged: Merged = json_of(&st.carts, res).await?;
    let cart_id = merged.cart.get("cart_id").cloned().unwrap_or(Value::Null);

    // Rotation: the guest session ends and a new user session begins. If the guest
    // session is gone meanwhile (expired, or an earlier attempt of this login rotated
    // it), a plain user session is created instead.
    let mut session = None;
    if let Some((token, _)) = &guest {
        let res = call(
            &st,
            &st.sessions,
            Priority::Low,
            "/internal/v1/sessions/bind",
            &json!({ "session_token": token, "user_id": user.user_id, "cart_id": cart_id }),
            rid,
        )
        .await?;
        match res.status().as_u16() {
            201 => session = Some(json_of::<UserSession>(&st.sessions, res).await?),
            404 => {}
            _ => return Ok(upstream::relay_error(st.sessions.name, res).await),
        }
    }
    let session = match session {
        Some(s) => s,
        None => {
            let res = call(
                &st,
                &st.sessions,
                Priority::Low,
                "/internal/v1/sessions",
                &json!({ "kind": "user", "user_id": user.user_id, "cart_id": cart_id }),
                rid,
            )
            .await?;
            if res.status().as_u16() != 201 {
                return Ok(upstream::relay_error(st.sessions.name, res).await);
            }
            json_of::<UserSession>(&st.sessions, res).await?
        }
    };

    let res = call(
        &st,
        &st.auth,
        Priority::Low,
        "/internal/v1/tokens",
        &json!({ "user_id": user.user_id, "sid": session.session_id }),
        rid,
    )
    .await?;
    if !res.status().is_success() {
        return Ok(upstream::relay_error(st.auth.name, res).await);
    }
    let tokens: Tokens = json_of(&st.auth, res).await?;

    let mut reply = HttpResponse::Ok();
    reply.insert_header((header::CACHE_CONTROL, "no-store"));
    if guest.is_some() || req.cookie(SESSION_COOKIE).is_some() {
        // The guest session is over and its cart now belongs to the account: neither
        // cookie identifies anything any more.
        for name in [SESSION_COOKIE, CART_TOKEN_COOKIE] {
            let mut gone = cookie(&st, name, String::new());
            gone.make_removal();
            reply.cookie(gone);
        }
    }
    Ok(reply.json(json!({
        "access_token": tokens.access_token,
        "token_type": tokens.token_type,
        "expires_in": tokens.expires_in,
        "refresh_token": tokens.refresh_token,
        "user_id": user.user_id,
        "cart": merged.cart,
    })))
}

/// The live guest session behind a session credential, with its token.
async fn guest_session(
    st: &AppState,
    cred: &Credential,
    rid: Option<&str>,
) -> Result<Option<(String, Identity)>, Problem> {
    let Credential::Session { token, .. } = cred else {
        return Ok(None);
    };
    if !domain::token::is_plausible_token(token) {
        return Ok(None);
    }
    match caller::touch(
        st,
        Priority::Low,
        caller::SessionKey::SessionToken(token),
        rid,
    )
    .await
    {
        Ok(id) if id.kind == "guest" => Ok(Some((token.clone(), id))),
        Ok(_) => Ok(None),
        Err(p) if p.status_code() == actix_web::http::StatusCode::UNAUTHORIZED => Ok(None),
        Err(p) => Err(p),
    }
}

#[derive(Deserialize)]
struct Refreshed {
    access_token: String,
    token_type: String,
    expires_in: u64,
    refresh_token: String,
    user_id: String,
    sid: String,
}

/// Refresh
///
/// Exchanges a refresh token for a new access token and a new refresh token; the one
/// presented stops working. Presenting an already-used refresh token → 401, and its
/// whole family (and the session it kept alive) is revoked.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "accounts",
    request_body = api::RefreshRequest,
    responses(
        (status = 200, description = "A new token pair.", body = api::TokenPair, headers(("Cache-Control"))),
        (status = 400, response = api::BadRequest),
        (status = 401, response = api::Unauthorized),
        (status = 413, response = api::PayloadTooLarge),
        (status = 415, response = api::UnsupportedMediaType),
        (status = 500, response = api::InternalError),
        api::BackendErrors,
    ),
)]
pub(crate) async fn refresh(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.cfg.max_body_bytes).await?;
    let map = require_object(&req, &body, &["refresh_token"])?;
    let rid = request_id(&req);
    let rid = rid.as_deref();
    let res = call(
        &st,
        &st.auth,
        Priority::Normal,
        "/internal/v1/refresh",
        &Value::Object(map),
        rid,
    )
    .await?;
    if res.status().as_u16() == 401 {
        // A reused token: auth-svc revoked its family and names the family's session,
        // which ends too (whoever holds its access tokens is locked out at once).
        let problem: Value = res.json().await.unwrap_or_default();
        if let Some(sid) = problem.get("revoked_sid").and_then(Value::as_str) {
            tracing::warn!("refresh token reuse: ending its session");
            if let Err(p) = revoke_session_id(&st, sid, rid).await {
                tracing::warn!(
                    status = p.status,
                    "could not end the session of a reused token"
                );
            }
        }
        return Err(Problem::unauthorized(
            "the refresh token is unknown, expired, revoked or already used",
        ));
    }
    if !res.status().is_success() {
        return Ok(upstream::relay_error(st.auth.name, res).await);
    }
    let t: Refreshed = json_of(&st.auth, res).await?;
    // The session must still be alive: refresh tokens never outlive their session
    // (idle timeout, absolute limit, logout). Touching it also slides it.
    match caller::touch(
        &st,
        Priority::Normal,
        caller::SessionKey::SessionId(&t.sid),
        rid,
    )
    .await
    {
        Ok(id) if id.kind == "user" && id.user_id.as_deref() == Some(t.user_id.as_str()) => {}
        Ok(_) => return Err(caller::unauthenticated()),
        Err(p) if p.status_code() == actix_web::http::StatusCode::UNAUTHORIZED => {
            // Its session is over: so is the family.
            let _ = call(
                &st,
                &st.auth,
                Priority::Normal,
                "/internal/v1/logout",
                &json!({ "sid": t.sid }),
                rid,
            )
            .await;
            return Err(Problem::unauthorized(
                "the session of this refresh token has ended; log in again",
            ));
        }
        Err(p) => return Err(p),
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "access_token": t.access_token,
            "token_type": t.token_type,
            "expires_in": t.expires_in,
            "refresh_token": t.refresh_token,
        })))
}

/// Ends a user session by its id; one already gone counts as ended.
async fn revoke_session_id(st: &AppState, sid: &str, rid: Option<&str>) -> Result<(), Problem> {
    let res = call(
        st,
        &st.sessions,
        Priority::Normal,
        "/internal/v1/sessions/revoke",
        &json!({ "session_id": sid }),
        rid,
    )
    .await?;
    match res.status().as_u16() {
        204 | 404 => Ok(()),
        status => {
            tracing::warn!(status, "session-svc refused a revoke");
            Err(Problem::unavailable(1))
        }
    }
}

/// Log out
///
/// Ends this device's session and its refresh token: the access token is refused from
/// now on. The account's cart stays and comes back on the next login.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out."),
        (status = 401, response = api::Unauthorized),
        (status = 500, response = api::InternalError),
        api::BackendErrors,
    ),
)]
pub(crate) async fn logout(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let cred = caller::credential(&req)?;
    let rid = request_id(&req);
    if !matches!(cred, Credential::Bearer(_)) {
        return Err(Problem::unauthorized(
            "logout needs the access token (Authorization: Bearer); a guest ends its session with DELETE /api/v1/session",
        ));
    }
    let id = caller::authenticate(&st, &cred, Priority::Normal, rid.as_deref()).await?;
    end_user_session(&st, &id, rid.as_deref()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Ends a user's session and its refresh tokens. The cart is untouched.
pub async fn end_user_session(
    st: &AppState,
    id: &Identity,
    rid: Option<&str>,
) -> Result<(), Problem> {
    let sid = id
        .session_id
        .as_deref()
        .ok_or_else(caller::unauthenticated)?;
    let res = call(
        st,
        &st.auth,
        Priority::Normal,
        "/internal/v1/logout",
        &json!({ "sid": sid }),
        rid,
    )
    .await?;
    if !res.status().is_success() {
        tracing::warn!(status = res.status().as_u16(), "auth-svc refused a logout");
        return Err(Problem::unavailable(1));
    }
    revoke_session_id(st, sid, rid).await
}

/// Public signing keys (JWKS)
///
/// The keys that verify access tokens, each with its `kid`. During a key rotation
/// several are listed.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "accounts",
    responses(
        (status = 200, description = "The JWK Set.", body = api::Jwks, headers(("Cache-Control"))),
        api::BackendErrors,
    ),
)]
pub(crate) async fn jwks(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let rid = request_id(&req);
    let res = st
        .auth
        .request(
            reqwest::Method::GET,
            "/.well-known/jwks.json",
            rid.as_deref(),
        )
        .send()
        .await
        .map_err(|e| upstream::failure(st.auth.name, &e))?;
    if !res.status().is_success() {
        return Ok(upstream::relay_error(st.auth.name, res).await);
    }
    let body = res
        .bytes()
        .await
        .map_err(|e| upstream::failure(st.auth.name, &e))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .content_type("application/json")
        .body(body))
}
