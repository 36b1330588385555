//! Cart correctness end to end (issue 3, docs/issue3-spec.md): concurrent writers lose
//! nothing, `If-Match` and `Idempotency-Key` do exactly what they promise, offline
//! batches apply each op once, a random concurrent history is exactly what was
//! acknowledged, and carts keep working while Redis or Postgres misbehave. Every test
//! starts the five real binaries on its own database and Redis prefix and talks to the
//! gateway as a guest (`X-Session-Token`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{CartView, Guest, Platform, PlatformOptions, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

async fn platform() -> Platform {
    Platform::start(PlatformOptions::new()).await
}

// ------------------------------------------------------------------ requests

fn add(guest: &Guest, product: &str, quantity: i64) -> RequestBuilder {
    guest
        .request(Method::POST, "/api/v1/cart/items")
        .json(&json!({"product_id": product, "quantity": quantity}))
}

fn set(guest: &Guest, product: &str, quantity: i64) -> RequestBuilder {
    guest
        .request(Method::PUT, &format!("/api/v1/cart/items/{product}"))
        .json(&json!({ "quantity": quantity }))
}

fn remove(guest: &Guest, product: &str) -> RequestBuilder {
    guest.request(Method::DELETE, &format!("/api/v1/cart/items/{product}"))
}

fn clear(guest: &Guest) -> RequestBuilder {
    guest.request(Method::DELETE, "/api/v1/cart")
}

fn if_match(request: RequestBuilder, version: i64) -> RequestBuilder {
    request.header("if-match", format!("\"{version}\""))
}

fn keyed(request: RequestBuilder, key: &str) -> RequestBuilder {
    request.header("idempotency-key", key)
}

/// A fresh client-chosen op id (a UUID, as API.md recommends).
fn op_id() -> String {
    Uuid::now_v7().to_string()
}

fn op_add(op_id: &str, product: &str, quantity: i64) -> Value {
    json!({"op_id": op_id, "type": "add", "product_id": product, "quantity": quantity})
}

fn op_set(op_id: &str, product: &str, quantity: i64) -> Value {
    json!({"op_id": op_id, "type": "set", "product_id": product, "quantity": quantity})
}

fn op_remove(op_id: &str, product: &str) -> Value {
    json!({"op_id": op_id, "type": "remove", "product_id": product})
}

/// Sends every request at once (a barrier releases them together) and returns the
/// replies in the order of the requests.
async fn all_at_once(requests: Vec<RequestBuilder>) -> Vec<Reply> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let mut tasks = JoinSet::new();
    for (i, request) in requests.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            (i, Reply::through_gateway(request).await)
        });
    }
    let mut replies: Vec<(usize, Reply)> = tasks.join_all().await;
    replies.sort_by_key(|(i, _)| *i);
    replies.into_iter().map(|(_, r)| r).collect()
}

/// After a refused (or replayed) request: the cart reads exactly as before, and
/// Postgres too.
async fn assert_unchanged(platform: &Platform, guest: &Guest, before: &CartView, after: &str) {
    let now = guest.current_cart().await;
    assert_eq!(
        now.version, before.version,
        "after {after}: the version moved although nothing was to change"
    );
    assert_eq!(
        now.lines(),
        before.lines(),
        "after {after}: the lines changed although nothing was to change"
    );
    platform
        .assert_db_matches(before, &format!("after {after}"))
        .await;
}

fn lines(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    let mut lines: Vec<(String, i64)> = pairs.iter().map(|(p, q)| ((*p).to_owned(), *q)).collect();
    lines.sort();
    lines
}

// ------------------------------------------------------------------ 1. concurrent adds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_through_the_gateway_all_land() {
    const N: i64 = 30;
    // Thirty writers queue on one cart's row lock; on a CI machine busy with other
    // platforms the last can wait past the 1 s default deadline and be (rightly) shed
    // with 503. This test is about lost updates, not deadlines: give the queue room.
    let platform =
        Platform::start(PlatformOptions::new().env("CART_DB_DEADLINE_MS", "10000")).await;
    let guest = platform.start_guest_session().await;

    let replies = all_at_once((0..N).map(|_| add(&guest, "sku-1", 1)).collect()).await;

    let refused: Vec<String> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status != 200)
        .map(|(i, r)| format!("add #{i}: {r}"))
        .collect();
    if !refused.is_empty() {
        let landed = guest.current_cart().await.quantity_of("sku-1");
        panic!(
            "{} of {N} concurrent adds were not 200 (the cart now holds {landed:?} of \
             sku-1):\n{}",
            refused.len(),
            refused.join("\n")
        );
    }
    let mut versions = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        let cart = reply.cart(&format!("concurrent add #{i}"));
        // Adding 1 each time to one line: at version v the line holds exactly v.
        assert_eq!(
            cart.quantity_of("sku-1"),
            Some(cart.version),
            "concurrent add #{i}: the cart it returned is not a state the adds went \
             through: {reply}"
        );
        versions.push(cart.version);
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=N).collect::<Vec<_>>(),
        "{N} concurrent adds must each create one version, none lost, none shared"
    );

    let cart = guest.current_cart().await;
    assert_eq!(cart.quantity_of("sku-1"), Some(N), "no add may be lost");
    assert_eq!(cart.version, N, "one version per add");
    assert_eq!(cart.lines(), lines(&[("sku-1", N)]));
    platform
        .assert_db_matches(&cart, "after the concurrent adds")
        .await;
}

/// The first change creates the cart's row, so first changes racing each other are a
/// case of their own; many fresh carts make a rare interleaving likely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_writes_to_new_carts_all_land() {
    const CARTS: usize = 80;
    let platform = platform().await;
    let mut failures = Vec::new();
    for n in 0..CARTS {
        let guest = platform.start_guest_session().await;
        let replies = all_at_once(vec![
            add(&guest, "p-a", 1),
            add(&guest, "p-b", 1),
            add(&guest, "p-same", 1),
            add(&guest, "p-same", 1),
            remove(&guest, "p-absent"),
            set(&guest, "p-c", 1),
        ])
        .await;
        failures.extend(
            replies
                .iter()
                .filter(|r| r.status != 200)
                .map(|r| format!("cart {n}: {r}")),
        );
        if failures.is_empty() {
            let cart = guest.current_cart().await;
            assert_eq!(
                cart.lines(),
                lines(&[("p-a", 1), ("p-b", 1), ("p-c", 1), ("p-same", 2)]),
                "cart {n}: every first write lands"
            );
            assert_eq!(cart.version, 5, "cart {n}: five changes, one no-op");
            platform
                .assert_db_matches(&cart, &format!("cart {n}"))
                .await;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} concurrent first writes (6 on each of {CARTS} new carts) were refused:\n{}",
        failures.len(),
        6 * CARTS,
        failures.join("\n")
    );
}

// ------------------------------------------------------------------ 2. the last line

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_for_the_last_line_gives_one_200_and_one_422() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;

    // 99 lines, added a few at a time (distinct lines: concurrency is fine).
    let products: Vec<String> = (1..=99).map(|n| format!("line-{n:03}")).collect();
    for chunk in products.chunks(11) {
        let replies = all_at_once(chunk.iter().map(|p| add(&guest, p, 1)).collect()).await;
        for (product, reply) in chunk.iter().zip(&replies) {
            reply.cart(&format!("add {product}"));
        }
    }
    let full = guest.current_cart().await;
    assert_eq!(full.line_count, 99);
    assert_eq!(full.version, 99);

    let replies = all_at_once(vec![add(&guest, "last-a", 1), add(&guest, "last-b", 1)]).await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 422],
        "two adds racing for the 100th line: exactly one wins: {} / {}",
        replies[0],
        replies[1]
    );
    let (winner, loser, won, lost) = if replies[0].status == 200 {
        (&replies[0], &replies[1], "last-a", "last-b")
    } else {
        (&replies[1], &replies[0], "last-b", "last-a")
    };
    loser
        .problem(422, "the add that lost the race for the last line")
        .assert_type("cart-limit-exceeded", "the add that lost the race");
    let cart = winner.cart("the add that won the race for the last line");
    assert_eq!(cart.line_count, 100);
    assert_eq!(cart.version, 100);
    assert_eq!(cart.quantity_of(won), Some(1));
    assert_eq!(cart.quantity_of(lost), None);

    let stored = platform
        .db_cart(guest.cart_id)
        .await
        .expect("a stored cart");
    assert_eq!(stored.lines.len(), 100, "Postgres holds exactly 100 lines");
    platform
        .assert_db_matches(&cart, "after the race for the last line")
        .await;
    assert_unchanged(&platform, &guest, &cart, "the race for the last line").await;
}

