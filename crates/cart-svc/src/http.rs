//! cart-svc's HTTP surface. The cart paths mirror the public API (the gateway forwards
//! them unchanged, with the caller's identity); everything here requires the internal
//! credential.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::{CartOp, FieldError, ProductId, Quantity};
use serde_json::json;
use svc_kit::body::{int_field, read_body, require_object, str_field};
use svc_kit::internal::require_internal_token;
use svc_kit::Problem;

use crate::cache::Snapshot;
use crate::caller::Caller;
use crate::store::Precondition;
use crate::view::{self, CartView};
use crate::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/cart")
            .wrap(from_fn(require_internal_token))
            .route("", web::get().to(get_cart))
            .route("", web::delete().to(clear_cart))
            .route("/items", web::post().to(add_item))
            .route("/items/{product_id}", web::put().to(set_item))
            .route("/items/{product_id}", web::delete().to(remove_item)),
    )
    .service(
        web::scope("/internal/v1")
            .wrap(from_fn(require_internal_token))
            .route("/carts/resolve-token", web::post().to(resolve_token)),
    );
}

/// Served from the cache when it holds the guest's cart, else from Postgres (and the
/// snapshot cached for the next read).
async fn get_cart(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    if let Caller::Guest { cart_id, .. } = &caller {
        if let Some(hit) = st.cache.get(*cart_id).await {
            return Ok(snapshot_response(&hit));
        }
    }
    let cart = st.store.read(&caller).await?;
    let snapshot = snapshot(&cart);
    st.cache.put(cart.id, &snapshot, false).await;
    Ok(snapshot_response(&snapshot))
}

async fn add_item(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["product_id", "quantity"])?;
    let product = str_field(&map, "product_id").and_then(|s| ProductId::parse(s, &st.limits));
    let quantity = int_field(&map, "quantity").and_then(Quantity::parse_add);
    let (product, quantity) = both(product, quantity)?;
    change(&req, &st, &caller, CartOp::Add(product, quantity)).await
}

async fn set_item(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    if st.require_if_match_on_put && !req.headers().contains_key(header::IF_MATCH) {
        return Err(Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition-required",
            "Precondition required",
        )
        .detail("this server requires If-Match with the cart's ETag on PUT"));
    }
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["quantity"])?;
    let product = ProductId::parse(&path, &st.limits);
    let quantity = int_field(&map, "quantity").and_then(Quantity::parse_set);
    let (product, quantity) = both(product, quantity)?;
    change(&req, &st, &caller, CartOp::Set(product, quantity)).await
}

async fn remove_item(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    let product =
        ProductId::parse(&path, &st.limits).map_err(|e| Problem::from_field_errors([e]))?;
    change(&req, &st, &caller, CartOp::Remove(product)).await
}

async fn clear_cart(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    change(&req, &st, &caller, CartOp::Clear).await
}

async fn change(
    req: &HttpRequest,
    st: &AppState,
    caller: &Caller,
    op: CartOp,
) -> Result<HttpResponse, Problem> {
    let precondition = precondition(req);
    let changed = st
        .store
        .change(caller, op, &precondition, &st.limits)
        .await?;
    let snapshot = snapshot(&changed.cart);
    if changed.effect.changed() {
        // Before answering, so this client's next read sees at least this version.
        st.cache.put(changed.cart.id, &snapshot, true).await;
    }
    Ok(snapshot_response(&snapshot))
}

/// `If-Match` as RFC 9110 §13.1.1 reads it: `*` matches any current cart; otherwise a
/// list of strong entity tags. Weak or unparseable tags match nothing (strong
/// comparison), so they lead to 412, never to an unconditional write.
fn precondition(req: &HttpRequest) -> Precondition {
    let Some(raw) = req.headers().get(header::IF_MATCH) else {
        return Precondition::None;
    };
    let Ok(raw) = raw.to_str() else {
        return Precondition::Versions(Vec::new());
    };
    if raw.trim() == "*" {
        return Precondition::None;
    }
    Precondition::Versions(
        raw.split(',')
            .filter_map(|tag| {
                tag.trim()
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|t| t.parse::<i64>().ok())
            })
            .collect(),
    )
}

fn both<A, B>(a: Result<A, FieldError>, b: Result<B, FieldError>) -> Result<(A, B), Problem> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err(Problem::from_field_errors(
            a.err().into_iter().chain(b.err()),
        )),
    }
}

/// The cart's representation, serialised once for both the response and the cache.
pub fn snapshot(cart: &domain::Cart) -> Snapshot {
    Snapshot {
        version: cart.version,
        // Serialising plain strings and numbers cannot fail.
        body: serde_json::to_vec(&CartView::from(cart))
            .unwrap_or_default()
            .into(),
    }
}

pub fn snapshot_response(s: &Snapshot) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ETAG, view::etag(s.version)))
        // A cart is private to its owner and changes often: no shared or stale copies.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .content_type("application/json")
        .body(s.body.clone())
}

/// Which active guest cart a cart token recovers (used by the gateway when a guest
/// starts a session with `cart_token`).
async fn resolve_token(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["cart_token"])?;
    let token = str_field(&map, "cart_token").map_err(|e| Problem::from_field_errors([e]))?;
    if !domain::token::is_plausible_token(token) {
        return Err(Problem::not_found("no active cart for this token"));
    }
    match st
        .store
        .find_by_token_hash(&domain::token::hash_token(token))
        .await?
    {
        Some(cart_id) => Ok(HttpResponse::Ok().json(json!({ "cart_id": cart_id.to_string() }))),
        None => Err(Problem::not_found("no active cart for this token")),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn pre(v: &str) -> Precondition {
        precondition(
            &TestRequest::default()
                .insert_header((header::IF_MATCH, v))
                .to_http_request(),
        )
    }

    #[test]
    fn if_match_parsing() {
        assert_eq!(pre("\"3\""), Precondition::Versions(vec![3]));
        assert_eq!(pre("\"3\", \"4\""), Precondition::Versions(vec![3, 4]));
        assert_eq!(pre("*"), Precondition::None);
        assert_eq!(pre("W/\"3\""), Precondition::Versions(vec![]));
        assert_eq!(pre("3"), Precondition::Versions(vec![]));
        assert!(!pre("garbage").allows(0));
    }
}
