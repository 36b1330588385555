#![allow(clippy::unwrap_used)]

//! The cleanup jobs against real Postgres (`#[sqlx::test]`: a fresh database per test,
//! migrated here with both schemas' real migrations) and real Redis (`REDIS_URL`, a
//! unique key prefix per test). Run through `scripts/test.sh`, which provides both.

use std::time::{Duration, Instant};

use cleanup_worker::config::{days, Jobs, Retention};
use cleanup_worker::jobs::Kind;
use cleanup_worker::metrics::WorkerMetrics;
use cleanup_worker::worker::{PassResult, Stop, UntilStopped, Worker};
use deadpool_redis::redis;
use sqlx::{Connection, PgPool};
use svc_kit::config::Secret;
use svc_kit::datastores::RedisSettings;
use svc_kit::metrics::Metrics;
use uuid::Uuid;

static CART: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/cart");
static AUTH: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/auth");

const DAY: i64 = 86_400;
/// Seeded rows sit this far on either side of a threshold.
const MARGIN: i64 = 300;

/// Applies one schema's migrations the way its service does (history inside the schema).
async fn migrate(pool: &PgPool, schema: &str, migrator: &sqlx::migrate::Migrator) {
    let mut conn = pool.acquire().await.unwrap().detach();
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("SET search_path TO {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    migrator.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

async fn both_schemas(pool: &PgPool) {
    migrate(pool, "cart", &CART).await;
    migrate(pool, "auth", &AUTH).await;
}

fn redis_pool() -> (deadpool_redis::Pool, String) {
    let settings = RedisSettings {
        url: Secret::new(
            std::env::var("REDIS_URL")
                .expect("REDIS_URL must point at a real Redis; run scripts/test.sh"),
        ),
        pool_size: 4,
        timeout: Duration::from_secs(2),
        key_prefix: format!("test:{}:", Uuid::new_v4().simple()),
    };
    (settings.pool().unwrap(), settings.key_prefix)
}

fn worker(pg: &PgPool, retention: Retention, batch_size: u32, rate: u32) -> Worker {
    let (redis, key_prefix) = redis_pool();
    Worker {
        pg: pg.clone(),
        redis,
        jobs: Jobs {
            retention,
            batch_size,
            max_rows_per_second: rate,
            key_prefix,
        },
        metrics: WorkerMetrics::new(&Metrics::new("cleanup-worker-test")),
    }
}

async fn pass(w: &Worker, dry_run: bool) -> cleanup_worker::worker::PassReport {
    let (_tx, stop) = Stop::new();
    w.pass(dry_run, &mut UntilStopped(stop.clone()), &stop)
        .await
}

fn deleted(w: &Worker, kind: Kind) -> u64 {
    w.metrics
        .rows_deleted
        .with_label_values(&[kind.label()])
        .get()
}

async fn redis_conn(w: &Worker) -> deadpool_redis::Connection {
    w.redis.get().await.unwrap()
}

/// A cart last changed `age_secs` ago, with one line, one line change and a cache entry.
async fn seed_cart(w: &Worker, user: Option<Uuid>, status: &str, age_secs: i64) -> Uuid {
    let id = Uuid::new_v4();
    let merged_into = (status == "merged").then(Uuid::new_v4);
    sqlx::query(
        "INSERT INTO cart.carts (cart_id, user_id, status, version, merged_into, created_at, updated_at)
         VALUES ($1, $2, $3, 1, $4, now() - make_interval(secs => $5), now() - make_interval(secs => $5))",
    )
    .bind(id)
    .bind(user)
    .bind(status)
    .bind(merged_into)
    .bind(age_secs as f64)
    .execute(&w.pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity) VALUES ($1, $2, 'sku-1', 2)",
    )
    .bind(Uuid::new_v4())
    .bind(id)
    .execute(&w.pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO cart.line_changes (cart_id, product_id, changed_version) VALUES ($1, 'sku-1', 1)",
    )
    .bind(id)
    .execute(&w.pg)
    .await
    .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(cache_key(w, id))
        .arg("v")
        .arg(1)
        .arg("b")
        .arg("{}")
        .query_async(&mut redis_conn(w).await)
        .await
        .unwrap();
    id
}

fn cache_key(w: &Worker, id: Uuid) -> String {
    format!("{}cart:{id}", w.jobs.key_prefix)
}

/// Whether the cart, its line, its line change and its cache entry exist (all four
/// must agree).
async fn cart_exists(w: &Worker, id: Uuid) -> bool {
    let (carts, items, changes): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM cart.carts WHERE cart_id = $1),
                (SELECT count(*) FROM cart.cart_items WHERE cart_id = $1),
                (SELECT count(*) FROM cart.line_changes WHERE cart_id = $1)",
    )
    .bind(id)
    .fetch_one(&w.pg)
    .await
    .unwrap();
    let cached: bool = redis::cmd("EXISTS")
        .arg(cache_key(w, id))
        .query_async(&mut redis_conn(w).await)
        .await
        .unwrap();
    assert_eq!(
        (carts, items, changes, i64::from(cached)),
        (carts, carts, carts, carts),
        "cart {id}: its line, line change and cache entry must go (or stay) with it"
    );
    carts == 1
}