// ------------------------------------------------------------------ 3. If-Match

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_412_and_428() {
    let platform =
        Platform::start(PlatformOptions::new().env("CART_REQUIRE_IF_MATCH_ON_PUT", "true")).await;
    let guest = platform.start_guest_session().await;

    // POST needs no If-Match, even on a server that requires it on PUT.
    guest
        .add_item("sku-1", 2)
        .await
        .cart("POST without If-Match");
    let current = add(&guest, "sku-1", 1);
    let current = guest
        .send(current)
        .await
        .cart("a second POST without If-Match");
    assert_eq!(current.version, 2);

    let stale = 1;
    let mutations = [
        ("POST with a stale If-Match", add(&guest, "sku-2", 1)),
        ("PUT with a stale If-Match", set(&guest, "sku-1", 9)),
        (
            "DELETE a line with a stale If-Match",
            remove(&guest, "sku-1"),
        ),
        ("DELETE the cart with a stale If-Match", clear(&guest)),
    ];
    for (what, request) in mutations {
        let reply = guest.send(if_match(request, stale)).await;
        let problem = reply.problem(412, what);
        problem.assert_type("precondition-failed", what);
        let shown = CartView::parse(&problem.body["cart"], &format!("{what}: `cart`"));
        assert_eq!(shown.cart_id, current.cart_id, "{what}: {reply}");
        assert_eq!(shown.version, current.version, "{what}: {reply}");
        assert_eq!(shown.lines(), current.lines(), "{what}: {reply}");
        assert_eq!(
            reply.header("etag"),
            Some("\"2\""),
            "{what}: a 412 carries the ETag of the current cart: {reply}"
        );
        assert_unchanged(&platform, &guest, &current, what).await;
    }

    let what = "PUT without If-Match when the server requires it";
    let reply = guest.send(set(&guest, "sku-1", 5)).await;
    reply
        .problem(428, what)
        .assert_type("precondition-required", what);
    assert_unchanged(&platform, &guest, &current, what).await;

    // A 428 is not an outcome an Idempotency-Key stores: the corrected retry with the
    // same key is evaluated, not refused as a reuse.
    let what = "PUT without If-Match, with an Idempotency-Key";
    guest
        .send(keyed(set(&guest, "sku-1", 5), "put-428"))
        .await
        .problem(428, what);
    assert_unchanged(&platform, &guest, &current, what).await;

    let cart = guest
        .send(keyed(if_match(set(&guest, "sku-1", 5), 2), "put-428"))
        .await
        .cart("PUT with the current If-Match");
    assert_eq!(cart.version, 3);
    assert_eq!(cart.lines(), lines(&[("sku-1", 5)]));

    // Only PUT requires it: DELETE of a line still applies to the latest version.
    guest.add_item("sku-2", 1).await.cart("POST sku-2");
    let cart = guest
        .send(remove(&guest, "sku-2"))
        .await
        .cart("DELETE a line without If-Match");
    assert_eq!(cart.version, 5);
    assert_eq!(cart.lines(), lines(&[("sku-1", 5)]));
    platform.assert_db_matches(&cart, "after If-Match").await;
}

