//! cart-svc's HTTP surface. The cart paths mirror the public API (the gateway forwards
//! them unchanged, with the caller's identity); everything here requires the internal
//! credential.
//!
//! A mutation runs as one unit of work (`store::CartTx`): claim the idempotency key,
//! lock the cart, replay a stored outcome or apply the change, store the outcome with
//! the change, commit, refresh the cache, answer. Every step against Postgres is bounded
//! by `CART_DB_DEADLINE_MS`, so a stalled database turns into a quick 503.

use std::future::Future;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::offline::{BatchOutcome, OfflineChange, OfflineOp, OpId};
use domain::{CartOp, FieldError, ProductId, Quantity};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use svc_kit::body::{int_field, read_body, require_object, str_field, JsonObject};
use svc_kit::internal::require_internal_token;
use svc_kit::Problem;

use crate::cache::Snapshot;
use crate::caller::Caller;
use crate::store::{MergeResult, Precondition, StoredOutcome};
use crate::view::{self, CartView};
use crate::AppState;

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The most operations one offline batch may carry (API.md).
pub const MAX_BATCH_OPS: usize = 100;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/cart")
            .wrap(from_fn(require_internal_token))
            .route("", web::get().to(get_cart))
            .route("", web::delete().to(clear_cart))
            .route("/items", web::post().to(add_item))
            .route("/items/{product_id}", web::put().to(set_item))
            .route("/items/{product_id}", web::delete().to(remove_item))
            .route("/ops", web::post().to(sync_ops)),
    )
    .service(
        web::scope("/internal/v1")
            .wrap(from_fn(require_internal_token))
            .route("/carts/resolve-token", web::post().to(resolve_token))
            .route("/carts/merge", web::post().to(merge)),
    );
}

/// Served from the cache when it holds the caller's cart, else from Postgres (and the
/// snapshot cached for the next read). A user's cart is looked up in the cache by the
/// cart id of their session (see `cache.rs` for why that entry is theirs).
async fn get_cart(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    let session_cart = match &caller {
        Caller::Guest { cart_id, .. } => {
            if let Some(hit) = st.cache.get(*cart_id).await {
                return Ok(snapshot_response(&hit));
            }
            None
        }
        Caller::User { user_id } => {
            let session_cart = Caller::session_cart(&req);
            if let Some(cart_id) = session_cart {
                if let Some(hit) = st.cache.get_for_user(cart_id, *user_id).await {
                    return Ok(snapshot_response(&hit));
                }
            }
            session_cart
        }
    };
    let cart = within_deadline(&st, async { Ok(st.store.read(&caller).await?) }).await?;
    let snapshot = snapshot(&cart);
    st.cache.put(cart.id, &snapshot, false).await;
    forget_replaced_cart(&st, session_cart, cart.id).await;
    Ok(snapshot_response(&snapshot))
}

/// A user whose session names another cart than their active one (it was deleted after
/// its retention, and a new one began): that cart's entry must not answer their reads.
async fn forget_replaced_cart(
    st: &AppState,
    session_cart: Option<domain::CartId>,
    active: domain::CartId,
) {
    if let Some(old) = session_cart.filter(|c| *c != active) {
        st.cache.delete(old).await;
    }
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
    mutate(
        &req,
        &st,
        caller,
        &body,
        Work::Single(CartOp::Add(product, quantity)),
    )
    .await
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
    mutate(
        &req,
        &st,
        caller,
        &body,
        Work::Single(CartOp::Set(product, quantity)),
    )
    .await
}

async fn remove_item(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    let product =
        ProductId::parse(&path, &st.limits).map_err(|e| Problem::from_field_errors([e]))?;
    mutate(
        &req,
        &st,
        caller,
        b"",
        Work::Single(CartOp::Remove(product)),
    )
    .await
}

async fn clear_cart(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    mutate(&req, &st, caller, b"", Work::Single(CartOp::Clear)).await
}