async fn count(pg: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pg).await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn exactly_the_expired_rows_go_around_every_threshold(pg: PgPool) {
    both_schemas(&pg).await;
    let w = worker(&pg, Retention::default(), 3, 100_000);
    let user = || Some(Uuid::new_v4());

    let guest_expired = seed_cart(&w, None, "active", 14 * DAY + MARGIN).await;
    let guest_kept = seed_cart(&w, None, "active", 14 * DAY - MARGIN).await;
    let user_expired = seed_cart(&w, user(), "active", 90 * DAY + MARGIN).await;
    let user_kept = seed_cart(&w, user(), "active", 90 * DAY - MARGIN).await;
    let user_31_days = seed_cart(&w, user(), "active", 31 * DAY).await;
    let merged_expired = seed_cart(&w, None, "merged", DAY + MARGIN).await;
    let merged_kept = seed_cart(&w, None, "merged", DAY - MARGIN).await;
    let closed_expired = seed_cart(&w, None, "closed", DAY + MARGIN).await;
    // More expired guest carts than one batch (3), so the pass takes several.
    let mut more_guests = Vec::new();
    for i in 0..7 {
        more_guests.push(seed_cart(&w, None, "active", 20 * DAY + i).await);
    }

    for (age, key) in [(DAY + MARGIN, "old"), (DAY - MARGIN, "new")] {
        sqlx::query(
            "INSERT INTO cart.idempotency_keys (cart_id, idempotency_key, request_hash, response_status, response_body, created_at)
             VALUES ($1, $2, 'h', 200, '{}', now() - make_interval(secs => $3))",
        )
        .bind(guest_kept)
        .bind(key)
        .bind(age as f64)
        .execute(&pg)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO cart.applied_ops (cart_id, op_id, status, applied_at)
             VALUES ($1, $2, 'applied', now() - make_interval(secs => $3))",
        )
        .bind(guest_kept)
        .bind(key)
        .bind(age as f64)
        .execute(&pg)
        .await
        .unwrap();
    }

    let account = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO auth.users (user_id, email, password_hash) VALUES ($1, 'a@example.com', '$argon2id$x')",
    )
    .bind(account)
    .execute(&pg)
    .await
    .unwrap();
    for (hash, expires_in) in [("a", -60.0), ("b", 60.0)] {
        sqlx::query(
            "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, session_id, expires_at)
             VALUES (repeat($1, 64), $2, $3, 's', now() + make_interval(secs => $4))",
        )
        .bind(hash)
        .bind(Uuid::new_v4())
        .bind(account)
        .bind(expires_in)
        .execute(&pg)
        .await
        .unwrap();
    }
    for (email, age, blocked_for) in [
        ("stale@x", DAY + MARGIN, None),
        ("blocked@x", DAY + MARGIN, Some(600.0)),
        ("recent@x", DAY - MARGIN, None),
    ] {
        sqlx::query(
            "INSERT INTO auth.login_throttle (email, failures, window_started, blocked_until, updated_at)
             VALUES ($1, 5, now(), now() + make_interval(secs => $3), now() - make_interval(secs => $2))",
        )
        .bind(email)
        .bind(age as f64)
        .bind(blocked_for)
        .execute(&pg)
        .await
        .unwrap();
    }

    // Session indexes: one user with a live session, an expired member and a member
    // whose session is gone; another with only an expired member.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let p = w.jobs.key_prefix.clone();
    let (live, expired, vanished) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    let mut r = redis_conn(&w).await;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(format!("{p}session:{live}"))
        .arg("k")
        .arg("v")
        .cmd("ZADD")
        .arg(format!("{p}user-sessions:alice"))
        .arg(now_ms + 3_600_000)
        .arg(&live)
        .cmd("ZADD")
        .arg(format!("{p}user-sessions:alice"))
        .arg(now_ms - 1_000)
        .arg(&expired)
        .cmd("ZADD")
        .arg(format!("{p}user-sessions:alice"))
        .arg(now_ms + 3_600_000)
        .arg(&vanished)
        .cmd("ZADD")
        .arg(format!("{p}user-sessions:bob"))
        .arg(now_ms - 5_000)
        .arg(&expired)
        .query_async(&mut r)
        .await
        .unwrap();

    let report = pass(&w, false).await;
    assert_eq!(report.result, Some(PassResult::Ok));

    for (id, what) in [
        (guest_expired, "guest cart 14 days + 5 min old"),
        (user_expired, "user cart 90 days + 5 min old"),
        (merged_expired, "merged cart 1 day + 5 min old"),
        (closed_expired, "closed cart 1 day + 5 min old"),
    ] {
        assert!(!cart_exists(&w, id).await, "{what} must be deleted");
    }
    for id in &more_guests {
        assert!(!cart_exists(&w, *id).await, "every expired guest cart goes");
    }
    for (id, what) in [
        (guest_kept, "guest cart 14 days - 5 min old"),
        (user_kept, "user cart 90 days - 5 min old"),
        (user_31_days, "user cart 31 days old"),
        (merged_kept, "merged cart 1 day - 5 min old"),
    ] {
        assert!(cart_exists(&w, id).await, "{what} must stay");
    }
    assert_eq!(deleted(&w, Kind::GuestCarts), 8);
    assert_eq!(deleted(&w, Kind::UserCarts), 1);
    assert_eq!(deleted(&w, Kind::MergedCarts), 2);
    assert!(w.metrics.batches.with_label_values(&["guest_carts"]).get() >= 3);

    let keys =
        |t: &str, col: &str| format!("SELECT string_agg({col}, ',' ORDER BY {col}) FROM {t}");
    let left: Option<String> =
        sqlx::query_scalar(&keys("cart.idempotency_keys", "idempotency_key"))
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(
        left.as_deref(),
        Some("new"),
        "idempotency records older than 24 h go"
    );
    let left: Option<String> = sqlx::query_scalar(&keys("cart.applied_ops", "op_id"))
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(left.as_deref(), Some("new"), "op ids older than 24 h go");
    let left: Option<String> =
        sqlx::query_scalar(&keys("auth.refresh_tokens", "left(token_hash, 1)"))
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(
        left.as_deref(),
        Some("b"),
        "only the refresh token past expiry goes"
    );
    let left: Option<String> = sqlx::query_scalar(&keys("auth.login_throttle", "email"))
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(
        left.as_deref(),
        Some("blocked@x,recent@x"),
        "a blocking or recent throttle row stays"
    );

    let alice: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{p}user-sessions:alice"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        alice,
        vec![live],
        "only the member with a live session stays"
    );
    let bob: bool = redis::cmd("EXISTS")
        .arg(format!("{p}user-sessions:bob"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!bob, "an index left empty is gone");
    assert_eq!(deleted(&w, Kind::SessionIndexMembers), 3);
    for kind in Kind::ALL {
        let age = w
            .metrics
            .oldest_expired_age
            .with_label_values(&[kind.label()])
            .get();
        assert_eq!(
            age,
            0.0,
            "{}: nothing expired is left waiting",
            kind.label()
        );
    }

    // A second pass finds nothing more.
    let again = pass(&w, false).await;
    assert_eq!(again.rows.values().sum::<u64>(), 0);
}