// ------------------------------------------------------------------ 4. Idempotency-Key

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_change_nothing() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;

    // The first request: applied, stored.
    let first = guest.send(keyed(add(&guest, "sku-1", 2), "key-1")).await;
    let cart = first.cart("POST with Idempotency-Key key-1");
    assert!(
        !first.is_replay(),
        "the first request is no replay: {first}"
    );
    assert_eq!(cart.version, 1);

    // The same request again: the stored outcome, byte for byte, and nothing changes.
    let retry = guest.send(keyed(add(&guest, "sku-1", 2), "key-1")).await;
    assert_replay_of(&retry, &first, "the same POST with key-1 again");
    assert_unchanged(&platform, &guest, &cart, "a retry of key-1").await;

    // The same body with its keys in another order and other whitespace is the same request.
    let reordered = guest
        .send(keyed(
            guest
                .request(Method::POST, "/api/v1/cart/items")
                .header("content-type", "application/json")
                .body("{ \"quantity\" : 2,\n  \"product_id\":\"sku-1\" }"),
            "key-1",
        ))
        .await;
    assert_replay_of(&reordered, &first, "key-1 with the body's keys reordered");
    assert_unchanged(&platform, &guest, &cart, "a reordered retry of key-1").await;

    // The same key on another request: 422, nothing done.
    let reuses = [
        (
            "key-1 with another quantity",
            keyed(add(&guest, "sku-1", 3), "key-1"),
        ),
        ("key-1 on a PUT", keyed(set(&guest, "sku-1", 2), "key-1")),
        (
            "key-1 with an If-Match added",
            keyed(if_match(add(&guest, "sku-1", 2), 1), "key-1"),
        ),
    ];
    for (what, request) in reuses {
        let reply = guest.send(request).await;
        reply
            .problem(422, what)
            .assert_type("idempotency-key-reused", what);
        assert_unchanged(&platform, &guest, &cart, what).await;
    }

    // A 422 (limit) outcome is stored too, and replayed even once the change would fit.
    let limit = guest
        .send(keyed(add(&guest, "sku-1", 98), "key-limit"))
        .await;
    limit
        .problem(422, "2 + 98 on one line")
        .assert_type("cart-limit-exceeded", "2 + 98 on one line");
    assert!(!limit.is_replay(), "{limit}");
    assert_replay_of(
        &guest
            .send(keyed(add(&guest, "sku-1", 98), "key-limit"))
            .await,
        &limit,
        "key-limit again",
    );
    let cart = guest
        .set_quantity("sku-1", 1)
        .await
        .cart("make room on sku-1");
    assert_eq!(cart.version, 2);
    assert_replay_of(
        &guest
            .send(keyed(add(&guest, "sku-1", 98), "key-limit"))
            .await,
        &limit,
        "key-limit after room was made (a re-evaluation would give 99)",
    );
    assert_unchanged(&platform, &guest, &cart, "key-limit replayed").await;

    // A 412 is stored: its replay shows the cart as it was then, not as it is now.
    let stale = guest
        .send(keyed(if_match(add(&guest, "sku-2", 1), 1), "key-412"))
        .await;
    stale
        .problem(412, "a stale If-Match with key-412")
        .assert_type("precondition-failed", "key-412");
    let cart = guest.add_item("sku-3", 1).await.cart("add sku-3");
    assert_eq!(cart.version, 3);
    assert_replay_of(
        &guest
            .send(keyed(if_match(add(&guest, "sku-2", 1), 1), "key-412"))
            .await,
        &stale,
        "key-412 after the cart moved on",
    );
    assert_unchanged(&platform, &guest, &cart, "key-412 replayed").await;

    // A retry of a request that succeeded with If-Match is its stored 200, even though
    // that If-Match is stale by now (a retry after a lost response must not get 412).
    let conditional = guest
        .send(keyed(if_match(add(&guest, "sku-2", 1), 3), "key-if-match"))
        .await;
    let cart = conditional.cart("POST with the current If-Match and key-if-match");
    assert_eq!(cart.version, 4);
    let cart = guest.add_item("sku-2", 1).await.cart("add sku-2 again");
    assert_replay_of(
        &guest
            .send(keyed(if_match(add(&guest, "sku-2", 1), 3), "key-if-match"))
            .await,
        &conditional,
        "key-if-match after the cart moved on",
    );
    assert_unchanged(&platform, &guest, &cart, "key-if-match replayed").await;

    // A 400 is not stored: the corrected request with the same key is evaluated.
    let what = "a non-integer quantity with key-400";
    guest
        .send(keyed(
            guest
                .request(Method::POST, "/api/v1/cart/items")
                .json(&json!({"product_id": "sku-4", "quantity": "x"})),
            "key-400",
        ))
        .await
        .problem(400, what);
    assert_unchanged(&platform, &guest, &cart, what).await;
    let fixed = guest.send(keyed(add(&guest, "sku-4", 1), "key-400")).await;
    let cart = fixed.cart("the corrected request with key-400");
    assert!(!fixed.is_replay(), "a 400 was not stored: {fixed}");
    assert_eq!(cart.version, 6);
    assert_replay_of(
        &guest.send(keyed(add(&guest, "sku-4", 1), "key-400")).await,
        &fixed,
        "key-400 again",
    );

    // PUT, DELETE of a line and DELETE of the cart: a replay never redoes the change.
    let put = guest.send(keyed(set(&guest, "sku-4", 7), "key-put")).await;
    assert_eq!(put.cart("PUT sku-4 7 with key-put").version, 7);
    let cart = guest.set_quantity("sku-4", 3).await.cart("PUT sku-4 3");
    assert_replay_of(
        &guest.send(keyed(set(&guest, "sku-4", 7), "key-put")).await,
        &put,
        "key-put after sku-4 was set to 3",
    );
    assert_unchanged(&platform, &guest, &cart, "key-put replayed").await;

    let delete = guest.send(keyed(remove(&guest, "sku-3"), "key-del")).await;
    assert_eq!(delete.cart("DELETE sku-3 with key-del").version, 9);
    let cart = guest.add_item("sku-3", 1).await.cart("add sku-3 back");
    assert_replay_of(
        &guest.send(keyed(remove(&guest, "sku-3"), "key-del")).await,
        &delete,
        "key-del after sku-3 came back",
    );
    assert_unchanged(&platform, &guest, &cart, "key-del replayed").await;

    let emptied = guest.send(keyed(clear(&guest), "key-clear")).await;
    assert_eq!(emptied.cart("DELETE the cart with key-clear").version, 11);
    let cart = guest.add_item("sku-5", 2).await.cart("add sku-5");
    assert_replay_of(
        &guest.send(keyed(clear(&guest), "key-clear")).await,
        &emptied,
        "key-clear after sku-5 was added",
    );
    assert_unchanged(&platform, &guest, &cart, "key-clear replayed").await;

    // Keys of 1–255 visible ASCII characters; anything else is a 400 naming the header,
    // checked before anything is done (even on DELETE /cart).
    let longest = "k".repeat(255);
    let accepted = guest.send(keyed(add(&guest, "sku-6", 1), &longest)).await;
    let cart = accepted.cart("a 255-character key");
    assert_eq!(cart.version, 13);
    let cart = guest
        .send(keyed(add(&guest, "sku-6", 1), "~"))
        .await
        .cart("a 1-character key");
    assert_eq!(cart.version, 14);
    let too_long = "k".repeat(256);
    let invalid: [(&str, &[u8]); 4] = [
        ("an empty Idempotency-Key", b""),
        ("a 256-character Idempotency-Key", too_long.as_bytes()),
        ("an Idempotency-Key with a space", b"key with space"),
        ("a non-ASCII Idempotency-Key", "clé-1".as_bytes()),
    ];
    for (what, key) in invalid {
        for (method, request) in [
            ("POST", add(&guest, "sku-9", 1)),
            ("DELETE /cart", clear(&guest)),
        ] {
            let what = format!("{method} with {what}");
            let reply = guest.send(request.header("idempotency-key", key)).await;
            reply
                .problem(400, &what)
                .assert_field("Idempotency-Key", &what);
            assert_unchanged(&platform, &guest, &cart, &what).await;
        }
    }

    // Keys are scoped to the cart: another guest's key-1 and key-limit are new to it.
    let other = platform.start_guest_session().await;
    let theirs = other.send(keyed(add(&other, "sku-1", 2), "key-1")).await;
    let their_cart = theirs.cart("another guest's POST with key-1");
    assert!(!theirs.is_replay(), "key-1 of another cart: {theirs}");
    assert_eq!(their_cart.cart_id, other.cart_id);
    assert_eq!(their_cart.version, 1);
    let theirs = other
        .send(keyed(add(&other, "sku-1", 90), "key-limit"))
        .await;
    let their_cart = theirs.cart("another guest's POST with key-limit (fits in their cart)");
    assert!(!theirs.is_replay(), "{theirs}");
    assert_eq!(their_cart.lines(), lines(&[("sku-1", 92)]));
    platform
        .assert_db_matches(&their_cart, "the other guest's cart")
        .await;
    assert_unchanged(&platform, &guest, &cart, "another guest used the same keys").await;
}

/// Fails unless `replay` is `original` again: same status, byte-identical body, the
/// same `ETag` on a 200, and `Idempotent-Replayed: true`.
#[track_caller]
fn assert_replay_of(replay: &Reply, original: &Reply, what: &str) {
    assert_eq!(
        replay.status, original.status,
        "{what}: a replay has the stored status; original {original}, replay {replay}"
    );
    assert_eq!(
        replay.text, original.text,
        "{what}: a replay has the stored body byte for byte"
    );
    assert!(
        replay.is_replay(),
        "{what}: a replay carries `Idempotent-Replayed: true`: {replay}"
    );
    if original.status == 200 {
        assert_eq!(
            replay.header("etag"),
            original.header("etag"),
            "{what}: a replayed 200 carries the stored ETag: {replay}"
        );
    }
}

// ------------------------------------------------------------------ 5. in flight

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_key_gets_409() {
    const N: usize = 20;
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    let mut expected_version = 0;
    let mut conflicts = 0;

    for round in 0..3 {
        let key = format!("in-flight-{round}");
        let product = format!("sku-{round}");
        let replies = all_at_once(
            (0..N)
                .map(|_| keyed(add(&guest, &product, 2), &key))
                .collect(),
        )
        .await;

        let mut originals = Vec::new();
        let mut replays = Vec::new();
        for (i, reply) in replies.iter().enumerate() {
            let what = format!("round {round}, request #{i} with {key}");
            match reply.status {
                200 if reply.is_replay() => replays.push(reply),
                200 => originals.push(reply),
                409 => {
                    conflicts += 1;
                    reply
                        .problem(409, &what)
                        .assert_type("idempotency-key-in-flight", &what);
                    assert_eq!(
                        reply.header("retry-after").map(str::trim),
                        Some("1"),
                        "{what}: a 409 in flight carries Retry-After: 1: {reply}"
                    );
                }
                _ => panic!("{what}: expected 200 or 409, got {reply}"),
            }
        }
        assert_eq!(
            originals.len(),
            1,
            "round {round}: exactly one of {N} requests with the same key is the original \
             (the others are replays or 409s): {originals:#?}"
        );
        let original = originals[0];
        let cart = original.cart(&format!("round {round}: the original"));
        expected_version += 1;
        assert_eq!(cart.version, expected_version, "applied once: {original}");
        assert_eq!(
            cart.quantity_of(&product),
            Some(2),
            "applied once: {original}"
        );
        for replay in replays {
            assert_replay_of(
                replay,
                original,
                &format!("round {round}: a concurrent replay"),
            );
        }

        // Once done, the key replays.
        let again = guest.send(keyed(add(&guest, &product, 2), &key)).await;
        assert_replay_of(
            &again,
            original,
            &format!("round {round}: {key} afterwards"),
        );
        let now = guest.current_cart().await;
        assert_eq!(
            now.version, expected_version,
            "round {round}: one change only"
        );
        assert_eq!(now.quantity_of(&product), Some(2), "round {round}");
        platform
            .assert_db_matches(&now, &format!("after round {round}"))
            .await;
    }
    eprintln!(
        "an_in_flight_key_gets_409: {conflicts} of {} requests got 409",
        3 * N
    );
}