/// `POST /api/v1/cart/ops`: an offline client's queued operations.
async fn sync_ops(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let caller = Caller::from_request(&req)?;
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["base_version", "ops"])?;
    let (base_version, ops) = parse_batch(&map, &st.limits)?;
    mutate(&req, &st, caller, &body, Work::Batch { base_version, ops }).await
}

/// What a mutation does once the cart is locked.
enum Work {
    Single(CartOp),
    Batch {
        base_version: i64,
        ops: Vec<OfflineOp>,
    },
}

/// An Idempotency-Key and the fingerprint of the request it came with.
struct Idempotency {
    key: String,
    request_hash: String,
}

/// A response as it is sent, and as it is stored for an idempotency key.
struct Rendered {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
    /// The cart after the change, for the cache.
    snapshot: Option<Snapshot>,
}

impl Rendered {
    fn cart(snapshot: Snapshot) -> Self {
        Self {
            status: StatusCode::OK,
            etag: Some(view::etag(snapshot.version)),
            body: snapshot.body.clone(),
            snapshot: Some(snapshot),
        }
    }

    fn problem(p: &Problem) -> Self {
        Self {
            status: p.status_code(),
            etag: p.etag.clone(),
            body: serde_json::to_vec(p).unwrap_or_default().into(),
            snapshot: None,
        }
    }

    fn ops(snapshot: Snapshot, outcome: &BatchOutcome) -> Self {
        let results: Vec<Value> = outcome
            .results
            .iter()
            .map(|r| {
                let mut v = json!({ "op_id": r.op_id.as_str(), "status": r.status.as_str() });
                if let (Some(d), Some(obj)) = (&r.detail, v.as_object_mut()) {
                    obj.insert("detail".to_owned(), Value::String(d.clone()));
                }
                v
            })
            .collect();
        // The cart's JSON is already rendered for the cache: splice it in as is.
        let mut body = Vec::with_capacity(snapshot.body.len() + 64 * results.len() + 32);
        body.extend_from_slice(br#"{"cart":"#);
        body.extend_from_slice(&snapshot.body);
        body.extend_from_slice(br#","results":"#);
        body.extend_from_slice(&serde_json::to_vec(&results).unwrap_or_default());
        body.push(b'}');
        Self {
            status: StatusCode::OK,
            etag: Some(view::etag(snapshot.version)),
            body: body.into(),
            snapshot: Some(snapshot),
        }
    }

    fn into_response(self, replayed: bool) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(etag) = self.etag {
            res.insert_header((header::ETAG, etag));
        }
        if replayed {
            res.insert_header((REPLAYED_HEADER, "true"));
        }
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .content_type(if self.status.is_success() {
                "application/json"
            } else {
                svc_kit::problem::CONTENT_TYPE
            })
            .body(self.body)
    }
}

async fn mutate(
    req: &HttpRequest,
    st: &AppState,
    caller: Caller,
    body: &[u8],
    work: Work,
) -> Result<HttpResponse, Problem> {
    let idem = idempotency(req, body)?;
    let precondition = precondition(req);
    let is_user = matches!(caller, Caller::User { .. });
    let committed = within_deadline(st, async {
        let mut tx = st
            .store
            .begin(&caller, idem.as_ref().map(|i| i.key.as_str()))
            .await?;
        if let Some(i) = &idem {
            if let Some(stored) = tx.stored_outcome(&i.key).await? {
                if stored.request_hash != i.request_hash {
                    return Err(key_reused());
                }
                return Ok(Committed::Replay(stored));
            }
        }
        let rendered = match tx.check(&precondition) {
            Err(refused) => Rendered::problem(&Problem::from(refused)),
            Ok(()) => match work {
                Work::Single(op) => match tx.apply(op, &st.limits) {
                    Ok(_) => Rendered::cart(snapshot(&tx.cart)),
                    Err(refused) => Rendered::problem(&Problem::from(refused)),
                },
                Work::Batch { base_version, ops } => {
                    let outcome = tx.apply_offline(base_version, ops, &st.limits).await?;
                    for r in &outcome.results {
                        st.merge_metrics
                            .offline_ops
                            .with_label_values(&[r.status.as_str()])
                            .inc();
                    }
                    Rendered::ops(snapshot(&tx.cart), &outcome)
                }
            },
        };
        if let Some(i) = &idem {
            tx.remember(
                &i.key,
                &StoredOutcome {
                    request_hash: i.request_hash.clone(),
                    status: rendered.status.as_u16(),
                    etag: rendered.etag.clone(),
                    body: String::from_utf8_lossy(&rendered.body).into_owned(),
                },
            )
            .await?;
        }
        let changed = tx.changes_cart();
        let cart_id = tx.cart.id;
        tx.commit().await?;
        Ok(Committed::Fresh {
            rendered,
            changed_cart: changed.then_some(cart_id),
        })
    })
    .await?;
    // Outside the deadline: once committed, the change is acknowledged whatever the
    // cache does.
    match committed {
        Committed::Replay(stored) => {
            st.merge_metrics.replays.inc();
            Ok(replay(stored))
        }
        Committed::Fresh {
            rendered,
            changed_cart,
        } => {
            if let (Some(cart_id), Some(s)) = (changed_cart, &rendered.snapshot) {
                // Before answering, so this client's next read sees at least this version.
                st.cache.put(cart_id, s, true).await;
                if is_user {
                    forget_replaced_cart(st, Caller::session_cart(req), cart_id).await;
                }
            }
            Ok(rendered.into_response(false))
        }
    }
}

/// How a mutation's unit of work ended.
enum Committed {
    Replay(StoredOutcome),
    Fresh {
        rendered: Rendered,
        changed_cart: Option<domain::CartId>,
    },
}

fn replay(stored: StoredOutcome) -> HttpResponse {
    Rendered {
        status: StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
        etag: stored.etag,
        body: stored.body.into(),
        snapshot: None,
    }
    .into_response(true)
}

fn key_reused() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency key reused",
    )
    .detail("this Idempotency-Key was already used with a different request on this cart")
}

