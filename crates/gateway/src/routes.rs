//! The public API's routes (API.md). Session endpoints are composed here from internal
//! calls; cart endpoints are forwarded to cart-svc with the caller's identity.

use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use domain::identity::{self, CART_ID_HEADER, CART_TOKEN_HASH_HEADER, KIND_HEADER, USER_ID_HEADER};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use svc_kit::body::{opt_str_field, parse_object, read_body};
use svc_kit::observe::RequestId;
use svc_kit::Problem;

use crate::caller::{self, Credential, CART_TOKEN_COOKIE, SESSION_COOKIE};
use crate::guard::Priority;
use crate::openapi as api;
use crate::upstream;
use crate::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/sessions", web::post().to(start_session))
        .configure(crate::accounts::routes)
        .route("/api/v1/session", web::get().to(who_am_i))
        .route("/api/v1/session", web::delete().to(end_session))
        // Each cart route is its own resource so metrics carry the route template.
        .service(
            web::resource("/api/v1/cart")
                .route(web::get().to(get_cart))
                .route(web::delete().to(clear_cart)),
        )
        .service(web::resource("/api/v1/cart/items").route(web::post().to(add_item)))
        .service(web::resource("/api/v1/cart/ops").route(web::post().to(sync_ops)))
        .service(
            web::resource("/api/v1/cart/items/{product_id}")
                .route(web::put().to(set_item))
                .route(web::delete().to(remove_item)),
        )
        .configure(api::routes);
}

pub(crate) fn request_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}

pub(crate) fn cookie<'c>(st: &AppState, name: &'c str, value: String) -> Cookie<'c> {
    Cookie::build(name, value)
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(st.cfg.cookie_secure)
        .finish()
}

#[derive(Deserialize)]
struct CreatedSession {
    session_token: String,
    cart_id: String,
    cart_token: String,
    expires_at: String,
    idle_timeout_seconds: u64,
}

/// Start a guest session
///
/// A guest session on a new, empty cart, or on the earlier guest cart that `cart_token`
/// recovers. The body is optional. Also sets the `cart_session` and `cart_token` cookies.
#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    tag = "sessions",
    // A `ref` keeps the body optional without making `null` a valid body.
    request_body(content = ref("#/components/schemas/StartSessionRequest"), content_type = "application/json"),
    responses(
        (status = 201, description = "The session, and its cart.", body = api::Session, headers(
            ("Set-Cookie" = String, description = "`cart_session=<session_token>` (HttpOnly, SameSite=Lax, Path=/, Secure when configured; a session cookie) and `cart_token=<cart_token>` (same flags, Max-Age as long as guest carts are kept: 14 days by default)."),
            ("Cache-Control"),
        )),
        (status = 400, response = api::BadRequest),
        (status = 413, response = api::PayloadTooLarge),
        (status = 415, response = api::UnsupportedMediaType),
        (status = 500, response = api::InternalError),
        api::BackendErrors,
    ),
)]
pub(crate) async fn start_session(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let rid = request_id(&req);
    let body = read_body(&req, payload, st.cfg.max_body_bytes).await?;
    let map = parse_object(&req, &body, &["cart_token"])?.unwrap_or_default();
    let cart_token =
        opt_str_field(&map, "cart_token").map_err(|e| Problem::from_field_errors([e]))?;

    // An unknown, expired or merged cart token is not an error (API.md): the guest
    // simply gets a fresh cart.
    let recovered_cart = match cart_token.filter(|t| domain::token::is_plausible_token(t)) {
        Some(token) => resolve_cart_token(&st, token, rid.as_deref())
            .await?
            .map(|cart_id| (cart_id, token.to_owned())),
        None => None,
    };
    let recovered = recovered_cart.is_some();
    let create_body = match &recovered_cart {
        Some((cart_id, token)) => {
            json!({ "kind": "guest", "cart_id": cart_id, "cart_token": token })
        }
        None => json!({ "kind": "guest" }),
    };
    // Not retried: a repeat would start a second session.
    let res = st
        .guards
        .sessions
        .call(Priority::Low, false, || {
            st.sessions
                .request(
                    reqwest::Method::POST,
                    "/internal/v1/sessions",
                    rid.as_deref(),
                )
                .json(&create_body)
                .send()
        })
        .await?;
    if res.status() != reqwest::StatusCode::CREATED {
        return Ok(upstream::relay_error(st.sessions.name, res).await);
    }
    let created: CreatedSession = res
        .json()
        .await
        .map_err(|e| upstream::failure(st.sessions.name, &e))?;

    let max_age = time::Duration::seconds(
        i64::try_from(st.cfg.cart_token_cookie_max_age.as_secs()).unwrap_or(i64::MAX),
    );
    let mut token_cookie = cookie(&st, CART_TOKEN_COOKIE, created.cart_token.clone());
    token_cookie.set_max_age(max_age);
    Ok(HttpResponse::Created()
        .cookie(cookie(&st, SESSION_COOKIE, created.session_token.clone()))
        .cookie(token_cookie)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "session_token": created.session_token,
            "expires_at": created.expires_at,
            "idle_timeout_seconds": created.idle_timeout_seconds,
            "cart_id": created.cart_id,
            "cart_token": created.cart_token,
            "recovered": recovered,
        })))
}