// ------------------------------------------------------------------ 6. offline batches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_batches_apply_each_op_once() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    guest.add_item("sku-3", 2).await.cart("add sku-3");

    let ids: Vec<String> = (0..5).map(|_| op_id()).collect();
    let batch = vec![
        op_add(&ids[0], "sku-1", 2),
        op_add(&ids[1], "sku-2", 1),
        op_set(&ids[2], "sku-2", 5),
        op_add(&ids[3], "sku-1", 1),
        op_remove(&ids[4], "sku-3"),
    ];
    let what = "a batch of 5 ops";
    let synced = guest.sync(1, &batch).await.ops(what);
    assert_statuses(&synced, &ids, &["applied"; 5], what);
    assert_eq!(
        synced.cart.lines(),
        lines(&[("sku-1", 3), ("sku-2", 5)]),
        "{what}"
    );
    assert_eq!(
        synced.cart.version, 6,
        "{what}: one version per op that changed the cart"
    );
    platform.assert_db_matches(&synced.cart, what).await;
    let after_batch = synced.cart;

    let what = "the same batch again";
    let replayed = guest.sync(1, &batch).await.ops(what);
    assert_statuses(&replayed, &ids, &["duplicate"; 5], what);
    assert_eq!(replayed.cart.version, 6, "{what}");
    assert_eq!(replayed.cart.lines(), after_batch.lines(), "{what}");
    assert_unchanged(&platform, &guest, &after_batch, what).await;

    let what = "the first two ops again plus a new one";
    let new_id = op_id();
    let partial = guest
        .sync(
            6,
            &[
                batch[0].clone(),
                batch[1].clone(),
                op_add(&new_id, "sku-4", 1),
            ],
        )
        .await
        .ops(what);
    assert_statuses(
        &partial,
        &[ids[0].clone(), ids[1].clone(), new_id],
        &["duplicate", "duplicate", "applied"],
        what,
    );
    assert_eq!(partial.cart.version, 7, "{what}");
    assert_eq!(
        partial.cart.lines(),
        lines(&[("sku-1", 3), ("sku-2", 5), ("sku-4", 1)]),
        "{what}"
    );
    platform.assert_db_matches(&partial.cart, what).await;

    let what = "one op_id twice in a batch";
    let twice = op_id();
    let repeated = guest
        .sync(7, &[op_add(&twice, "sku-5", 1), op_add(&twice, "sku-5", 1)])
        .await
        .ops(what);
    assert_statuses(
        &repeated,
        &[twice.clone(), twice],
        &["applied", "duplicate"],
        what,
    );
    assert_eq!(repeated.cart.version, 8, "{what}");
    assert_eq!(repeated.cart.quantity_of("sku-5"), Some(1), "{what}");
    platform.assert_db_matches(&repeated.cart, what).await;

    // Ops that change nothing are applied without a new version.
    let what = "a batch of no-ops";
    let noop_ids = [op_id(), op_id()];
    let noops = guest
        .sync(
            8,
            &[
                op_remove(&noop_ids[0], "sku-absent"),
                op_set(&noop_ids[1], "sku-5", 1),
            ],
        )
        .await
        .ops(what);
    assert_statuses(&noops, &noop_ids, &["applied", "applied"], what);
    assert_eq!(
        noops.cart.version, 8,
        "{what}: a no-op does not bump the version"
    );
    assert_unchanged(&platform, &guest, &repeated.cart, what).await;

    // If-Match holds for a batch too: a stale one refuses it whole, and records none of
    // its op ids.
    let what = "a batch with a stale If-Match";
    let refused_id = op_id();
    let stale = guest
        .send(if_match(
            guest
                .request(Method::POST, "/api/v1/cart/ops")
                .json(&json!({"base_version": 8, "ops": [op_add(&refused_id, "sku-6", 1)]})),
            7,
        ))
        .await;
    stale
        .problem(412, what)
        .assert_type("precondition-failed", what);
    assert_unchanged(&platform, &guest, &repeated.cart, what).await;
    let what = "the op of the refused batch, sent again";
    let resent = guest
        .sync(8, &[op_add(&refused_id, "sku-6", 1)])
        .await
        .ops(what);
    assert_statuses(&resent, &[&refused_id], &["applied"], what);
    assert_eq!(resent.cart.version, 9, "{what}");
    let back = guest.remove_item("sku-6").await.cart("remove sku-6 again");
    assert_eq!(back.version, 10);
    assert_eq!(back.lines(), repeated.cart.lines());

    // An Idempotency-Key on a batch: the retry is the stored response (results as they
    // were, `applied`), not a re-evaluation (which would say `duplicate`).
    let keyed_id = op_id();
    let body = json!({"base_version": 10, "ops": [op_set(&keyed_id, "sku-5", 4)]});
    let ops_request = |body: &Value| {
        keyed(
            guest.request(Method::POST, "/api/v1/cart/ops").json(body),
            "ops-key",
        )
    };
    let first = guest.send(ops_request(&body)).await;
    let what = "a batch with an Idempotency-Key";
    let applied = first.ops(what);
    assert_statuses(&applied, &[&keyed_id], &["applied"], what);
    assert_eq!(applied.cart.version, 11, "{what}");
    assert_replay_of(
        &guest.send(ops_request(&body)).await,
        &first,
        "the keyed batch again",
    );
    let other_body = json!({"base_version": 10, "ops": [op_set(&keyed_id, "sku-5", 6)]});
    let what = "ops-key with another batch";
    guest
        .send(ops_request(&other_body))
        .await
        .problem(422, what)
        .assert_type("idempotency-key-reused", what);
    assert_unchanged(&platform, &guest, &applied.cart, "the keyed batch replayed").await;
}

#[track_caller]
fn assert_statuses<S: AsRef<str>>(reply: &e2e::OpsReply, ids: &[S], statuses: &[&str], what: &str) {
    let expected: Vec<(String, String)> = ids
        .iter()
        .zip(statuses)
        .map(|(id, s)| (id.as_ref().to_owned(), (*s).to_owned()))
        .collect();
    assert_eq!(
        reply.statuses(),
        expected,
        "{what}: one result per op, in order: {}",
        reply.raw
    );
}