#[sqlx::test(migrations = false)]
async fn a_30_day_user_retention_deletes_a_31_day_old_cart_but_not_a_29_day_old_one(pg: PgPool) {
    both_schemas(&pg).await;
    let retention = Retention {
        user_cart: days(30),
        ..Retention::default()
    };
    let w = worker(&pg, retention, 100, 100_000);
    let old = seed_cart(&w, Some(Uuid::new_v4()), "active", 31 * DAY).await;
    let young = seed_cart(&w, Some(Uuid::new_v4()), "active", 29 * DAY).await;
    pass(&w, false).await;
    assert!(!cart_exists(&w, old).await);
    assert!(cart_exists(&w, young).await);
}

#[sqlx::test(migrations = false)]
async fn a_cart_changed_between_selection_and_deletion_stays(pg: PgPool) {
    both_schemas(&pg).await;
    let w = worker(&pg, Retention::default(), 100, 100_000);
    let touched = seed_cart(&w, None, "active", 15 * DAY).await;
    let untouched = seed_cart(&w, None, "active", 15 * DAY + 1).await;
    let table = Kind::GuestCarts.table(&w.jobs.retention).unwrap();

    let picked = table.select_expired_carts(&pg, 100).await.unwrap();
    let ids: Vec<Uuid> = picked.iter().map(|c| c.cart_id).collect();
    assert_eq!(
        ids,
        vec![untouched, touched],
        "both were expired when picked, oldest first"
    );
    // The shopper comes back in the window: a change refreshes the cart's clock.
    sqlx::query(
        "UPDATE cart.carts SET updated_at = now(), version = version + 1 WHERE cart_id = $1",
    )
    .bind(touched)
    .execute(&pg)
    .await
    .unwrap();
    let gone = table.delete_carts(&pg, &ids).await.unwrap();

    assert_eq!(gone, vec![untouched]);
    assert_eq!(
        count(&pg, "SELECT count(*) FROM cart.carts").await,
        1,
        "the touched cart stays"
    );
}