async fn resolve_cart_token(
    st: &AppState,
    token: &str,
    rid: Option<&str>,
) -> Result<Option<String>, Problem> {
    #[derive(Deserialize)]
    struct Resolved {
        cart_id: String,
    }
    let body = json!({ "cart_token": token });
    let res = st
        .guards
        .carts
        .call(Priority::Low, true, || {
            st.carts
                .request(
                    reqwest::Method::POST,
                    "/internal/v1/carts/resolve-token",
                    rid,
                )
                .json(&body)
                .send()
        })
        .await?;
    match res.status().as_u16() {
        200 => Ok(Some(
            res.json::<Resolved>()
                .await
                .map_err(|e| upstream::failure(st.carts.name, &e))?
                .cart_id,
        )),
        404 => Ok(None),
        status => {
            tracing::warn!(status, "cart-svc refused a cart-token lookup");
            Err(Problem::unavailable(1))
        }
    }
}

/// Who am I
///
/// The caller's session. Like every authenticated request, it slides the session's
/// idle timeout.
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "sessions",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The session.", body = api::WhoAmI, headers(("Cache-Control"))),
        (status = 401, response = api::Unauthorized),
        api::BackendErrors,
    ),
)]
pub(crate) async fn who_am_i(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let cred = caller::credential(&req)?;
    let id =
        caller::authenticate(&st, &cred, Priority::Normal, request_id(&req).as_deref()).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "kind": id.kind,
            "user_id": id.user_id,
            "cart_id": id.cart_id,
            "expires_at": id.expires_at,
            "last_active": id.last_active,
        })))
}

/// End this session
///
/// Ends the session (its token stops working at once) and clears the `cart_session`
/// cookie. The cart stays: its `cart_token` recovers it.
#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "sessions",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Ended.", headers(
            ("Set-Cookie" = String, description = "`cart_session` cleared (empty, expired)."),
        )),
        (status = 401, response = api::Unauthorized),
        (status = 403, response = api::Forbidden),
        (status = 500, response = api::InternalError),
        api::BackendErrors,
    ),
)]
pub(crate) async fn end_session(
    req: HttpRequest,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let cred = caller::credential(&req)?;
    caller::check_csrf(&req, &cred, &st.cfg.allowed_origins)?;
    let rid = request_id(&req);
    let token = match &cred {
        Credential::Session { token, .. } => token.clone(),
        Credential::Bearer(_) => {
            let id = caller::authenticate(&st, &cred, Priority::Normal, rid.as_deref()).await?;
            crate::accounts::end_user_session(&st, &id, rid.as_deref()).await?;
            return Ok(HttpResponse::NoContent().finish());
        }
    };
    let body = json!({ "session_token": token });
    let res = st
        .guards
        .sessions
        .call(Priority::Normal, true, || {
            st.sessions
                .request(
                    reqwest::Method::POST,
                    "/internal/v1/sessions/revoke",
                    rid.as_deref(),
                )
                .json(&body)
                .send()
        })
        .await?;
    match res.status().as_u16() {
        204 => {
            let mut gone = cookie(&st, SESSION_COOKIE, String::new());
            gone.make_removal();
            Ok(HttpResponse::NoContent().cookie(gone).finish())
        }
        404 => Err(caller::unauthenticated()),
        _ => Ok(upstream::relay_error(st.sessions.name, res).await),
    }
}