// ------------------------------------------------------------------ 7. offline conflicts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_set_on_a_line_changed_since_base_version_conflicts() {
    let platform = platform().await;
    // Two devices of one guest (the same session is fine: the cart is what matters).
    let device_a = platform.start_guest_session().await;
    let device_b = device_a.clone();

    for (product, quantity) in [("X", 2), ("Y", 3), ("Z", 1), ("R", 1)] {
        device_a.add_item(product, quantity).await.cart("fill");
    }
    let base = device_a.current_cart().await;
    assert_eq!(base.version, 4);

    // B changes X, creates N and removes R after A's base version.
    device_b.set_quantity("X", 5).await.cart("B sets X to 5");
    device_b.add_item("N", 1).await.cart("B adds N");
    let moved = device_b.remove_item("R").await.cart("B removes R");
    assert_eq!(moved.version, 7);

    let ids: Vec<String> = (0..9).map(|_| op_id()).collect();
    let what = "A's offline ops on base version 4";
    let synced = device_a
        .sync(
            4,
            &[
                op_set(&ids[0], "X", 7),
                op_remove(&ids[1], "X"),
                op_add(&ids[2], "X", 1),
                op_set(&ids[3], "Y", 4),
                op_remove(&ids[4], "Z"),
                op_set(&ids[5], "N", 2),
                op_set(&ids[6], "R", 2),
                op_remove(&ids[7], "W"),
                op_add(&ids[8], "Y", 1),
            ],
        )
        .await
        .ops(what);
    assert_statuses(
        &synced,
        &ids,
        &[
            "conflict", // set X: B changed X
            "conflict", // remove X: B changed X
            "applied",  // add X 1: rebased onto B's 5
            "applied",  // set Y: untouched since base
            "applied",  // remove Z: untouched since base
            "conflict", // set N: created after base
            "conflict", // set R: removed after base
            "applied",  // remove W: absent and unchanged (a no-op)
            "applied",  // add Y 1
        ],
        what,
    );
    assert_eq!(
        synced.cart.lines(),
        lines(&[("X", 6), ("Y", 5), ("N", 1)]),
        "{what}"
    );
    assert_eq!(synced.cart.version, 11, "{what}: four ops changed the cart");
    platform.assert_db_matches(&synced.cart, what).await;

    // Clearing the cart changes every line it held.
    let cleared = device_b.empty_cart().await.cart("B empties the cart");
    assert_eq!(cleared.version, 12);
    let ids: Vec<String> = (0..3).map(|_| op_id()).collect();
    let what = "A's offline ops on base version 11, after B emptied the cart";
    let synced = device_a
        .sync(
            11,
            &[
                op_set(&ids[0], "Y", 2),
                op_remove(&ids[1], "N"),
                op_add(&ids[2], "Y", 1),
            ],
        )
        .await
        .ops(what);
    assert_statuses(&synced, &ids, &["conflict", "conflict", "applied"], what);
    assert_eq!(synced.cart.lines(), lines(&[("Y", 1)]), "{what}");
    assert_eq!(synced.cart.version, 13, "{what}");
    platform.assert_db_matches(&synced.cart, what).await;

    // An add past 99 is rejected, and that outcome is what the op_id keeps: replayed
    // once there is room, it is a duplicate, not applied.
    let big = op_id();
    let what = "an offline add of 99 onto a line of 1";
    let rejected = device_a.sync(13, &[op_add(&big, "Y", 99)]).await.ops(what);
    assert_statuses(&rejected, &[&big], &["rejected"], what);
    assert_eq!(rejected.cart.version, 13, "{what}");
    assert_unchanged(&platform, &device_a, &synced.cart, what).await;

    let roomy = device_b.remove_item("Y").await.cart("B removes Y");
    assert_eq!(roomy.version, 14);
    let what = "the rejected add replayed once there is room";
    let replayed = device_a.sync(14, &[op_add(&big, "Y", 99)]).await.ops(what);
    assert_statuses(&replayed, &[big], &["duplicate"], what);
    assert_eq!(replayed.cart.version, 14, "{what}");
    assert!(replayed.cart.items.is_empty(), "{what}: {}", replayed.raw);
    assert_unchanged(&platform, &device_a, &roomy, what).await;
}

// ------------------------------------------------------------------ 8. malformed batches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_apply_nothing() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    let before = guest.add_item("sku-1", 1).await.cart("add sku-1");

    // Every malformed batch starts with this valid op: it must not be applied, nor its
    // op_id remembered.
    let valid_id = op_id();
    let valid = op_add(&valid_id, "sku-2", 1);
    let batch = |second: Value| json!({"base_version": 1, "ops": [valid.clone(), second]});
    let too_many: Vec<Value> = std::iter::once(valid.clone())
        .chain((0..100).map(|_| op_add(&op_id(), "sku-1", 1)))
        .collect();

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "an unknown op type",
            batch(
                json!({"op_id": op_id(), "type": "multiply", "product_id": "sku-1", "quantity": 2}),
            ),
            "ops[1].type",
        ),
        (
            "an add without quantity",
            batch(json!({"op_id": op_id(), "type": "add", "product_id": "sku-1"})),
            "ops[1].quantity",
        ),
        (
            "an add of 0",
            batch(op_add(&op_id(), "sku-1", 0)),
            "ops[1].quantity",
        ),
        (
            "a set of -1",
            batch(op_set(&op_id(), "sku-1", -1)),
            "ops[1].quantity",
        ),
        (
            "a set with a string quantity",
            batch(json!({"op_id": op_id(), "type": "set", "product_id": "sku-1", "quantity": "2"})),
            "ops[1].quantity",
        ),
        (
            "a remove with a quantity",
            batch(
                json!({"op_id": op_id(), "type": "remove", "product_id": "sku-1", "quantity": 1}),
            ),
            "ops[1].quantity",
        ),
        (
            "a bad product_id",
            batch(op_add(&op_id(), "bad id!", 1)),
            "ops[1].product_id",
        ),
        (
            "a 65-character product_id",
            batch(op_add(&op_id(), &"p".repeat(65), 1)),
            "ops[1].product_id",
        ),
        (
            "an op without op_id",
            batch(json!({"type": "add", "product_id": "sku-1", "quantity": 1})),
            "ops[1].op_id",
        ),
        (
            "an empty op_id",
            batch(op_add("", "sku-1", 1)),
            "ops[1].op_id",
        ),
        (
            "a 65-character op_id",
            batch(op_add(&"o".repeat(65), "sku-1", 1)),
            "ops[1].op_id",
        ),
        (
            "an op_id with a space",
            batch(op_add("op 1", "sku-1", 1)),
            "ops[1].op_id",
        ),
        (
            "an unknown field in an op",
            batch(
                json!({"op_id": op_id(), "type": "add", "product_id": "sku-1", "quantity": 1, "price": 5}),
            ),
            "ops[1].price",
        ),
        (
            "an unknown field at the top level",
            json!({"base_version": 1, "ops": [valid.clone()], "force": true}),
            "force",
        ),
        (
            "101 ops",
            json!({"base_version": 1, "ops": too_many}),
            "ops",
        ),
        ("no ops", json!({"base_version": 1, "ops": []}), "ops"),
        (
            "ops that is not an array",
            json!({"base_version": 1, "ops": {"0": valid.clone()}}),
            "ops",
        ),
        (
            "no base_version",
            json!({"ops": [valid.clone()]}),
            "base_version",
        ),
        (
            "a negative base_version",
            json!({"base_version": -1, "ops": [valid.clone()]}),
            "base_version",
        ),
        (
            "a string base_version",
            json!({"base_version": "1", "ops": [valid.clone()]}),
            "base_version",
        ),
    ];
    for (what, body, field) in cases {
        let what = format!("a batch with {what}");
        let reply = guest.post_ops(body).await;
        let problem = reply.problem(400, &what);
        assert!(
            !problem.errors().is_empty(),
            "{what}: a 400 with `errors`: {reply}"
        );
        problem.assert_field(field, &what);
        assert_unchanged(&platform, &guest, &before, &what).await;
    }

    let what = "a batch that is not an object";
    guest
        .post_ops(json!([valid.clone()]))
        .await
        .problem(400, what);
    assert_unchanged(&platform, &guest, &before, what).await;

    // The valid op of all those batches was never applied, so it is new now.
    let what = "the valid op alone";
    let synced = guest.sync(1, &[valid]).await.ops(what);
    assert_statuses(&synced, &[valid_id], &["applied"], what);
    assert_eq!(synced.cart.version, 2, "{what}");
    assert_eq!(
        synced.cart.lines(),
        lines(&[("sku-1", 1), ("sku-2", 1)]),
        "{what}"
    );
    platform.assert_db_matches(&synced.cart, what).await;
}

// ------------------------------------------------------------------ 9. history checker

