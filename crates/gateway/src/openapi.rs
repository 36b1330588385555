//! The OpenAPI 3.1 document of the public API (API.md), served at `GET /openapi.json`,
//! and its Swagger UI at `GET /docs`.
//!
//! The operations are the `#[utoipa::path]` annotations on the handlers in `routes.rs`
//! (and, for the routes svc-kit serves on every service, on the stand-ins in [`ops`]).
//! The types below mirror the wire shapes **for documentation only**: the gateway forwards
//! cart-svc's bytes unchanged and builds its session bodies with `json!`, so nothing is
//! ever (de)serialised through them. Their serde attributes are there because utoipa
//! reads them (`deny_unknown_fields` is what renders `additionalProperties: false`).
//! When a wire shape changes (cart-svc's `view.rs`, svc-kit's `Problem`), change it here.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use serde::{Deserialize, Serialize};
// The error body the gateway sends (`Problem` below is its documentation).
use svc_kit::Problem as ProblemBody;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Components, ObjectBuilder, OpenApi as Document, Ref, RefOr, Required, Response, Type,
};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, PartialSchema, ToResponse, ToSchema};
use utoipa_swagger_ui::Config;

use crate::{accounts, routes};

/// Where the document and the docs page are served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Shopping cart API",
        version = "1",
        description = include_str!("openapi.md"),
    ),
    paths(
        routes::start_session,
        routes::who_am_i,
        routes::end_session,
        routes::get_cart,
        routes::clear_cart,
        routes::add_item,
        routes::set_item,
        routes::remove_item,
        routes::sync_ops,
        accounts::register,
        accounts::login,
        accounts::refresh,
        accounts::logout,
        accounts::jwks,
        ops::livez,
        ops::readyz,
        ops::metrics,
        openapi_document,
        docs_page,
        docs_asset,
    ),
    components(
        // Schemas named only by responses or `ref(...)`; the paths' own are collected.
        schemas(Cart, OpsResponse, StartSessionRequest, Problem),
        responses(
            CartOk,
            CartChanged,
            OpsOk,
            BadRequest,
            Unauthorized,
            Forbidden,
            CartConflict,
            PreconditionFailed,
            PayloadTooLarge,
            UnsupportedMediaType,
            CartRejected,
            PreconditionRequired,
            InternalError,
            BadGateway,
            ServiceUnavailable,
            GatewayTimeout,
            EmailTaken,
            TooManyRequests,
        ),
    ),
    modifiers(&Conventions),
    tags(
        (name = "sessions", description = "Guest sessions: the credential every other call needs."),
        (name = "accounts", description = "Register, log in (a guest's cart merges into the account's), refresh and log out. The access token is an EdDSA JWT: send it as `Authorization: Bearer`."),
        (name = "cart", description = "The caller's cart. Every response carries `ETag: \"<version>\"`; mutations accept `If-Match` and `Idempotency-Key`."),
        (name = "operations", description = "Health, metrics and this documentation. No credential needed."),
    ),
)]
pub struct ApiDoc;

/// The document, serialised once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("an OpenAPI document of plain strings and numbers serialises")
});

/// The document as served.
pub fn document() -> &'static str {
    &DOCUMENT
}

/// `/openapi.json` and the docs page (its assets are compiled into the binary).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(DOCUMENT_PATH, web::get().to(openapi_document))
        .route(DOCS_PATH, web::get().to(docs_page))
        // `{file:.*}` also matches the empty tail: `/docs/` is the page too.
        .route("/docs/{file:.*}", web::get().to(docs_asset));
}

/// This OpenAPI document
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object, content_type = "application/json")),
)]
pub(crate) async fn openapi_document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

/// API documentation (Swagger UI)
///
/// An interactive page over this document. Its scripts and styles are served by the
/// gateway itself (below `/docs/`), never from a CDN.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    responses((status = 200, description = "The Swagger UI page.", body = String, content_type = "text/html")),
)]
pub(crate) async fn docs_page() -> HttpResponse {
    match swagger_file("index.html") {
        // The page links its assets relatively (`./swagger-ui.css`); served at `/docs`
        // rather than `/docs/`, those links must still resolve below `/docs/`.
        Some((content_type, bytes)) => HttpResponse::Ok().content_type(content_type).body(
            String::from_utf8_lossy(&bytes).replacen(
                "<head>",
                "<head>\n    <base href=\"/docs/\" />",
                1,
            ),
        ),
        None => ProblemBody::internal().to_response(),
    }
}

