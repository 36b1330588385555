#![allow(clippy::unwrap_used)]

//! cart-svc against real Postgres (`#[sqlx::test]` gives each test a fresh database with
//! the `cart` migrations) and real Redis (`REDIS_URL`, a unique key prefix per test).
//! Run through `scripts/test.sh`, which provides both.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{test, web, App};
use cart_svc::cache::{Cache, Snapshot};
use cart_svc::caller::Caller;
use cart_svc::store::{Precondition, Store, StoreError};
use cart_svc::AppState;
use domain::identity::{
    CART_ID_HEADER, CART_TOKEN_HASH_HEADER, INTERNAL_TOKEN_HEADER, KIND_HEADER,
};
use domain::{CartError, CartId, CartOp, Limits, ProductId, Quantity, SetQuantity, UserId};
use serde_json::{json, Value};
use sqlx::PgPool;
use svc_kit::config::Secret;
use svc_kit::datastores::RedisSettings;
use svc_kit::internal::InternalToken;
use svc_kit::metrics::Metrics;

const TOKEN: &str = "test-internal-token-0123456789abcdef";

fn pid(s: &str) -> ProductId {
    ProductId::parse(s, &Limits::default()).unwrap()
}

fn add(p: &str, q: i64) -> CartOp {
    CartOp::Add(pid(p), Quantity::parse_add(q).unwrap())
}

fn guest() -> Caller {
    Caller::Guest {
        cart_id: CartId::new(),
        token_hash: Some(domain::token::hash_token(&uuid::Uuid::new_v4().to_string())),
    }
}