#[sqlx::test(migrations = false)]
async fn a_cart_locked_by_a_change_in_flight_is_skipped_not_waited_for(pg: PgPool) {
    both_schemas(&pg).await;
    let w = worker(&pg, Retention::default(), 100, 100_000);
    let busy = seed_cart(&w, None, "active", 15 * DAY).await;
    let idle = seed_cart(&w, None, "active", 15 * DAY).await;

    // What cart-svc does for a change: lock the row, then write.
    let mut shopper = pg.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM cart.carts WHERE cart_id = $1 FOR UPDATE")
        .bind(busy)
        .execute(&mut *shopper)
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), pass(&w, false))
        .await
        .expect("the pass must not wait for a shopper's lock");
    assert_eq!(report.rows(Kind::GuestCarts), 1);
    assert!(!cart_exists(&w, idle).await);
    sqlx::query("UPDATE cart.carts SET updated_at = now() WHERE cart_id = $1")
        .bind(busy)
        .execute(&mut *shopper)
        .await
        .unwrap();
    shopper.commit().await.unwrap();

    pass(&w, false).await;
    assert!(cart_exists(&w, busy).await, "changed, so no longer expired");
}

#[sqlx::test(migrations = false)]
async fn a_dry_run_counts_and_deletes_nothing(pg: PgPool) {
    both_schemas(&pg).await;
    let w = worker(&pg, Retention::default(), 2, 100_000);
    let mut expired = Vec::new();
    for _ in 0..5 {
        expired.push(seed_cart(&w, None, "active", 15 * DAY).await);
    }
    let kept = seed_cart(&w, None, "active", DAY).await;
    let report = pass(&w, true).await;
    assert_eq!(report.result, Some(PassResult::Ok));
    assert_eq!(report.rows(Kind::GuestCarts), 5);
    assert_eq!(
        w.metrics
            .rows_would_delete
            .with_label_values(&["guest_carts"])
            .get(),
        5
    );
    assert_eq!(deleted(&w, Kind::GuestCarts), 0);
    let age = w
        .metrics
        .oldest_expired_age
        .with_label_values(&["guest_carts"])
        .get();
    assert!(
        (DAY as f64 - 10.0..DAY as f64 + 10.0).contains(&age),
        "one day overdue: {age}"
    );
    for id in expired.iter().chain([&kept]) {
        assert!(cart_exists(&w, *id).await, "a dry run deletes nothing");
    }
}