/// A Swagger UI asset
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "operations",
    params(("file" = String, Path, description = "An asset of the docs page, e.g. `swagger-ui.css`.")),
    responses(
        (status = 200, description = "The asset, with its media type.", body = String, content_type = "*/*"),
        (status = 404, description = "No such asset (`not-found`).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn docs_asset(file: web::Path<String>) -> HttpResponse {
    if file.is_empty() {
        return docs_page().await;
    }
    match swagger_file(&file) {
        Some((content_type, bytes)) => HttpResponse::Ok()
            .content_type(content_type)
            .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
            .body(bytes),
        None => ProblemBody::not_found("no such documentation asset").to_response(),
    }
}

/// A file of the Swagger UI bundled by `utoipa-swagger-ui` (its `vendored` feature: the
/// files come from a crate at build time and are compiled in), and its media type.
fn swagger_file(path: &str) -> Option<(String, Bytes)> {
    // Our document, and no badge from the public validator service (an outside call
    // from every reader's browser).
    static CONFIG: LazyLock<Arc<Config<'static>>> =
        LazyLock::new(|| Arc::new(Config::new([DOCUMENT_PATH]).validator_url("none")));
    match utoipa_swagger_ui::serve(path, Arc::clone(&CONFIG)) {
        Ok(file) => file.map(|f| {
            let bytes = match f.bytes {
                Cow::Borrowed(b) => Bytes::from_static(b),
                // The initializer, with the configuration filled in.
                Cow::Owned(b) => Bytes::from(b),
            };
            (f.content_type, bytes)
        }),
        Err(e) => {
            tracing::error!(error = %e, path, "cannot render a Swagger UI file");
            None
        }
    }
}

/// The routes every service gets from `svc_kit::ops`. Their handlers live there, so these
/// stand-ins carry their documentation; they are never called.
#[allow(dead_code)]
pub(crate) mod ops {
    use super::{Problem, Status};

    /// Liveness
    ///
    /// The process is up.
    #[utoipa::path(
        get,
        path = "/livez",
        tag = "operations",
        responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`.", body = Status)),
    )]
    pub(crate) fn livez() {}

    /// Readiness
    ///
    /// This instance can serve: the services every guest request needs (session-svc,
    /// cart-svc) answer, and it is not shutting down.
    #[utoipa::path(
        get,
        path = "/readyz",
        tag = "operations",
        responses(
            (status = 200, description = "Ready: `{\"status\": \"ready\"}`.", body = Status),
            (status = 503, description = "Not ready (`not-ready`); `detail` says which check failed.", body = Problem, content_type = "application/problem+json", headers(("Retry-After"))),
        ),
    )]
    pub(crate) fn readyz() {}

    /// Metrics
    ///
    /// Prometheus text exposition format: request latency by route template, process
    /// metrics.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "operations",
        responses((status = 200, description = "The metrics.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
    )]
    pub(crate) fn metrics() {}
}

// ---------------------------------------------------------------------------------------
// Schemas: the wire shapes (documentation only, see the module comment).

/// A product id: 1 to 64 characters of `[A-Za-z0-9._:-]` (the length limit is
/// configurable).
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(
    pattern = "^[A-Za-z0-9._:-]{1,64}$",
    min_length = 1,
    max_length = 64,
    example = "sku-123"
)]
pub struct ProductId(pub String);

/// A client-chosen offline operation id: 1 to 64 visible ASCII characters (a UUID is
/// best). Each one takes effect at most once per cart, ever.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(
    pattern = "^[!-~]{1,64}$",
    min_length = 1,
    max_length = 64,
    example = "0190b0e4-5d7a-7c3e-8f00-2b1c9d4e6a10"
)]
pub struct OpId(pub String);