/// Request headers never forwarded: hop-by-hop ones (RFC 9110 §7.6.1), the caller's
/// credentials (backends trust the identity headers instead), and what the client
/// library sets itself.
const NOT_FORWARDED: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",
    "authorization",
    caller::SESSION_HEADER,
];

fn forwardable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !NOT_FORWARDED.contains(&n)
        && !identity::is_reserved_header(n)
        && n != "x-forwarded-for"
        && n != "x-forwarded-proto"
        // Replaced: the gateway continues the trace with a span of its own.
        && n != "traceparent"
}

/// Response headers never relayed: hop-by-hop ones and the length (the body is streamed
/// and re-framed).
fn relayable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !matches!(
        n,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// The caller's cart
///
/// An empty cart if nothing was written yet.
#[utoipa::path(
    get,
    path = "/api/v1/cart",
    tag = "cart",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, response = api::CartOk),
        (status = 401, response = api::Unauthorized),
        (status = 413, response = api::PayloadTooLarge),
        (status = 500, response = api::InternalError),
        api::BackendErrors,
    ),
)]
pub(crate) async fn get_cart(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    proxy_cart(req, payload, st).await
}

/// Empty the cart
#[utoipa::path(
    delete,
    path = "/api/v1/cart",
    tag = "cart",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    params(api::MutationHeaders),
    responses(
        (status = 200, response = api::CartChanged),
        api::CartMutationErrors,
    ),
)]
pub(crate) async fn clear_cart(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    proxy_cart(req, payload, st).await
}

/// Add to a line
///
/// Adds `quantity` to the line of `product_id`, creating the line if absent. Without
/// `If-Match` it applies to the latest version: two concurrent adds are both applied.
#[utoipa::path(
    post,
    path = "/api/v1/cart/items",
    tag = "cart",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    params(api::MutationHeaders),
    request_body = api::AddItemRequest,
    responses(
        (status = 200, response = api::CartChanged),
        api::CartMutationErrors,
        (status = 415, response = api::UnsupportedMediaType),
    ),
)]
pub(crate) async fn add_item(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    proxy_cart(req, payload, st).await
}

/// Set a line's quantity
///
/// Sets the quantity of the line of `product_id`, creating it if absent; 0 removes it.
/// A deployment may require `If-Match` here (then its absence → 428).
#[utoipa::path(
    put,
    path = "/api/v1/cart/items/{product_id}",
    tag = "cart",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    params(("product_id" = api::ProductId, Path, description = "The line's product."), api::MutationHeaders),
    request_body = api::SetItemRequest,
    responses(
        (status = 200, response = api::CartChanged),
        api::CartMutationErrors,
        (status = 415, response = api::UnsupportedMediaType),
        (status = 428, response = api::PreconditionRequired),
    ),
)]
pub(crate) async fn set_item(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    proxy_cart(req, payload, st).await
}

/// Remove a line
///
/// Removing an absent line is a 200 no-op (the version does not change).
#[utoipa::path(
    delete,
    path = "/api/v1/cart/items/{product_id}",
    tag = "cart",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    params(("product_id" = api::ProductId, Path, description = "The line's product."), api::MutationHeaders),
    responses(
        (status = 200, response = api::CartChanged),
        api::CartMutationErrors,
    ),
)]
pub(crate) async fn remove_item(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    proxy_cart(req, payload, st).await
}

/// Offline sync
///
/// Applies a batch of changes queued while offline, in order, in one transaction. Each
/// `op_id` takes effect at most once ever for this cart, so replaying a batch (whole or
/// in part) changes nothing. A malformed batch (unknown op type, bad or unknown field,
/// no ops or more than 100) → 400, nothing applied.
#[utoipa::path(
    post,
    path = "/api/v1/cart/ops",
    tag = "cart",
    security(("session_token" = []), ("session_cookie" = []), ("bearer" = [])),
    params(api::MutationHeaders),
    request_body = api::OpsRequest,
    responses(
        (status = 200, response = api::OpsOk),
        api::CartMutationErrors,
        (status = 415, response = api::UnsupportedMediaType),
    ),
)]
pub(crate) async fn sync_ops(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    proxy_cart(req, payload, st).await
}