#[sqlx::test(migrations = false)]
async fn without_the_auth_schema_its_jobs_are_skipped_and_the_rest_runs(pg: PgPool) {
    migrate(&pg, "cart", &CART).await;
    let w = worker(&pg, Retention::default(), 100, 100_000);
    let expired = seed_cart(&w, None, "active", 15 * DAY).await;
    let report = pass(&w, false).await;
    assert_eq!(report.result, Some(PassResult::Ok));
    assert!(!cart_exists(&w, expired).await);
}

#[sqlx::test(migrations = false)]
async fn a_pass_over_many_expired_carts_never_exceeds_the_configured_rate(pg: PgPool) {
    both_schemas(&pg).await;
    const CARTS: i64 = 3_000;
    const RATE: f64 = 1_000.0;
    const BATCH: u32 = 100;
    let w = worker(&pg, Retention::default(), BATCH, RATE as u32);
    sqlx::query(
        "INSERT INTO cart.carts (cart_id, updated_at)
         SELECT gen_random_uuid(), now() - interval '20 days' - make_interval(secs => g)
           FROM generate_series(1, $1) g",
    )
    .bind(CARTS as i32)
    .execute(&pg)
    .await
    .unwrap();

    let (_tx, stop) = Stop::new();
    let started = Instant::now();
    let run = tokio::spawn(async move {
        let report = w.pass(false, &mut UntilStopped(stop.clone()), &stop).await;
        (report, w)
    });
    // Watched from outside, the way an operator would: rows left, over time.
    let mut samples: Vec<(f64, i64)> = Vec::new();
    while !run.is_finished() {
        let left = count(&pg, "SELECT count(*) FROM cart.carts").await;
        samples.push((started.elapsed().as_secs_f64(), CARTS - left));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let (report, _w) = run.await.unwrap();
    assert_eq!(report.rows(Kind::GuestCarts), CARTS as u64);

    // At the configured rate 3000 rows take ~3 s; unpaced, well under one.
    let least = (CARTS as f64 - f64::from(BATCH)) / RATE;
    assert!(
        took >= least,
        "3000 rows in {took:.2}s: faster than {RATE} rows/s"
    );
    // Over any stretch of at least half a second, no more than the rate allows plus
    // one batch (the first batch starts at once).
    for (i, (t0, d0)) in samples.iter().enumerate() {
        for (t1, d1) in &samples[i + 1..] {
            if t1 - t0 >= 0.5 {
                let allowed = RATE * (t1 - t0) + f64::from(BATCH) * 1.5;
                assert!(
                    ((d1 - d0) as f64) <= allowed,
                    "{} rows deleted between {t0:.2}s and {t1:.2}s (allowed {allowed:.0})",
                    d1 - d0
                );
            }
        }
    }
}