/// A cart, as every cart response carries it (cart-svc's `view.rs`).
#[derive(Serialize, ToSchema)]
pub struct Cart {
    #[schema(format = "uuid")]
    pub cart_id: String,
    /// Grows by one with every change that alters the cart; a no-op does not bump it.
    /// The `ETag` header is this number in quotes.
    #[schema(minimum = 0, example = 7)]
    pub version: i64,
    pub owner: CartOwner,
    /// The lines, in the order they were first added.
    pub items: Vec<CartItem>,
    /// The sum of the lines' quantities.
    #[schema(minimum = 0, example = 2)]
    pub item_count: u64,
    /// The number of distinct lines (at most 100 by default).
    #[schema(minimum = 0, example = 1)]
    pub line_count: u64,
    /// When the cart last changed; `null` until its first change.
    #[schema(format = DateTime, required = true)]
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CartOwner {
    Guest,
    User,
}

/// One line of a cart.
#[derive(Serialize, ToSchema)]
pub struct CartItem {
    pub product_id: ProductId,
    /// At least 1, at most 99 by default (the per-line limit is configurable).
    #[schema(minimum = 1, example = 2)]
    pub quantity: u32,
    /// When the line was created.
    #[schema(format = DateTime)]
    pub added_at: String,
    /// When the line's quantity last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// Optionally, the token of an earlier guest cart to re-attach (recovery after the
/// session expired). An unknown, expired or already merged token is not an error: a
/// fresh empty cart is attached and `recovered` is false.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSessionRequest {
    /// `null` is the same as leaving it out.
    #[serde(default)]
    pub cart_token: Option<String>,
}

/// A new guest session.
#[derive(Serialize, ToSchema)]
pub struct Session {
    /// The credential: send it as `X-Session-Token` (the `cart_session` cookie carries
    /// it too).
    pub session_token: String,
    /// When the session expires unless it is used again before then.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The sliding idle timeout.
    #[schema(example = 1800)]
    pub idle_timeout_seconds: u64,
    #[schema(format = "uuid")]
    pub cart_id: String,
    /// Keep it to recover this cart after the session expired (`POST /api/v1/sessions`
    /// with `cart_token`); the `cart_token` cookie carries it too.
    pub cart_token: String,
    /// True when the request's `cart_token` re-attached an earlier cart.
    pub recovered: bool,
}

/// Email and password. The email is trimmed and lower-cased.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[schema(format = "email", max_length = 254, example = "ann@example.com")]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

/// The new account.
#[derive(Serialize, ToSchema)]
pub struct Registered {
    #[schema(format = "uuid")]
    pub user_id: String,
    /// As stored: trimmed and lower-cased.
    pub email: String,
}

/// The account's cart after login; `merge_dropped` lists the guest lines that did not
/// fit under the line limit (present when this login merged a guest cart).
#[derive(Serialize, ToSchema)]
pub struct LoginCart {
    #[serde(flatten)]
    pub cart: Cart,
    pub merge_dropped: Option<Vec<ProductId>>,
}

/// A logged-in device's tokens, and the account's cart.
#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: u64,
    /// Exchange it at `POST /api/v1/auth/refresh` (once: it rotates).
    pub refresh_token: String,
    #[schema(format = "uuid")]
    pub user_id: String,
    pub cart: LoginCart,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A new token pair; the refresh token presented stopped working.
#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    #[schema(example = 900)]
    pub expires_in: u64,
    pub refresh_token: String,
}

/// The public keys that verify access tokens (RFC 7517), each with its `kid`.
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Serialize, ToSchema)]
pub struct Jwk {
    #[schema(example = "OKP")]
    pub kty: String,
    #[schema(example = "Ed25519")]
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[schema(example = "EdDSA")]
    pub alg: String,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    pub use_: String,
}

/// Who the caller is.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    pub kind: SessionKind,
    /// The account, for a logged-in user; `null` for a guest.
    #[schema(format = "uuid", required = true)]
    pub user_id: Option<String>,
    #[schema(format = "uuid")]
    pub cart_id: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime)]
    pub last_active: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Guest,
    User,
}

/// Adds `quantity` to the line of `product_id`, creating it if absent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemRequest {
    pub product_id: ProductId,
    /// A JSON integer, at least 1. A line holds at most 99 (default) after the change:
    /// more → 422, nothing changed.
    #[schema(minimum = 1, example = 2)]
    pub quantity: i64,
}

/// Sets the line's quantity; 0 removes the line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetItemRequest {
    /// A JSON integer, at least 0 (0 removes the line); above the per-line limit (99 by
    /// default) → 422, nothing changed.
    #[schema(minimum = 0, example = 5)]
    pub quantity: i64,
}

/// Changes a client queued while offline, applied in order in one transaction.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsRequest {
    /// The cart version the client last saw. A `set` or `remove` of a line that changed
    /// after it is a `conflict` (not applied); `add`s are rebased onto the current cart.
    #[schema(minimum = 0, example = 7)]
    pub base_version: i64,
    #[schema(min_items = 1, max_items = 100)]
    pub ops: Vec<Op>,
}