/// Bounds a piece of work against Postgres: past `CART_DB_DEADLINE_MS` the caller gets
/// 503 + Retry-After instead of waiting on a stalled database. (A write whose commit
/// raced the deadline may still have landed: clients retry with their Idempotency-Key.)
async fn within_deadline<T>(
    st: &AppState,
    work: impl Future<Output = Result<T, Problem>>,
) -> Result<T, Problem> {
    // One span for the request's whole unit of work in Postgres.
    let span = svc_kit::telemetry::postgres_span();
    match tokio::time::timeout(st.db_deadline, tracing::Instrument::instrument(work, span)).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                deadline_ms = st.db_deadline.as_millis() as u64,
                "postgres did not answer in time"
            );
            Err(Problem::unavailable(1))
        }
    }
}

/// The `Idempotency-Key` header (1–255 visible ASCII characters) and the request's
/// fingerprint: method, path, If-Match and the body as canonical JSON (key order and
/// whitespace do not matter).
fn idempotency(req: &HttpRequest, body: &[u8]) -> Result<Option<Idempotency>, Problem> {
    let Some(raw) = req.headers().get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = raw.as_bytes();
    if key.is_empty() || key.len() > 255 || !key.iter().all(u8::is_ascii_graphic) {
        return Err(Problem::validation(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    let canonical = if body.is_empty() {
        String::new()
    } else {
        // The body was already parsed as JSON by the handler; serde_json's maps are
        // sorted, so this is a canonical form.
        serde_json::from_slice::<Value>(body)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let mut h = Sha256::new();
    for part in [
        req.method().as_str(),
        req.path(),
        req.headers()
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        &canonical,
    ] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    Ok(Some(Idempotency {
        key: String::from_utf8_lossy(key).into_owned(),
        request_hash: hex::encode(h.finalize()),
    }))
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

/// Validates a whole offline batch before anything is applied: a malformed batch is
/// refused as a whole (400), with one error per bad field, named like `ops[3].quantity`.
fn parse_batch(
    map: &JsonObject,
    limits: &domain::Limits,
) -> Result<(i64, Vec<OfflineOp>), Problem> {
    let mut errors = Vec::new();
    let base_version = match int_field(map, "base_version") {
        Ok(v) if v >= 0 => v,
        Ok(_) => {
            errors.push(FieldError::new(
                "base_version",
                "must be an integer of at least 0",
            ));
            0
        }
        Err(e) => {
            errors.push(e);
            0
        }
    };
    let mut ops = Vec::new();
    match map.get("ops") {
        Some(Value::Array(items)) if (1..=MAX_BATCH_OPS).contains(&items.len()) => {
            for (i, item) in items.iter().enumerate() {
                match parse_op(i, item, limits) {
                    Ok(op) => ops.push(op),
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        Some(Value::Array(_)) => errors.push(FieldError::new(
            "ops",
            format!("must hold 1 to {MAX_BATCH_OPS} operations"),
        )),
        None | Some(Value::Null) => errors.push(FieldError::new("ops", "is required")),
        Some(_) => errors.push(FieldError::new("ops", "must be an array of operations")),
    }
    if errors.is_empty() {
        Ok((base_version, ops))
    } else {
        Err(Problem::from_field_errors(errors))
    }
}

fn parse_op(i: usize, item: &Value, limits: &domain::Limits) -> Result<OfflineOp, Vec<FieldError>> {
    let name = |f: &str| format!("ops[{i}].{f}");
    let Value::Object(op) = item else {
        return Err(vec![FieldError::new(
            format!("ops[{i}]"),
            "must be an object",
        )]);
    };
    let mut errors: Vec<FieldError> = op
        .keys()
        .filter(|k| !["op_id", "type", "product_id", "quantity"].contains(&k.as_str()))
        .map(|k| FieldError::new(name(k), "unknown field"))
        .collect();
    let rename = |e: FieldError| FieldError::new(name(&e.field), e.message);
    let op_id = str_field(op, "op_id")
        .and_then(|s| OpId::parse(s, "op_id"))
        .map_err(rename);
    let product = str_field(op, "product_id")
        .and_then(|s| ProductId::parse(s, limits))
        .map_err(rename);
    let change = match str_field(op, "type").map_err(rename) {
        Ok("add") => int_field(op, "quantity")
            .and_then(Quantity::parse_add)
            .map(OfflineChange::Add)
            .map_err(rename),
        Ok("set") => int_field(op, "quantity")
            .and_then(Quantity::parse_set)
            .map(OfflineChange::Set)
            .map_err(rename),
        Ok("remove") if op.contains_key("quantity") => Err(FieldError::new(
            name("quantity"),
            "a remove takes no quantity",
        )),
        Ok("remove") => Ok(OfflineChange::Remove),
        Ok(_) => Err(FieldError::new(name("type"), "must be add, set or remove")),
        Err(e) => Err(e),
    };
    match (op_id, product, change) {
        (Ok(op_id), Ok(product_id), Ok(change)) if errors.is_empty() => Ok(OfflineOp {
            op_id,
            product_id,
            change,
        }),
        (a, b, c) => {
            errors.extend(a.err());
            errors.extend(b.err());
            errors.extend(c.err());
            Err(errors)
        }
    }
}

/// The cart's representation, serialised once for both the response and the cache.
pub fn snapshot(cart: &domain::Cart) -> Snapshot {
    Snapshot {
        version: cart.version,
        user: match cart.owner {
            domain::Owner::User(u) => Some(u),
            domain::Owner::Guest => None,
        },
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
    let found = within_deadline(&st, async {
        Ok(st
            .store
            .find_by_token_hash(&domain::token::hash_token(token))
            .await?)
    })
    .await?;
    match found {
        Some(cart_id) => Ok(HttpResponse::Ok().json(json!({ "cart_id": cart_id.to_string() }))),
        None => Err(Problem::not_found("no active cart for this token")),
    }
}

/// Merges a guest cart into a user's cart at login (called by the gateway). Safe to
/// retry: a guest cart merges at most once, and a repeat answers with the user's cart.
/// Body: `{"user_id": "…", "guest_cart_id": "…"|null}`.
async fn merge(
    req: HttpRequest,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let body = read_body(&req, payload, st.max_body_bytes).await?;
    let map = require_object(&req, &body, &["user_id", "guest_cart_id"])?;
    let user_id = str_field(&map, "user_id")
        .and_then(|s| {
            s.parse::<domain::UserId>()
                .map_err(|_| FieldError::new("user_id", "must be a UUID"))
        })
        .map_err(|e| Problem::from_field_errors([e]))?;
    let guest = match map.get("guest_cart_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<domain::CartId>()
                .map_err(|_| Problem::validation("guest_cart_id", "must be a UUID"))?,
        ),
        Some(_) => {
            return Err(Problem::validation(
                "guest_cart_id",
                "must be a UUID or null",
            ))
        }
    };
    let merged = within_deadline(&st, async {
        Ok(st
            .store
            .merge(user_id, guest, st.merge_strategy, &st.limits)
            .await?)
    })
    .await?;
    let snapshot = snapshot(&merged.cart);
    st.cache.put(merged.cart.id, &snapshot, true).await;
    let (result, dropped) = match &merged.outcome {
        MergeResult::Nothing => ("nothing", None),
        MergeResult::Adopted => ("adopted", Some(Vec::new())),
        MergeResult::Merged(o) => (
            "merged",
            Some(o.dropped.iter().map(|p| p.as_str().to_owned()).collect()),
        ),
    };
    if let Some(guest) = guest.filter(|_| result != "nothing") {
        // The guest cart's cached copy would otherwise answer its session's reads.
        st.cache.delete(guest).await;
    }
    st.merge_metrics.record(&merged.outcome);
    let mut cart = view::to_json(&merged.cart);
    if let (Some(dropped), Some(obj)) = (dropped, cart.as_object_mut()) {
        obj.insert("merge_dropped".to_owned(), json!(dropped));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, view::etag(merged.cart.version)))
        .json(json!({ "result": result, "strategy": st.merge_strategy.as_str(), "cart": cart })))
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

    fn keyed(key: &str) -> HttpRequest {
        TestRequest::post()
            .uri("/api/v1/cart/items")
            .insert_header((IDEMPOTENCY_KEY_HEADER, key))
            .to_http_request()
    }

    #[test]
    fn idempotency_fingerprints_ignore_json_layout() {
        let a = idempotency(&keyed("k1"), br#"{"product_id":"a","quantity":1}"#)
            .unwrap()
            .unwrap();
        let b = idempotency(&keyed("k1"), br#"{ "quantity": 1, "product_id": "a" }"#)
            .unwrap()
            .unwrap();
        let c = idempotency(&keyed("k1"), br#"{"product_id":"a","quantity":2}"#)
            .unwrap()
            .unwrap();
        assert_eq!(a.request_hash, b.request_hash);
        assert_ne!(a.request_hash, c.request_hash);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(idempotency(&keyed(&"k".repeat(255)), b"").is_ok());
        assert_eq!(
            idempotency(&keyed(&"k".repeat(256)), b"")
                .err()
                .map(|p| p.status),
            Some(400)
        );
        assert_eq!(
            idempotency(&keyed("has space"), b"")
                .err()
                .map(|p| p.status),
            Some(400)
        );
    }

    #[test]
    fn malformed_batches_name_each_bad_field() {
        let map: JsonObject = serde_json::from_str(
            r#"{"base_version":-1,"ops":[{"op_id":"a","type":"zap","product_id":"p"},
                {"op_id":"b","type":"remove","product_id":"p","quantity":1},
                {"op_id":"c","type":"add","product_id":"bad id","quantity":0,"x":1}]}"#,
        )
        .unwrap();
        let p = parse_batch(&map, &domain::Limits::default()).unwrap_err();
        let fields: Vec<&str> = p.errors.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "base_version",
            "ops[0].type",
            "ops[1].quantity",
            "ops[2].product_id",
            "ops[2].quantity",
            "ops[2].x",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }
}