/// Every cart route: authenticate, then forward to cart-svc with the caller's identity.
async fn proxy_cart(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let cred: Credential = caller::credential(&req)?;
    caller::check_csrf(&req, &cred, &st.cfg.allowed_origins)?;
    let rid = request_id(&req);
    let priority = Priority::of_request(req.method(), req.path());
    let id = caller::authenticate(&st, &cred, priority, rid.as_deref()).await?;
    let body = read_body(&req, payload, st.cfg.max_body_bytes).await?;

    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| Problem::for_status(StatusCode::METHOD_NOT_ALLOWED))?;
    tracing::debug!(session = %id.session_ref, "forwarding to cart-svc");
    // Safe to send twice: a read, or a change cart-svc deduplicates by its key.
    let retry_safe =
        method == reqwest::Method::GET || req.headers().contains_key("idempotency-key");
    let res = st
        .guards
        .carts
        .call(priority, retry_safe, || {
            cart_request(&st, &req, &id, method.clone(), rid.as_deref(), body.clone()).send()
        })
        .await?;
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut reply = HttpResponse::build(status);
    copy_headers(res.headers(), &mut reply);
    // Keep the backend's framing: a sized body stays sized (no chunked encoding for a
    // small JSON cart), while its bytes are still streamed, never buffered whole.
    if let Some(len) = res.content_length() {
        reply.no_chunking(len);
    }
    let peer = st.carts.name;
    let stream = res.bytes_stream().map_err(move |e| {
        tracing::warn!(peer, error = %e, "upstream body interrupted");
        e
    });
    Ok(reply.streaming(stream))
}

/// The call to cart-svc for a public cart request: the client's headers minus
/// hop-by-hop, credentials and anything reserved, plus the caller's identity.
fn cart_request(
    st: &AppState,
    req: &HttpRequest,
    id: &caller::Identity,
    method: reqwest::Method,
    rid: Option<&str>,
    body: actix_web::web::Bytes,
) -> reqwest::RequestBuilder {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let read = method == reqwest::Method::GET;
    let mut out = st.carts.request(method, path, rid);
    if read {
        out = out.timeout(st.cfg.read_timeout);
    }
    for (name, value) in req.headers() {
        if forwardable(name) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    out = out
        .header(KIND_HEADER, id.kind.as_str())
        .header(CART_ID_HEADER, id.cart_id.as_str());
    if let Some(h) = &id.cart_token_hash {
        out = out.header(CART_TOKEN_HASH_HEADER, h.as_str());
    }
    if let Some(u) = &id.user_id {
        out = out.header(USER_ID_HEADER, u.as_str());
    }
    out = forwarded_headers(req, out);
    if !body.is_empty() {
        out = out.body(body);
    }
    out
}

fn copy_headers(from: &reqwest::header::HeaderMap, to: &mut actix_web::HttpResponseBuilder) {
    for (name, value) in from {
        let Ok(name) = HeaderName::from_bytes(name.as_str().as_bytes()) else {
            continue;
        };
        if relayable(&name) {
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                to.append_header((name, v));
            }
        }
    }
}

/// `X-Forwarded-For` (the chain so far plus the peer) and `X-Forwarded-Proto`.
fn forwarded_headers(req: &HttpRequest, out: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let headers: &HeaderMap = req.headers();
    let peer = req.peer_addr().map(|a| a.ip().to_string());
    let chain = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let xff = match (chain, peer) {
        (Some(c), Some(p)) => format!("{c}, {p}"),
        (Some(c), None) => c.to_owned(),
        (None, Some(p)) => p,
        (None, None) => String::new(),
    };
    let mut out = out.header(
        "x-forwarded-proto",
        req.connection_info().scheme().to_owned(),
    );
    if !xff.is_empty() {
        out = out.header("x-forwarded-for", xff);
    }
    out
}