/// One queued change; `type` tells which.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(discriminator(property_name = "type", mapping(
    ("add" = "#/components/schemas/AddOp"),
    ("set" = "#/components/schemas/SetOp"),
    ("remove" = "#/components/schemas/RemoveOp"),
)))]
pub enum Op {
    Add(AddOp),
    Set(SetOp),
    Remove(RemoveOp),
}

/// Adds `quantity` to the line (rebased onto the current cart); `rejected` if it would
/// break a limit.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddOp {
    pub op_id: OpId,
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: AddOpType,
    pub product_id: ProductId,
    #[schema(minimum = 1, example = 2)]
    pub quantity: i64,
}

/// Sets the line's quantity (0 removes it); a `conflict` if the line changed after
/// `base_version`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOp {
    pub op_id: OpId,
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: SetOpType,
    pub product_id: ProductId,
    #[schema(minimum = 0, example = 5)]
    pub quantity: i64,
}

/// Removes the line (removing an absent, unchanged line is `applied`); a `conflict` if
/// the line changed after `base_version`. Takes no `quantity`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveOp {
    pub op_id: OpId,
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: RemoveOpType,
    pub product_id: ProductId,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddOpType {
    Add,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SetOpType {
    Set,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RemoveOpType {
    Remove,
}

/// The cart after the batch, and what became of each op.
#[derive(Serialize, ToSchema)]
pub struct OpsResponse {
    pub cart: Cart,
    /// One per op, in the order of the ops.
    pub results: Vec<OpResult>,
}

#[derive(Serialize, ToSchema)]
pub struct OpResult {
    pub op_id: OpId,
    pub status: OpStatus,
    /// Why, for anything but `applied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub detail: Option<String>,
}

/// `applied`: took effect (possibly as a no-op). `duplicate`: this op_id was already
/// processed for this cart (now or in an earlier batch); nothing applied. `conflict`: a
/// `set` or `remove` of a line that changed after `base_version`; not applied.
/// `rejected`: would break a cart limit; not applied.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OpStatus {
    Applied,
    Duplicate,
    Conflict,
    Rejected,
}

/// An RFC 9457 problem: the body of every error, `application/problem+json`.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// `/problems/<slug>`: the kind of problem; the slugs are listed in the API's
    /// description.
    #[serde(rename = "type")]
    #[schema(format = "uri-reference", example = "/problems/validation-error")]
    pub kind: String,
    /// A short summary of the kind of problem.
    #[schema(example = "Invalid request")]
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599, example = 400)]
    pub status: u16,
    /// What went wrong this time, for a human.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub detail: Option<String>,
    /// One entry per invalid field (400 `validation-error`, some 422s).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// On 412 `precondition-failed` only: the current cart, so the client can redo its
    /// change on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cart: Option<Cart>,
}

#[derive(Serialize, ToSchema)]
pub struct FieldProblem {
    /// The field: a body member (`quantity`, `ops[3].quantity`), a header
    /// (`Idempotency-Key`) or the path's `product_id`.
    #[schema(example = "quantity")]
    pub field: String,
    #[schema(example = "must be an integer")]
    pub message: String,
}

/// `{"status": "..."}` of `/livez` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: String,
}

// ---------------------------------------------------------------------------------------
// Request headers.

/// The optional request headers of every cart mutation.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct MutationHeaders {
    /// Apply the change only if the cart is still at this version: its `ETag`
    /// (`"7"`), or `*` for any. Otherwise 412 with the current cart; nothing changed.
    #[param(rename = "If-Match", required = false, example = "\"7\"")]
    pub if_match: String,
    /// Makes a retry safe: the first outcome is stored (at least 24 h, per cart) and
    /// replayed to a retry of the same request with `Idempotent-Replayed: true`. 1–255
    /// visible ASCII characters, else 400.
    #[param(
        rename = "Idempotency-Key",
        required = false,
        pattern = "^[!-~]{1,255}$",
        min_length = 1,
        max_length = 255,
        example = "0190b0e4-5d7a-7c3e-8f00-2b1c9d4e6a10"
    )]
    pub idempotency_key: String,
}

// ---------------------------------------------------------------------------------------
// Responses shared by several operations (components.responses). The headers they name
// are filled in from `SHARED_HEADERS` by `Conventions`.

/// The caller's cart.
#[derive(ToResponse)]
#[response(headers(("ETag"), ("Cache-Control")))]
pub struct CartOk(pub Cart);