fn cart_id(c: &Caller) -> CartId {
    match c {
        Caller::Guest { cart_id, .. } => *cart_id,
        Caller::User { .. } => panic!("guest expected"),
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL must point at a real Redis; run scripts/test.sh")
}

fn cache(redis_url: &str) -> Cache {
    let settings = RedisSettings {
        url: Secret::new(redis_url),
        pool_size: 4,
        timeout: Duration::from_millis(300),
        key_prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
    };
    Cache::new(
        settings.pool().unwrap(),
        settings.key_prefix.clone(),
        60,
        settings.timeout,
        Duration::from_millis(200),
        &Metrics::new("cart-svc-test"),
    )
}

async fn db_line(pool: &PgPool, cart: CartId, product: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT quantity FROM cart.cart_items WHERE cart_id = $1 AND product_id = $2",
    )
    .bind(cart.as_uuid())
    .bind(product)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn db_version(pool: &PgPool, cart: CartId) -> Option<i64> {
    sqlx::query_scalar("SELECT version FROM cart.carts WHERE cart_id = $1")
        .bind(cart.as_uuid())
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn first_change_creates_the_guest_cart_with_its_token_hash(pool: PgPool) {
    let store = Store::new(pool.clone());
    let caller = guest();
    let id = cart_id(&caller);
    assert_eq!(store.read(&caller).await.unwrap().version, 0);
    assert_eq!(db_version(&pool, id).await, None, "reading writes nothing");

    let changed = store
        .change(
            &caller,
            add("sku-1", 2),
            &Precondition::None,
            &Limits::default(),
        )
        .await
        .unwrap();
    assert_eq!(changed.cart.version, 1);
    assert_eq!(db_version(&pool, id).await, Some(1));
    assert_eq!(db_line(&pool, id, "sku-1").await, Some(2));
    let Caller::Guest {
        token_hash: Some(h),
        ..
    } = &caller
    else {
        unreachable!()
    };
    assert_eq!(store.find_by_token_hash(h).await.unwrap(), Some(id));

    // What we answered is exactly what a later read returns.
    assert_eq!(store.read(&caller).await.unwrap(), changed.cart);
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn no_op_and_refused_changes_write_nothing(pool: PgPool) {
    let store = Store::new(pool.clone());
    let caller = guest();
    let id = cart_id(&caller);
    let limits = Limits::default();
    store
        .change(
            &caller,
            CartOp::Remove(pid("ghost")),
            &Precondition::None,
            &limits,
        )
        .await
        .unwrap();
    store
        .change(&caller, CartOp::Clear, &Precondition::None, &limits)
        .await
        .unwrap();
    assert_eq!(
        db_version(&pool, id).await,
        None,
        "a no-op on a new cart creates no row"
    );

    let err = store
        .change(&caller, add("a", 100), &Precondition::None, &limits)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Limit(CartError::LineQuantityExceeded { .. })
    ));
    assert_eq!(db_version(&pool, id).await, None);

    store
        .change(&caller, add("a", 5), &Precondition::None, &limits)
        .await
        .unwrap();
    let same = store
        .change(
            &caller,
            CartOp::Set(pid("a"), SetQuantity::To(Quantity::parse_add(5).unwrap())),
            &Precondition::None,
            &limits,
        )
        .await
        .unwrap();
    assert!(!same.effect.changed());
    assert_eq!(db_version(&pool, id).await, Some(1));
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn concurrent_adds_from_many_devices_all_land(pool: PgPool) {
    let store = Arc::new(Store::new(pool.clone()));
    let caller = guest();
    let n = 24;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (store, caller) = (store.clone(), caller.clone());
            tokio::spawn(async move {
                store
                    .change(
                        &caller,
                        add("sku-1", 1),
                        &Precondition::None,
                        &Limits::default(),
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let id = cart_id(&caller);
    assert_eq!(db_line(&pool, id, "sku-1").await, Some(n));
    assert_eq!(db_version(&pool, id).await, Some(i64::from(n)));
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn racing_for_the_last_line_admits_exactly_one(pool: PgPool) {
    let store = Arc::new(Store::new(pool.clone()));
    let caller = guest();
    let limits = Limits::default();
    for i in 0..99 {
        store
            .change(
                &caller,
                add(&format!("p{i}"), 1),
                &Precondition::None,
                &limits,
            )
            .await
            .unwrap();
    }
    let racers: Vec<_> = ["last-a", "last-b", "last-c"]
        .into_iter()
        .map(|p| {
            let (store, caller) = (store.clone(), caller.clone());
            tokio::spawn(async move {
                store
                    .change(&caller, add(p, 1), &Precondition::None, &limits)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Limit(CartError::TooManyLines { max: 100 })) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM cart.cart_items WHERE cart_id = $1")
        .bind(cart_id(&caller).as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(lines, 100);
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn stale_if_match_is_refused_with_the_current_cart(pool: PgPool) {
    let store = Store::new(pool.clone());
    let caller = guest();
    let limits = Limits::default();
    store
        .change(&caller, add("a", 1), &Precondition::None, &limits)
        .await
        .unwrap();
    store
        .change(&caller, add("a", 1), &Precondition::None, &limits)
        .await
        .unwrap();
    let err = store
        .change(
            &caller,
            add("a", 1),
            &Precondition::Versions(vec![1]),
            &limits,
        )
        .await
        .unwrap_err();
    let StoreError::PreconditionFailed(current) = err else {
        panic!("412 expected")
    };
    assert_eq!(current.version, 2);
    assert_eq!(db_line(&pool, cart_id(&caller), "a").await, Some(2));
    let ok = store
        .change(
            &caller,
            add("a", 1),
            &Precondition::Versions(vec![2]),
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(ok.cart.version, 3);
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn a_user_gets_one_active_cart_even_when_first_requests_race(pool: PgPool) {
    let store = Arc::new(Store::new(pool.clone()));
    let user = Caller::User {
        user_id: UserId::new(),
    };
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, user) = (store.clone(), user.clone());
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store.read(&user).await.map(|c| c.id)
                } else {
                    store
                        .change(&user, add("x", 1), &Precondition::None, &Limits::default())
                        .await
                        .map(|c| c.cart.id)
                }
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 1, "every request saw the same cart");
    let carts: i64 = sqlx::query_scalar("SELECT count(*) FROM cart.carts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(carts, 1);
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn the_database_refuses_what_the_model_forbids(pool: PgPool) {
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO cart.carts (cart_id) VALUES ($1)")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    for (product, quantity) in [("ok", 0), ("ok", 10_000), ("bad id", 1), ("", 1)] {
        let r = sqlx::query("INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity) VALUES ($1, $2, $3, $4)")
            .bind(uuid::Uuid::now_v7())
            .bind(id)
            .bind(product)
            .bind(quantity)
            .execute(&pool)
            .await;
        assert!(r.is_err(), "{product:?} x {quantity} must be refused");
    }
    // One active cart per user.
    let user = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO cart.carts (cart_id, user_id) VALUES ($1, $2)")
        .bind(uuid::Uuid::now_v7())
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
    let second = sqlx::query("INSERT INTO cart.carts (cart_id, user_id) VALUES ($1, $2)")
        .bind(uuid::Uuid::now_v7())
        .bind(user)
        .execute(&pool)
        .await;
    assert!(second.is_err());
}

#[tokio::test]
async fn the_cache_never_goes_back_to_an_older_version() {
    let cache = cache(&redis_url());
    let id = CartId::new();
    let snap = |v: i64| Snapshot {
        version: v,
        body: format!("{{\"version\":{v}}}").into(),
        user: None,
    };
    assert!(cache.get(id).await.is_none());
    cache.put(id, &snap(2), true).await;
    cache.put(id, &snap(1), false).await;
    let hit = cache.get(id).await.expect("cached");
    assert_eq!(hit.version, 2);
    assert_eq!(hit.body.as_ref(), br#"{"version":2}"#);
    cache.put(id, &snap(3), true).await;
    assert_eq!(cache.get(id).await.unwrap().version, 3);
}

#[tokio::test]
async fn a_user_is_served_only_an_entry_that_is_theirs() {
    let cache = cache(&redis_url());
    let id = CartId::new();
    let (owner, other) = (domain::UserId::new(), domain::UserId::new());
    let snap = |v: i64, user: Option<domain::UserId>| Snapshot {
        version: v,
        body: format!("{{\"version\":{v}}}").into(),
        user,
    };
    cache.put(id, &snap(1, None), true).await;
    assert!(
        cache.get_for_user(id, owner).await.is_none(),
        "a guest's cart"
    );
    assert_eq!(cache.get(id).await.unwrap().version, 1);
    // Adopted at login: the owner comes with the new version.
    cache.put(id, &snap(2, Some(owner)), true).await;
    let hit = cache.get_for_user(id, owner).await.expect("the owner's");
    assert_eq!((hit.version, hit.user), (2, Some(owner)));
    assert!(cache.get_for_user(id, other).await.is_none());
    cache.delete(id).await;
    assert!(cache.get_for_user(id, owner).await.is_none());
}

fn app_state(pool: PgPool, cache: Cache) -> web::Data<AppState> {
    web::Data::new(AppState {
        store: Store::new(pool),
        cache,
        limits: Limits::default(),
        require_if_match_on_put: false,
        max_body_bytes: 16 * 1024,
        db_deadline: Duration::from_secs(1),
        merge_strategy: domain::MergeStrategy::Sum,
        merge_metrics: cart_svc::MergeMetrics::new(&svc_kit::metrics::Metrics::new("test")),
    })
}

fn guest_request(req: test::TestRequest, id: CartId) -> test::TestRequest {
    req.insert_header((INTERNAL_TOKEN_HEADER, TOKEN))
        .insert_header((KIND_HEADER, "guest"))
        .insert_header((CART_ID_HEADER, id.to_string()))
        .insert_header((
            CART_TOKEN_HASH_HEADER,
            domain::token::hash_token("some-cart-token-value"),
        ))
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn reads_after_a_change_come_from_the_cache(pool: PgPool) {
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(InternalToken(Secret::new(TOKEN))))
            .app_data(app_state(pool.clone(), cache(&redis_url())))
            .configure(cart_svc::http::routes),
    )
    .await;
    let id = CartId::new();
    let res = test::call_service(
        &app,
        guest_request(test::TestRequest::post().uri("/api/v1/cart/items"), id)
            .insert_header(("content-type", "application/json"))
            .set_payload(json!({"product_id": "sku-1", "quantity": 2}).to_string())
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("etag").unwrap(), "\"1\"");

    // Take Postgres' copy away behind the service's back: the read still answers with
    // the committed cart, so it came from the cache.
    sqlx::query("DELETE FROM cart.carts WHERE cart_id = $1")
        .bind(id.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let res = test::call_service(
        &app,
        guest_request(test::TestRequest::get().uri("/api/v1/cart"), id).to_request(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("etag").unwrap(), "\"1\"");
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["items"][0]["quantity"], 2);
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn with_redis_unreachable_carts_are_served_from_postgres(pool: PgPool) {
    // A port nothing listens on: every cache call fails fast.
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(InternalToken(Secret::new(TOKEN))))
            .app_data(app_state(pool.clone(), cache("redis://127.0.0.1:1")))
            .configure(cart_svc::http::routes),
    )
    .await;
    let id = CartId::new();
    for q in [1, 2] {
        let res = test::call_service(
            &app,
            guest_request(test::TestRequest::post().uri("/api/v1/cart/items"), id)
                .insert_header(("content-type", "application/json"))
                .set_payload(json!({"product_id": "sku-1", "quantity": q}).to_string())
                .to_request(),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    let res = test::call_service(
        &app,
        guest_request(test::TestRequest::get().uri("/api/v1/cart"), id).to_request(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = test::read_body_json(res).await;
    assert_eq!(body["items"][0]["quantity"], 3);
    assert_eq!(body["version"], 2);
    assert_eq!(db_line(&pool, id, "sku-1").await, Some(3));
}

#[sqlx::test(migrations = "../../migrations/cart")]
async fn requests_without_the_internal_credential_are_refused(pool: PgPool) {
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(InternalToken(Secret::new(TOKEN))))
            .app_data(app_state(pool.clone(), cache(&redis_url())))
            .configure(cart_svc::http::routes),
    )
    .await;
    let id = CartId::new();
    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri("/api/v1/cart")
            .insert_header((KIND_HEADER, "guest"))
            .insert_header((CART_ID_HEADER, id.to_string()))
            .insert_header((
                INTERNAL_TOKEN_HEADER,
                "wrong-token-wrong-token-wrong-token!",
            ))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
}

#[tokio::test]
async fn a_failing_redis_is_taken_out_of_the_path_by_the_breaker() {
    let metrics = Metrics::new("cart-svc-test");
    let settings = RedisSettings {
        // A port nothing listens on.
        url: Secret::new("redis://127.0.0.1:1"),
        pool_size: 2,
        timeout: Duration::from_millis(300),
        key_prefix: "t:".to_owned(),
    };
    let cache = Cache::new(
        settings.pool().unwrap(),
        settings.key_prefix.clone(),
        60,
        settings.timeout,
        Duration::from_secs(30),
        &metrics,
    );
    let id = CartId::new();
    for _ in 0..2 {
        assert!(cache.get(id).await.is_none());
    }
    assert!(metrics.render().contains("cart_cache_breaker_open 1"));
    // Open: calls return at once without touching Redis.
    let started = std::time::Instant::now();
    for _ in 0..100 {
        assert!(cache.get(id).await.is_none());
    }
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    assert!(metrics
        .render()
        .contains(r#"cart_cache_requests_total{op="get",result="error"} 102"#));
}