/// A cart mutation of the random history, and its effect on a model cart.
#[derive(Debug, Clone)]
enum Op {
    Add(&'static str, i64),
    Set(&'static str, i64),
    Remove(&'static str),
    Clear,
}

/// product id → quantity.
type Model = BTreeMap<String, i64>;

const MAX_LINE_QUANTITY: i64 = 99;
const MAX_LINES: usize = 100;

impl Op {
    fn request(&self, guest: &Guest) -> RequestBuilder {
        match self {
            Op::Add(p, q) => add(guest, p, *q),
            Op::Set(p, q) => set(guest, p, *q),
            Op::Remove(p) => remove(guest, p),
            Op::Clear => clear(guest),
        }
    }

    /// The model after this op, or `None` when it breaks a limit (a 422).
    fn apply(&self, cart: &Model) -> Option<Model> {
        let mut next = cart.clone();
        match self {
            Op::Add(p, q) => {
                let now = cart.get(*p).copied().unwrap_or(0);
                if now + q > MAX_LINE_QUANTITY || (now == 0 && cart.len() >= MAX_LINES) {
                    return None;
                }
                next.insert((*p).to_owned(), now + q);
            }
            Op::Set(p, 0) | Op::Remove(p) => {
                next.remove(*p);
            }
            Op::Set(p, q) => {
                if !cart.contains_key(*p) && cart.len() >= MAX_LINES {
                    return None;
                }
                next.insert((*p).to_owned(), *q);
            }
            Op::Clear => next.clear(),
        }
        Some(next)
    }
}

fn model_of(cart: &CartView) -> Model {
    cart.lines().into_iter().collect()
}

/// One request of the history and what came back.
#[derive(Debug)]
struct Record {
    client: usize,
    seq: usize,
    op: Op,
    if_match: Option<i64>,
    status: u16,
    /// The cart of a 200, or the current cart a 412 carried.
    cart: Option<CartView>,
    reply: String,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client {} #{}: {:?} (If-Match {:?}) → {} {}",
            self.client, self.seq, self.op, self.if_match, self.status, self.reply
        )
    }
}

fn random_op(rng: &mut StdRng) -> Op {
    const PRODUCTS: [&str; 6] = ["p-1", "p-2", "p-3", "p-4", "p-5", "p-6"];
    let product = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
    match rng.random_range(0..100) {
        // Now and then a big add, so that some hit the 99 limit (422).
        0..=5 => Op::Add(product, rng.random_range(90..=99)),
        6..=42 => Op::Add(product, rng.random_range(1..=5)),
        43..=72 => Op::Set(product, rng.random_range(0..=10)),
        73..=96 => Op::Remove(product),
        _ => Op::Clear,
    }
}

async fn run_client(guest: Guest, client: usize, seed: u64, ops: usize) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut last_seen: i64 = 0;
    let mut records = Vec::with_capacity(ops);
    for seq in 0..ops {
        let op = random_op(&mut rng);
        let if_match_version = rng.random_bool(0.3).then_some(last_seen);
        let mut request = op.request(&guest);
        if let Some(v) = if_match_version {
            request = if_match(request, v);
        }
        // Half the requests carry an Idempotency-Key, and some of those are retried at
        // once, as after a lost response.
        let key = rng.random_bool(0.5).then(op_id);
        if let Some(key) = &key {
            request = keyed(request, key);
        }
        let retry = key
            .as_ref()
            .filter(|_| rng.random_bool(0.3))
            .and_then(|_| request.try_clone());
        let reply = guest.send(request).await;
        let what = format!("client {client} #{seq}: {op:?} (If-Match {if_match_version:?})");
        if let Some(retry) = retry {
            let again = guest.send(retry).await;
            assert_replay_of(&again, &reply, &format!("{what}, retried with its key"));
        }
        let cart = match reply.status {
            200 => Some(reply.cart(&what)),
            412 => {
                let problem = reply.problem(412, &what);
                problem.assert_type("precondition-failed", &what);
                Some(CartView::parse(
                    &problem.body["cart"],
                    &format!("{what}: `cart`"),
                ))
            }
            422 => {
                reply
                    .problem(422, &what)
                    .assert_type("cart-limit-exceeded", &what);
                None
            }
            _ => panic!("{what}: expected 200, 412 or 422, got {reply}"),
        };
        if let Some(cart) = &cart {
            assert_eq!(cart.cart_id, guest.cart_id, "{what}");
            last_seen = cart.version;
        }
        records.push(Record {
            client,
            seq,
            op,
            if_match: if_match_version,
            status: reply.status,
            cart,
            reply: reply.text,
        });
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_of_random_concurrent_operations_is_exactly_what_was_acknowledged() {
    const CLIENTS: usize = 6;
    const OPS: usize = 40;
    let seed: u64 = std::env::var("E2E_HISTORY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("history seed: {seed} (rerun with E2E_HISTORY_SEED={seed})");

    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for client in 0..CLIENTS {
        clients.spawn(run_client(guest.clone(), client, seed, OPS));
    }
    let history: Vec<Record> = clients.join_all().await.into_iter().flatten().collect();
    let took = started.elapsed();

    let fail = |message: String| -> ! {
        let mut all: Vec<&Record> = history.iter().collect();
        all.sort_by_key(|r| (r.cart.as_ref().map_or(-1, |c| c.version), r.client, r.seq));
        let lines: Vec<String> = all.iter().map(|r| format!("  {r}")).collect();
        panic!(
            "history seed {seed}: {message}\nthe whole history, by version:\n{}",
            lines.join("\n")
        )
    };

    let final_cart = guest.current_cart().await;
    let final_version = final_cart.version;
    let ok: Vec<&Record> = history.iter().filter(|r| r.status == 200).collect();
    let max_acked = ok
        .iter()
        .filter_map(|r| r.cart.as_ref())
        .map(|c| c.version)
        .max();
    if max_acked.unwrap_or(0) != final_version {
        fail(format!(
            "the cart is at version {final_version}, but the newest acknowledged version is \
             {max_acked:?}: a change nobody was told about, or one that was lost"
        ));
    }

    // Replay the acknowledged changes version by version through the model.
    let mut states: Vec<Model> = vec![Model::new()];
    let at = |records: &[&Record], v: i64| -> Vec<usize> {
        records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.cart.as_ref().is_some_and(|c| c.version == v))
            .map(|(i, _)| i)
            .collect()
    };
    for i in at(&ok, 0) {
        let r = ok[i];
        if r.op.apply(&states[0]).as_ref() != Some(&states[0]) || r.if_match.unwrap_or(0) != 0 {
            fail(format!(
                "a 200 at version 0 that is not a no-op on the empty cart: {r}"
            ));
        }
    }
    for v in 1..=final_version {
        let previous = states[(v - 1) as usize].clone();
        let group: Vec<&Record> = at(&ok, v).into_iter().map(|i| ok[i]).collect();
        let Some(first) = group.first() else {
            fail(format!(
                "no 200 response carries version {v}: versions must go 1..={final_version} \
                 without a gap"
            ));
        };
        let state = model_of(first.cart.as_ref().expect("a 200 has a cart"));
        for r in &group {
            if model_of(r.cart.as_ref().expect("a 200 has a cart")) != state {
                fail(format!(
                    "two 200 responses show version {v} with different lines:\n  {first}\n  {r}"
                ));
            }
        }
        if state == previous {
            fail(format!(
                "version {v} has the same lines as version {}: a no-op bumped the version",
                v - 1
            ));
        }
        // Exactly one of them made version v from v-1; the others changed nothing at v.
        let fits = |changer: usize| {
            group.iter().enumerate().all(|(i, r)| {
                if i == changer {
                    r.op.apply(&previous).as_ref() == Some(&state)
                        && r.if_match.is_none_or(|m| m == v - 1)
                } else {
                    r.op.apply(&state).as_ref() == Some(&state) && r.if_match.is_none_or(|m| m == v)
                }
            })
        };
        if !(0..group.len()).any(fits) {
            let shown: Vec<String> = group.iter().map(|r| format!("  {r}")).collect();
            fail(format!(
                "version {v} ({state:?}, from {previous:?}) is not one acknowledged change \
                 plus no-ops:\n{}",
                shown.join("\n")
            ));
        }
        states.push(state);
    }

    // A 412 changed nothing and showed a real state; a 422 changed nothing and was right
    // for some state the cart went through.
    for r in &history {
        match r.status {
            412 => {
                let cart = r.cart.as_ref().expect("a 412 has a cart");
                let shown = states.get(cart.version as usize);
                if shown != Some(&model_of(cart)) || r.if_match == Some(cart.version) {
                    fail(format!(
                        "a 412 whose cart is not the state at its version, or whose If-Match \
                         was current: {r}"
                    ));
                }
            }
            422 if states.iter().all(|s| r.op.apply(s).is_some()) => {
                fail(format!(
                    "a 422 for a change that fits every state the cart went through: {r}"
                ));
            }
            _ => {}
        }
    }

    // Each client saw the cart move forward only (its requests were sequential).
    for client in 0..CLIENTS {
        let mut seen = -1;
        for r in history.iter().filter(|r| r.client == client) {
            if let Some(cart) = &r.cart {
                if cart.version < seen {
                    fail(format!(
                        "client {client} saw version {} after version {seen}: {r}",
                        cart.version
                    ));
                }
                seen = cart.version;
            }
        }
    }

    let expected = &states[final_version as usize];
    if &model_of(&final_cart) != expected {
        fail(format!(
            "GET /api/v1/cart shows {:?}, the acknowledged history gives {expected:?}",
            final_cart.lines()
        ));
    }
    platform
        .assert_db_matches(&final_cart, "after the random history")
        .await;
    let count = |s: u16| history.iter().filter(|r| r.status == s).count();
    eprintln!(
        "history: {} requests in {took:?}: {} × 200, {} × 412, {} × 422; final version \
         {final_version}",
        history.len(),
        count(200),
        count(412),
        count(422)
    );
}

// ------------------------------------------------------------------ 10. Redis failing

/// One guest's cart as the test expects it: lines and version.
struct Expected {
    guest: Guest,
    lines: Model,
    version: i64,
    /// The slowest answer so far, and to what.
    slowest: (Duration, String),
}

impl Expected {
    fn new(guest: Guest) -> Self {
        Expected {
            guest,
            lines: Model::new(),
            version: 0,
            slowest: (Duration::ZERO, String::new()),
        }
    }

    /// Sends `op` (or a GET when `None`), checks it answers 200 within `budget` with
    /// exactly the expected cart, and returns the cart.
    async fn step(&mut self, op: Option<Op>, budget: Duration, when: &str) -> CartView {
        let request = match &op {
            Some(op) => op.request(&self.guest),
            None => self.guest.request(Method::GET, "/api/v1/cart"),
        };
        let what = format!(
            "{when}: {}",
            op.as_ref().map_or("GET".to_owned(), |o| format!("{o:?}"))
        );
        let started = Instant::now();
        let reply = self.guest.send(request).await;
        let took = started.elapsed();
        let cart = reply.cart(&what);
        assert!(
            took <= budget,
            "{what}: took {took:?}, more than {budget:?}"
        );
        if std::env::var_os("E2E_TRACE_LATENCY").is_some() {
            eprintln!("{took:?} {what}");
        }
        if took > self.slowest.0 {
            self.slowest = (took, what.clone());
        }
        if let Some(op) = &op {
            let next = op
                .apply(&self.lines)
                .expect("the test only makes changes that fit");
            if next != self.lines {
                self.version += 1;
            }
            self.lines = next;
        }
        assert_eq!(
            cart.version, self.version,
            "{what}: the version (a stale cart, or a change lost or doubled?): {reply}"
        );
        assert_eq!(model_of(&cart), self.lines, "{what}: the lines: {reply}");
        cart
    }
}

async fn cache_hits(platform: &Platform) -> f64 {
    platform
        .metric(
            platform.cart_svc_url(),
            "cart_cache_requests_total",
            &[("op", "get"), ("result", "hit")],
        )
        .await
        .unwrap_or(0.0)
}

async fn breaker_open(platform: &Platform) -> Option<f64> {
    platform
        .metric(platform.cart_svc_url(), "cart_cache_breaker_open", &[])
        .await
}

/// Reads `expected`'s cart until cart-svc serves it from Redis again (the breaker is
/// closed and the cache's get hits grow), for at most 15 s.
async fn until_the_cache_is_used(platform: &Platform, expected: &mut Expected, when: &str) {
    let hits_before = cache_hits(platform).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        expected.step(None, Duration::from_secs(1), when).await;
        let closed = breaker_open(platform).await == Some(0.0);
        if closed && cache_hits(platform).await > hits_before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: 15 s on, cart-svc still does not use its Redis (breaker open: {:?}, get \
             hits {hits_before} → {})",
            breaker_open(platform).await,
            cache_hits(platform).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_survive_redis_stopping_and_coming_back() {
    const BUDGET: Duration = Duration::from_secs(1);
    let platform = Platform::start(PlatformOptions::new().own_redis()).await;
    let mut ann = Expected::new(platform.start_guest_session().await);
    let ops = |i: usize| match i % 4 {
        0 => Op::Add("sku-a", 1),
        1 => Op::Set("sku-b", (i % 7 + 1) as i64),
        2 => Op::Add("sku-c", 2),
        _ => Op::Remove("sku-c"),
    };

    // Before: the cache serves reads.
    for i in 0..4 {
        ann.step(Some(ops(i)), BUDGET, "before").await;
    }
    ann.step(None, BUDGET, "before").await;
    ann.step(None, BUDGET, "before").await;
    assert!(
        cache_hits(&platform).await > 0.0,
        "reads of a cart just written are cache hits while Redis is up"
    );
    assert_eq!(
        breaker_open(&platform).await,
        Some(0.0),
        "the breaker is closed"
    );

    // Redis dies: cart-svc stays ready and serves every request from Postgres.
    platform.redis().stop();
    let mut max_breaker = 0.0f64;
    for i in 4..24 {
        ann.step(Some(ops(i)), BUDGET, "Redis down").await;
        ann.step(None, BUDGET, "Redis down").await;
        max_breaker = max_breaker.max(breaker_open(&platform).await.unwrap_or(0.0));
    }
    let ready = Reply::send(
        platform
            .client()
            .get(format!("{}/readyz", platform.cart_svc_url())),
    )
    .await;
    ready.assert_status(200, "cart-svc GET /readyz while its Redis is down");
    assert_eq!(
        max_breaker, 1.0,
        "cart_cache_breaker_open must be 1 while Redis is down and failing"
    );
    // A guest who arrives during the outage (sessions live in the shared Redis).
    let mut bob = Expected::new(platform.start_guest_session().await);
    bob.step(Some(Op::Add("sku-z", 3)), BUDGET, "Redis down, new guest")
        .await;
    bob.step(None, BUDGET, "Redis down, new guest").await;

    // Redis is back (empty): still correct, and the cache is used again.
    platform.redis().restart();
    let mut i = 24;
    for _ in 0..3 {
        ann.step(Some(ops(i)), BUDGET, "Redis back").await;
        ann.step(None, BUDGET, "Redis back").await;
        i += 1;
    }
    until_the_cache_is_used(&platform, &mut ann, "Redis back").await;

    // Redis stalls (connections stay open, nothing is answered) and goes on: every
    // request still answers in time, and correctly.
    platform.redis().freeze();
    for _ in 0..6 {
        ann.step(Some(ops(i)), BUDGET, "Redis stalled").await;
        ann.step(None, BUDGET, "Redis stalled").await;
        i += 1;
    }
    platform.redis().thaw();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        ann.step(None, BUDGET, "Redis back after the stall").await;
        bob.step(None, BUDGET, "Redis back after the stall").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_the_cache_is_used(&platform, &mut ann, "after the stall").await;

    // Redis comes back from an old snapshot, holding ann's cart as it was before the
    // writes made while it was away: that entry must never be served.
    let saved = ann.step(None, BUDGET, "before the snapshot").await;
    let key = format!("{}cart:{}", platform.redis_key_prefix(), ann.guest.cart_id);
    platform.redis().save();
    platform.redis().stop();
    for _ in 0..4 {
        ann.step(Some(ops(i)), BUDGET, "Redis down again").await;
        ann.step(None, BUDGET, "Redis down again").await;
        i += 1;
    }
    assert!(ann.version > saved.version, "writes happened meanwhile");
    platform.redis().restart();
    let restored = platform.redis().query(&["HGET", &key, "v"]);
    assert!(
        restored.ends_with(&format!("\r\n{}\r\n", saved.version)),
        "the test's premise: the restored snapshot holds ann's cart at version {}, got \
         {restored:?}",
        saved.version
    );
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        ann.step(None, BUDGET, "Redis back from an old snapshot")
            .await;
        bob.step(None, BUDGET, "Redis back from an old snapshot")
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_the_cache_is_used(&platform, &mut ann, "back from an old snapshot").await;

    ann.step(Some(Op::Add("sku-a", 1)), BUDGET, "at the end")
        .await;
    let ann_cart = ann.step(None, BUDGET, "at the end").await;
    let bob_cart = bob.step(None, BUDGET, "at the end").await;
    platform
        .assert_db_matches(&ann_cart, "ann, at the end")
        .await;
    platform
        .assert_db_matches(&bob_cart, "bob, at the end")
        .await;
    eprintln!(
        "slowest answers: ann {:?} ({}), bob {:?} ({})",
        ann.slowest.0, ann.slowest.1, bob.slowest.0, bob.slowest.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_svc_starts_and_serves_with_its_redis_down() {
    const BUDGET: Duration = Duration::from_secs(1);
    // `Platform::start` waits until every service's /readyz answers 200.
    let platform = Platform::start(PlatformOptions::new().own_redis_stopped()).await;
    let mut ann = Expected::new(platform.start_guest_session().await);
    ann.step(Some(Op::Add("sku-a", 2)), BUDGET, "Redis down since start")
        .await;
    ann.step(None, BUDGET, "Redis down since start").await;
    ann.step(Some(Op::Set("sku-a", 5)), BUDGET, "Redis down since start")
        .await;
    ann.step(None, BUDGET, "Redis down since start").await;

    platform.redis().restart();
    until_the_cache_is_used(&platform, &mut ann, "Redis up after start").await;
    let cart = ann
        .step(Some(Op::Add("sku-b", 1)), BUDGET, "Redis up after start")
        .await;
    platform
        .assert_db_matches(&cart, "after Redis came up")
        .await;
}

// ------------------------------------------------------------------ 11. Postgres failing

/// The spec's deadline is about one second (`CART_DB_DEADLINE_MS`, default 1000).
const FAIL_FAST: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_fast_while_postgres_is_paused_and_nothing_acknowledged_is_lost() {
    let platform = Platform::start(PlatformOptions::new().own_postgres()).await;
    let guest = platform.start_guest_session().await;
    // A guest whose cart was never read or written: nothing of it is cached.
    let uncached = platform.start_guest_session().await;

    // Every product is added once, with quantity 1: a line present means that add landed.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    for n in 0..3 {
        let product = format!("before-{n}");
        guest
            .add_item(&product, 1)
            .await
            .cart(&format!("add {product}"));
        acked.insert(product);
    }
    let cached = guest.current_cart().await;
    assert_eq!(cached.version, 3);

    // Should an assertion fail while paused, dropping the platform resumes the cluster
    // before it stops anything.
    platform.postgres().pause();
    let started = Instant::now();
    let reply = guest.add_item("paused-0", 1).await;
    unknown.insert("paused-0".to_owned());
    assert_fails_fast(
        &reply,
        started.elapsed(),
        "a write while Postgres is paused",
    );

    // Several at once: they must not queue behind each other for the pool.
    let products: Vec<String> = (1..=4).map(|n| format!("paused-{n}")).collect();
    let started = Instant::now();
    let replies = all_at_once(products.iter().map(|p| add(&guest, p, 1)).collect()).await;
    let took = started.elapsed();
    for (product, reply) in products.iter().zip(&replies) {
        unknown.insert(product.clone());
        assert_fails_fast(
            reply,
            took,
            &format!("a concurrent write of {product} while paused"),
        );
    }

    let started = Instant::now();
    let reply = guest.get_cart().await;
    let took = started.elapsed();
    let shown = reply.cart("a read of the cached cart while Postgres is paused");
    assert!(took < FAIL_FAST, "a cached read took {took:?}");
    assert_eq!(
        shown.version, cached.version,
        "the last acknowledged version: {reply}"
    );
    assert_eq!(shown.lines(), cached.lines(), "{reply}");

    let started = Instant::now();
    let reply = uncached.get_cart().await;
    assert_fails_fast(
        &reply,
        started.elapsed(),
        "a read of an uncached cart while Postgres is paused",
    );
    platform.postgres().resume();

    // Writes recover by themselves.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut attempt = 0;
    loop {
        let product = format!("after-{attempt}");
        let reply = guest.add_item(&product, 1).await;
        match reply.status {
            200 => {
                reply.cart(&format!("add {product} after the pause"));
                acked.insert(product);
                break;
            }
            503 => {
                unknown.insert(product);
                assert!(
                    reply.header("retry-after").is_some(),
                    "a 503 carries Retry-After: {reply}"
                );
                assert!(
                    Instant::now() < deadline,
                    "writes still fail 15 s after Postgres came back: {reply}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => panic!("after the pause: expected 200 or 503, got {reply}"),
        }
        attempt += 1;
    }
    for n in 0..3 {
        let product = format!("later-{n}");
        guest
            .add_item(&product, 1)
            .await
            .cart(&format!("add {product}"));
        acked.insert(product);
    }
    let theirs = uncached
        .add_item("theirs", 1)
        .await
        .cart("the other guest writes after the pause");
    platform
        .assert_db_matches(&theirs, "the other guest's cart")
        .await;

    let cart = guest.current_cart().await;
    let stored = platform
        .db_cart(guest.cart_id)
        .await
        .expect("the cart is stored");
    let stored_products: BTreeSet<String> = stored.lines.iter().map(|(p, _)| p.clone()).collect();
    let lost: Vec<&String> = acked.difference(&stored_products).collect();
    assert!(
        lost.is_empty(),
        "acknowledged adds missing from Postgres: {lost:?}"
    );
    let strangers: Vec<&String> = stored_products
        .difference(&acked)
        .filter(|p| !unknown.contains(*p))
        .collect();
    assert!(strangers.is_empty(), "lines nobody added: {strangers:?}");
    assert!(
        stored.lines.iter().all(|(_, q)| *q == 1),
        "every add was of 1 and happened at most once: {stored:?}"
    );
    assert_eq!(
        stored.version,
        stored.lines.len() as i64,
        "one version per add that landed: {stored:?}"
    );
    platform
        .assert_db_matches(&cart, "GET /api/v1/cart at the end (it must not be stale)")
        .await;
}

/// A 503 problem with `Retry-After` (whole seconds), answered within [`FAIL_FAST`].
#[track_caller]
fn assert_fails_fast(reply: &Reply, took: Duration, what: &str) {
    eprintln!("{what}: HTTP {} after {took:?}", reply.status);
    reply.problem(503, what);
    assert!(
        took < FAIL_FAST,
        "{what}: a 503 must come within about a second, not after {took:?}: {reply}"
    );
    let retry_after = reply
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "{what}: a 503 carries Retry-After (seconds): {reply}"
    );
}