/// The whole cart after the change (or the stored outcome of an earlier request with the
/// same `Idempotency-Key`).
#[derive(ToResponse)]
#[response(headers(("ETag"), ("Cache-Control"), ("Idempotent-Replayed")))]
pub struct CartChanged(pub Cart);

/// The cart after the batch and one result per op (or the stored outcome of an earlier
/// request with the same `Idempotency-Key`).
#[derive(ToResponse)]
#[response(headers(("ETag"), ("Cache-Control"), ("Idempotent-Replayed")))]
pub struct OpsOk(pub OpsResponse);

/// `validation-error` (`errors` names each bad field, header or path segment) or
/// `malformed-request` (not JSON, not an object, no body). Nothing changed.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct BadRequest(pub Problem);

/// `unauthorized`: no session token, or an unknown, expired or revoked session.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Unauthorized(pub Problem);

/// `forbidden`: authenticated by the cookie, from another site (`Sec-Fetch-Site:
/// cross-site`, or an `Origin` that is neither ours nor allowed).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct Forbidden(pub Problem);

/// `cart-not-active`: the cart was merged into an account or closed (start a new
/// session); or `idempotency-key-in-flight`: a request with this key is still being
/// processed (retry after `Retry-After`). Nothing changed.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("Retry-After"), ("Idempotent-Replayed")))]
pub struct CartConflict(pub Problem);

/// `precondition-failed`: `If-Match` names another version. The current cart is in the
/// `cart` member and its version in `ETag`; nothing changed.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("ETag"), ("Idempotent-Replayed")))]
pub struct PreconditionFailed(pub Problem);

/// `payload-too-large`: the body is over the limit (16 KiB by default).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PayloadTooLarge(pub Problem);

/// `unsupported-media-type`: send the body as `application/json`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct UnsupportedMediaType(pub Problem);

/// `cart-limit-exceeded`: the change would take a line above 99 or the cart above 100
/// lines (defaults); or `idempotency-key-reused`: the key was first used with a different
/// request. Nothing changed.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("Idempotent-Replayed")))]
pub struct CartRejected(pub Problem);

/// `precondition-required`: this deployment requires `If-Match` on `PUT`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct PreconditionRequired(pub Problem);

/// `internal-error`: an unexpected failure; it was logged.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct InternalError(pub Problem);

/// `bad-gateway`: a backend service is unreachable (then with `Retry-After`) or answered
/// unusably.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("Retry-After")))]
pub struct BadGateway(pub Problem);

/// `service-unavailable`: a dependency is temporarily unavailable; retry after
/// `Retry-After`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("Retry-After")))]
pub struct ServiceUnavailable(pub Problem);

/// `gateway-timeout`: a backend service did not answer in time; retry after
/// `Retry-After`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("Retry-After")))]
pub struct GatewayTimeout(pub Problem);

/// `email-taken`: an account with this email exists.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct EmailTaken(pub Problem);

/// `rate-limited`: this client sent more than its rate limit (see `RateLimit` and
/// `RateLimit-Policy`); or, on login, `login-throttled`: too many failed logins for this
/// account (even the right password is refused until then). Retry after `Retry-After`
/// seconds.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json", headers(("Retry-After")))]
pub struct TooManyRequests(pub Problem);

/// A backend failed: what every operation that calls one can answer.
#[derive(IntoResponses)]
pub enum BackendErrors {
    #[response(status = 502)]
    BadGateway(#[ref_response] BadGateway),
    #[response(status = 503)]
    ServiceUnavailable(#[ref_response] ServiceUnavailable),
    #[response(status = 504)]
    GatewayTimeout(#[ref_response] GatewayTimeout),
}

/// The errors of every cart mutation (those with a body can also answer 415, and `PUT`
/// 428).
#[derive(IntoResponses)]
pub enum CartMutationErrors {
    #[response(status = 400)]
    BadRequest(#[ref_response] BadRequest),
    #[response(status = 401)]
    Unauthorized(#[ref_response] Unauthorized),
    #[response(status = 403)]
    Forbidden(#[ref_response] Forbidden),
    #[response(status = 409)]
    CartConflict(#[ref_response] CartConflict),
    #[response(status = 412)]
    PreconditionFailed(#[ref_response] PreconditionFailed),
    #[response(status = 413)]
    PayloadTooLarge(#[ref_response] PayloadTooLarge),
    #[response(status = 422)]
    CartRejected(#[ref_response] CartRejected),
    #[response(status = 500)]
    InternalError(#[ref_response] InternalError),
    #[response(status = 502)]
    BadGateway(#[ref_response] BadGateway),
    #[response(status = 503)]
    ServiceUnavailable(#[ref_response] ServiceUnavailable),
    #[response(status = 504)]
    GatewayTimeout(#[ref_response] GatewayTimeout),
}

// ---------------------------------------------------------------------------------------
// What holds for every operation, applied once here rather than on each annotation.

/// Response headers defined once (components.headers): a response that names one of
/// these in its `headers(...)` gets a reference to the definition here.
fn shared_headers() -> [(&'static str, Header); 5] {
    let header = |schema: ObjectBuilder, description: &str| {
        HeaderBuilder::new()
            .schema(Some(schema))
            .description(Some(description))
            .build()
    };
    let string = || ObjectBuilder::new().schema_type(Type::String);
    [
        (
            "X-Request-Id",
            header(
                string(),
                "The request's id, for support and logs: the client's own `X-Request-Id` when it sent an acceptable one (1–128 visible ASCII characters), a generated one otherwise.",
            ),
        ),
        (
            "ETag",
            header(
                string().pattern(Some(r#"^"[0-9]+"$"#)),
                "The cart's version as a strong entity tag, e.g. `\"7\"`: send it back in `If-Match`.",
            ),
        ),
        (
            "Retry-After",
            header(
                ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)),
                "Seconds to wait before retrying.",
            ),
        ),
        (
            "Idempotent-Replayed",
            header(
                string().enum_values(Some(["true"])),
                "`true` when this is the stored outcome of an earlier request with the same `Idempotency-Key` (nothing changed now); absent otherwise.",
            ),
        ),
        (
            "Cache-Control",
            header(
                string(),
                "`no-store`: a cart or a session is private and changes often.",
            ),
        ),
    ]
}

struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Components::new);
        components.add_security_scheme(
            "session_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Session-Token",
                "The session token from `POST /api/v1/sessions`.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The access token from `POST /api/v1/auth/login` or `/refresh` (EdDSA JWT, 15 minutes). Its session must be alive: logout ends it at once.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "cart_session",
                "The cookie `POST /api/v1/sessions` sets. Unsafe requests authenticated by it must come from the same site (else 403).",
            ))),
        );
        components.parameters.insert(
            "X-Request-Id".to_owned(),
            ParameterBuilder::new()
                .name("X-Request-Id")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "An id for this request, echoed in the response's `X-Request-Id` and in the logs (1–128 visible ASCII characters; anything else is replaced by a generated id).",
                ))
                .schema(Some(String::schema()))
                .build()
                .into(),
        );
        let shared = shared_headers();
        components.headers.extend(
            shared
                .iter()
                .map(|(name, header)| ((*name).to_owned(), RefOr::T(header.clone()))),
        );
        let names: Vec<&str> = shared.iter().map(|(name, _)| *name).collect();

        // Every API operation can be rate limited (the `edge` middleware runs before
        // any handler).
        for (path, item) in doc.paths.paths.iter_mut() {
            if path.starts_with("/api/") {
                for op in operations(item) {
                    op.responses
                        .responses
                        .entry("429".to_owned())
                        .or_insert_with(|| {
                            RefOr::Ref(Ref::new("#/components/responses/TooManyRequests"))
                        });
                }
            }
        }
        let mut ops: Vec<&mut Operation> =
            doc.paths.paths.values_mut().flat_map(operations).collect();
        for op in &mut ops {
            op.parameters
                .get_or_insert_with(Vec::new)
                .push(RefOr::Ref(Ref::new("#/components/parameters/X-Request-Id")));
        }
        let responses = components.responses.values_mut().chain(
            ops.into_iter()
                .flat_map(|op| op.responses.responses.values_mut()),
        );
        for response in responses {
            if let RefOr::T(response) = response {
                share_headers(response, &names);
            }
        }
    }
}

/// Every response carries `X-Request-Id`; the shared headers it names point at their
/// one definition.
fn share_headers(response: &mut Response, shared: &[&str]) {
    response
        .headers
        .insert("X-Request-Id".to_owned(), header_ref("X-Request-Id"));
    for (name, header) in response.headers.iter_mut() {
        if shared.contains(&name.as_str()) {
            *header = header_ref(name);
        }
    }
}

fn header_ref(name: &str) -> RefOr<Header> {
    RefOr::Ref(Ref::new(format!("#/components/headers/{name}")))
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}
