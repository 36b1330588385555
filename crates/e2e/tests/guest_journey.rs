//! The guest path of API.md, end to end: a visitor without an account starts a session
//! at the gateway, fills a cart, makes mistakes, comes back later, and never sees or
//! touches anybody else's cart. Every test starts the five real binaries on its own
//! database and Redis prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use chrono::Utc;
use e2e::{rfc3339_utc, CartView, Guest, Platform, PlatformOptions, Problem, Reply};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use uuid::Uuid;

async fn platform() -> Platform {
    Platform::start(PlatformOptions::new()).await
}

/// The guest's cart now, read through the gateway.
async fn current_cart(guest: &Guest) -> CartView {
    guest.get_cart().await.cart("GET /api/v1/cart")
}

/// After a refused request: the cart reads exactly as before, and Postgres too.
async fn assert_unchanged(platform: &Platform, guest: &Guest, before: &CartView, after: &str) {
    let now = current_cart(guest).await;
    assert_eq!(
        now.version, before.version,
        "after {after}: the version moved although the request was refused"
    );
    assert_eq!(
        now.lines(),
        before.lines(),
        "after {after}: the lines changed although the request was refused"
    );
    platform
        .assert_db_matches(before, &format!("after {after}"))
        .await;
}

/// A well-formed token (43 URL-safe characters, the length of a real one) that no
/// session has: refused by lookup, not by a format check.
fn unknown_token() -> String {
    let hex = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    hex[..43].to_owned()
}

fn is_url_safe(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_guest_gets_a_session_cookies_and_an_empty_unwritten_cart() {
    let platform = platform().await;

    let guest = platform.start_guest_session().await;
    let created = &guest.created;
    assert!(
        created.content_type().starts_with("application/json"),
        "{created}"
    );
    let body = created.json();
    assert_eq!(body["idle_timeout_seconds"], json!(1800), "{created}");
    assert_eq!(body["recovered"], json!(false), "{created}");
    let expires_at = rfc3339_utc(&body["expires_at"], "expires_at", "POST /api/v1/sessions");
    let expires_in = (expires_at - Utc::now()).num_seconds();
    assert!(
        (1740..=1860).contains(&expires_in),
        "a new session expires after its idle timeout (1800 s), not in {expires_in} s: {created}"
    );

    // Two independent bearer secrets: the session token authenticates, the cart token
    // only recovers the cart later.
    assert_ne!(guest.session_token, guest.cart_token);
    for (name, token) in [
        ("session_token", &guest.session_token),
        ("cart_token", &guest.cart_token),
    ] {
        assert!(
            token.len() >= 22 && is_url_safe(token),
            "{name} must be ≥ 22 URL-safe characters (≥ 128 bits): {token:?}"
        );
    }

    let session_cookie = created.set_cookie("cart_session");
    let cart_cookie = created.set_cookie("cart_token");
    assert_eq!(session_cookie.value, guest.session_token);
    assert_eq!(cart_cookie.value, guest.cart_token);
    for cookie in [&session_cookie, &cart_cookie] {
        assert!(cookie.has("HttpOnly"), "not HttpOnly: {}", cookie.raw);
        assert!(
            cookie
                .attribute("SameSite")
                .is_some_and(|v| v.eq_ignore_ascii_case("lax")),
            "not SameSite=Lax: {}",
            cookie.raw
        );
        assert_eq!(cookie.attribute("Path"), Some("/"), "{}", cookie.raw);
    }
    // Long-lived: as long as a guest cart is kept (14 days by default).
    let max_age: i64 = cart_cookie
        .attribute("Max-Age")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the cart_token cookie has no Max-Age: {}", cart_cookie.raw));
    assert!(
        max_age >= 14 * 24 * 3600 - 60,
        "the cart_token cookie must live as long as guest carts are kept (14 days), not {max_age} s"
    );

    let whoami = guest.whoami().await;
    whoami.assert_status(200, "GET /api/v1/session with X-Session-Token");
    let me = whoami.json();
    assert_eq!(me["kind"], json!("guest"), "{whoami}");
    assert_eq!(me.get("user_id"), Some(&Value::Null), "{whoami}");
    assert_eq!(me["cart_id"], json!(guest.cart_id.to_string()), "{whoami}");
    rfc3339_utc(&me["expires_at"], "expires_at", "GET /api/v1/session");
    rfc3339_utc(&me["last_active"], "last_active", "GET /api/v1/session");

    // The cookie alone is a credential too, as a browser would send it.
    let by_cookie = guest
        .send(guest.request_with_cookie(Method::GET, "/api/v1/session"))
        .await;
    by_cookie.assert_status(200, "GET /api/v1/session with the cart_session cookie");
    assert_eq!(
        by_cookie.json()["cart_id"],
        json!(guest.cart_id.to_string())
    );

    // And a client with a cookie jar needs nothing else: the Set-Cookie headers work as
    // they are.
    let browser = platform.cookie_client();
    let started = platform
        .send(browser.post(format!("{}/api/v1/sessions", platform.gateway_url())))
        .await;
    started.assert_status(201, "POST /api/v1/sessions from a browser");
    let browser_cart_id = started.json()["cart_id"].clone();
    let browser_me = platform
        .send(browser.get(format!("{}/api/v1/session", platform.gateway_url())))
        .await;
    browser_me.assert_status(200, "GET /api/v1/session with only the cookie jar");
    assert_eq!(browser_me.json()["cart_id"], browser_cart_id);

    let cart = current_cart(&guest).await;
    assert_eq!(cart.cart_id, guest.cart_id);
    assert_eq!(cart.version, 0);
    assert_eq!(cart.owner, "guest");
    assert!(cart.items.is_empty());
    assert_eq!((cart.item_count, cart.line_count), (0, 0));
    assert_eq!(cart.raw.get("updated_at"), Some(&Value::Null));
    // Reading a cart that was never changed writes nothing.
    assert_eq!(platform.db_cart(guest.cart_id).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_fills_a_cart_through_the_gateway() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;

    let cart = guest.add_item("sku-1", 2).await.cart("add 2 × sku-1");
    assert_eq!(cart.cart_id, guest.cart_id);
    assert_eq!(cart.version, 1);
    assert_eq!(cart.quantity_of("sku-1"), Some(2));
    assert!(
        cart.updated_at.is_some(),
        "a changed cart has an updated_at"
    );
    let first_added_at = cart.line("sku-1").unwrap().added_at;
    platform.assert_db_matches(&cart, "add 2 × sku-1").await;

    let cart = guest.add_item("sku-1", 3).await.cart("add 3 more × sku-1");
    assert_eq!(cart.version, 2);
    assert_eq!(cart.quantity_of("sku-1"), Some(5));
    let line = cart.line("sku-1").unwrap();
    assert_eq!(line.added_at, first_added_at, "a line keeps its added_at");
    assert!(line.updated_at >= line.added_at);
    platform
        .assert_db_matches(&cart, "add 3 more × sku-1")
        .await;

    let cart = guest.set_quantity("sku-1", 7).await.cart("set sku-1 to 7");
    assert_eq!(cart.version, 3);
    assert_eq!(cart.quantity_of("sku-1"), Some(7));
    platform.assert_db_matches(&cart, "set sku-1 to 7").await;

    let cart = guest
        .set_quantity("sku-1", 7)
        .await
        .cart("set sku-1 to 7 again");
    assert_eq!(cart.version, 3, "setting the same quantity is a no-op");
    assert_eq!(cart.quantity_of("sku-1"), Some(7));
    platform
        .assert_db_matches(&cart, "set sku-1 to 7 again")
        .await;

    let cart = guest.add_item("sku-2", 1).await.cart("add 1 × sku-2");
    assert_eq!(cart.version, 4);
    assert_eq!(cart.lines(), [("sku-1".into(), 7), ("sku-2".into(), 1)]);
    platform.assert_db_matches(&cart, "add 1 × sku-2").await;

    let cart = guest.set_quantity("sku-2", 0).await.cart("set sku-2 to 0");
    assert_eq!(cart.version, 5);
    assert_eq!(
        cart.quantity_of("sku-2"),
        None,
        "quantity 0 removes the line"
    );
    assert_eq!(cart.lines(), [("sku-1".into(), 7)]);
    platform.assert_db_matches(&cart, "set sku-2 to 0").await;

    let cart = guest
        .remove_item("sku-2")
        .await
        .cart("remove the absent sku-2");
    assert_eq!(cart.version, 5, "removing an absent line is a no-op");
    platform
        .assert_db_matches(&cart, "remove the absent sku-2")
        .await;

    let cart = guest.add_item("sku-3", 4).await.cart("add 4 × sku-3");
    assert_eq!(cart.version, 6);
    let cart = guest.remove_item("sku-3").await.cart("remove sku-3");
    assert_eq!(cart.version, 7);
    assert_eq!(cart.lines(), [("sku-1".into(), 7)]);
    platform.assert_db_matches(&cart, "remove sku-3").await;

    let cart = guest.add_item("sku-4", 1).await.cart("add 1 × sku-4");
    assert_eq!(cart.version, 8);
    let cart = guest.empty_cart().await.cart("empty the cart");
    assert_eq!(cart.version, 9);
    assert!(cart.items.is_empty());
    assert_eq!((cart.item_count, cart.line_count), (0, 0));
    platform.assert_db_matches(&cart, "empty the cart").await;

    let cart = guest.empty_cart().await.cart("empty the empty cart");
    assert_eq!(cart.version, 9, "emptying an empty cart is a no-op");
    platform
        .assert_db_matches(&cart, "empty the empty cart")
        .await;

    let read = current_cart(&guest).await;
    assert_eq!((read.cart_id, read.version), (guest.cart_id, 9));
}

/// Sends requests that must be refused, checking each one changed nothing.
struct Refusals<'a> {
    platform: &'a Platform,
    guest: &'a Guest,
    before: CartView,
}

impl Refusals<'_> {
    async fn expect(&self, status: u16, what: &str, request: RequestBuilder) -> Problem {
        let problem = self.guest.send(request).await.problem(status, what);
        assert_unchanged(self.platform, self.guest, &self.before, what).await;
        problem
    }
}

fn post_items(guest: &Guest, body: Value) -> RequestBuilder {
    guest
        .request(Method::POST, "/api/v1/cart/items")
        .json(&body)
}

fn put_item(guest: &Guest, product_id: &str, body: Value) -> RequestBuilder {
    guest
        .request(Method::PUT, &format!("/api/v1/cart/items/{product_id}"))
        .json(&body)
}

fn raw_post_items(guest: &Guest, content_type: Option<&str>, body: String) -> RequestBuilder {
    let request = guest.request(Method::POST, "/api/v1/cart/items").body(body);
    match content_type {
        Some(content_type) => request.header("content-type", content_type),
        None => request,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_error_is_a_problem_and_changes_nothing() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    let before = guest.add_item("sku-1", 5).await.cart("add 5 × sku-1");
    assert_eq!(before.version, 1);
    let refusals = Refusals {
        platform: &platform,
        guest: &guest,
        before,
    };
    let g = &guest;

    let invalid_fields = [
        (
            "POST without quantity",
            post_items(g, json!({"product_id": "sku-1"})),
            "quantity",
        ),
        (
            "POST quantity 1.5",
            post_items(g, json!({"product_id": "sku-1", "quantity": 1.5})),
            "quantity",
        ),
        (
            "POST quantity \"2\"",
            post_items(g, json!({"product_id": "sku-1", "quantity": "2"})),
            "quantity",
        ),
        (
            "POST quantity 0",
            post_items(g, json!({"product_id": "sku-1", "quantity": 0})),
            "quantity",
        ),
        (
            "POST quantity -1",
            post_items(g, json!({"product_id": "sku-1", "quantity": -1})),
            "quantity",
        ),
        (
            "PUT quantity -1",
            put_item(g, "sku-1", json!({"quantity": -1})),
            "quantity",
        ),
        (
            "PUT without quantity",
            put_item(g, "sku-1", json!({})),
            "quantity",
        ),
        (
            "PUT quantity 2.5",
            put_item(g, "sku-1", json!({"quantity": 2.5})),
            "quantity",
        ),
        (
            "POST without product_id",
            post_items(g, json!({"quantity": 1})),
            "product_id",
        ),
        (
            "POST product_id \"\"",
            post_items(g, json!({"product_id": "", "quantity": 1})),
            "product_id",
        ),
        (
            "POST a 65-character product_id",
            post_items(g, json!({"product_id": "p".repeat(65), "quantity": 1})),
            "product_id",
        ),
        (
            "POST product_id \"bad id!\"",
            post_items(g, json!({"product_id": "bad id!", "quantity": 1})),
            "product_id",
        ),
    ];
    for (what, request, field) in invalid_fields {
        refusals
            .expect(400, what, request)
            .await
            .assert_field(field, what);
    }

    // A product id in the path is validated like one in the body.
    let long_id = "p".repeat(65);
    let invalid_paths = [
        (
            "PUT /api/v1/cart/items/bad%20id",
            put_item(g, "bad%20id", json!({"quantity": 1})),
        ),
        (
            "DELETE /api/v1/cart/items/bad%20id",
            g.request(Method::DELETE, "/api/v1/cart/items/bad%20id"),
        ),
        (
            "PUT a 65-character product id",
            put_item(g, &long_id, json!({"quantity": 1})),
        ),
        (
            "DELETE /api/v1/cart/items/bad!id",
            g.request(Method::DELETE, "/api/v1/cart/items/bad!id"),
        ),
    ];
    for (what, request) in invalid_paths {
        refusals.expect(400, what, request).await;
    }

    // No mass assignment: a field the API does not know is refused, not ignored.
    let what = "POST with an unknown field `price`";
    let problem = refusals
        .expect(
            400,
            what,
            post_items(g, json!({"product_id": "a", "quantity": 1, "price": 5})),
        )
        .await;
    assert!(
        problem.errors().iter().any(|e| {
            e["field"] == json!("price")
                || e["message"].as_str().is_some_and(|m| m.contains("price"))
        }),
        "{what}: the errors must name `price`: {}",
        problem.body
    );

    let valid = r#"{"product_id": "sku-1", "quantity": 1}"#;
    // Valid JSON padded with whitespace past 16 KiB: refused for its size alone.
    let oversized = format!("{valid}{}", " ".repeat(17 * 1024));
    let json = Some("application/json");
    let malformed = [
        (
            400,
            "invalid JSON",
            raw_post_items(g, json, r#"{"product_id": "sku-1", "#.into()),
        ),
        (
            400,
            "a JSON array body",
            raw_post_items(g, json, format!("[{valid}]")),
        ),
        (
            413,
            "a body over 16 KiB",
            raw_post_items(g, json, oversized),
        ),
        (
            415,
            "Content-Type: text/plain",
            raw_post_items(g, Some("text/plain"), valid.into()),
        ),
        (
            415,
            "a JSON body without a Content-Type",
            raw_post_items(g, None, valid.into()),
        ),
    ];
    for (status, what, request) in malformed {
        refusals.expect(status, what, request).await;
    }

    // The edges of the valid range are accepted.
    let longest = "p".repeat(64);
    let cart = guest
        .add_item(&longest, 1)
        .await
        .cart("add a 64-character product id");
    assert_eq!(cart.quantity_of(&longest), Some(1));
    let cart = guest
        .add_item("A.b_c:d-9", 1)
        .await
        .cart("add a product id using every allowed punctuation");
    assert_eq!(cart.version, 3);
    platform
        .assert_db_matches(&cart, "after the valid edge cases")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_limits_refuse_with_422_and_change_nothing() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;

    let empty = current_cart(&guest).await;
    let what = "POST 100 on an empty line";
    guest.add_item("sku-big", 100).await.problem(422, what);
    assert_unchanged(&platform, &guest, &empty, what).await;

    let before = guest.add_item("sku-98", 98).await.cart("add 98 × sku-98");
    assert_eq!(before.version, 1);
    let what = "POST 2 onto a line of 98";
    guest.add_item("sku-98", 2).await.problem(422, what);
    assert_unchanged(&platform, &guest, &before, what).await;
    let what = "PUT 100";
    guest.set_quantity("sku-98", 100).await.problem(422, what);
    assert_unchanged(&platform, &guest, &before, what).await;

    let cart = guest.add_item("sku-98", 1).await.cart("add 1 onto 98");
    assert_eq!(
        cart.quantity_of("sku-98"),
        Some(99),
        "99 is the most a line holds"
    );

    for n in 2..=100 {
        guest
            .add_item(&format!("line-{n:03}"), 1)
            .await
            .cart(&format!("add line {n} of 100"));
    }
    let full = current_cart(&guest).await;
    assert_eq!(full.line_count, 100);
    assert_eq!(full.version, 101);
    platform
        .assert_db_matches(&full, "a cart of 100 lines")
        .await;

    let what = "POST the 101st distinct line";
    guest.add_item("line-101", 1).await.problem(422, what);
    assert_unchanged(&platform, &guest, &full, what).await;

    // The limit is on distinct lines: a full cart still takes more of what it holds.
    let cart = guest
        .add_item("line-002", 1)
        .await
        .cart("add to a line of a full cart");
    assert_eq!(cart.quantity_of("line-002"), Some(2));
    assert_eq!(cart.version, 102);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_gets_412_with_the_current_cart() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    guest.add_item("sku-1", 2).await.cart("add 2 × sku-1");
    let current = guest.add_item("sku-1", 1).await.cart("add 1 × sku-1");
    assert_eq!(current.version, 2);

    let stale = "\"1\"";
    let mutations = [
        (
            "POST with a stale If-Match",
            guest
                .request(Method::POST, "/api/v1/cart/items")
                .json(&json!({"product_id": "sku-2", "quantity": 1})),
        ),
        (
            "PUT with a stale If-Match",
            guest
                .request(Method::PUT, "/api/v1/cart/items/sku-1")
                .json(&json!({"quantity": 9})),
        ),
        (
            "DELETE a line with a stale If-Match",
            guest.request(Method::DELETE, "/api/v1/cart/items/sku-1"),
        ),
        (
            "DELETE the cart with a stale If-Match",
            guest.request(Method::DELETE, "/api/v1/cart"),
        ),
    ];
    for (what, request) in mutations {
        let reply = guest.send(request.header("if-match", stale)).await;
        // Still an error, so a problem (API.md: every error is problem+json), carrying
        // the current cart in its `cart` member so the client can redo its change on it.
        let problem = reply.problem(412, what);
        let shown = CartView::parse(&problem.body["cart"], &format!("{what}: `cart`"));
        assert_eq!(shown.cart_id, current.cart_id, "{what}: {reply}");
        assert_eq!(shown.version, current.version, "{what}: {reply}");
        assert_eq!(shown.lines(), current.lines(), "{what}: {reply}");
        assert_unchanged(&platform, &guest, &current, what).await;
    }

    let cart = guest
        .send(
            guest
                .request(Method::POST, "/api/v1/cart/items")
                .header("if-match", "\"2\"")
                .json(&json!({"product_id": "sku-2", "quantity": 1})),
        )
        .await
        .cart("POST with the current If-Match");
    assert_eq!(cart.version, 3);
    assert_eq!(cart.quantity_of("sku-2"), Some(1));
    platform
        .assert_db_matches(&cart, "POST with the current If-Match")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_session_get_401() {
    let platform = platform().await;
    let victim = platform.start_guest_session().await;
    let before = victim
        .add_item("sku-1", 1)
        .await
        .cart("the victim adds sku-1");

    let anonymous = |method: Method, path: &str| {
        let request = platform.gateway(method.clone(), path);
        match method {
            Method::POST => request.json(&json!({"product_id": "sku-x", "quantity": 1})),
            Method::PUT => request.json(&json!({"quantity": 1})),
            _ => request,
        }
    };
    let endpoints = [
        (Method::GET, "/api/v1/session"),
        (Method::DELETE, "/api/v1/session"),
        (Method::GET, "/api/v1/cart"),
        (Method::POST, "/api/v1/cart/items"),
        (Method::PUT, "/api/v1/cart/items/sku-1"),
        (Method::DELETE, "/api/v1/cart/items/sku-1"),
        (Method::DELETE, "/api/v1/cart"),
    ];
    for (method, path) in &endpoints {
        let what = format!("{method} {path} without a credential");
        platform
            .send(anonymous(method.clone(), path))
            .await
            .problem(401, &what);
    }

    let unknown = unknown_token();
    let bad_credentials = [
        (
            "X-Session-Token: garbage",
            "x-session-token",
            "garbage".to_owned(),
        ),
        (
            "an unknown 43-character token",
            "x-session-token",
            unknown.clone(),
        ),
        (
            "a garbage cart_session cookie",
            "cookie",
            "cart_session=garbage".to_owned(),
        ),
        (
            "an unknown cart_session cookie",
            "cookie",
            format!("cart_session={unknown}"),
        ),
    ];
    for (what, header, value) in &bad_credentials {
        for (method, path) in [
            (Method::GET, "/api/v1/cart"),
            (Method::GET, "/api/v1/session"),
            (Method::POST, "/api/v1/cart/items"),
        ] {
            let what = format!("{method} {path} with {what}");
            platform
                .send(anonymous(method, path).header(*header, value))
                .await
                .problem(401, &what);
        }
    }

    // Identity headers are no credential: only the gateway may assert an identity.
    let what = "POST with X-Identity-* headers naming the victim's cart and no credential";
    platform
        .send(
            anonymous(Method::POST, "/api/v1/cart/items")
                .header("x-identity-kind", "guest")
                .header("x-identity-cart-id", victim.cart_id.to_string()),
        )
        .await
        .problem(401, what);
    assert_unchanged(&platform, &victim, &before, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_keeps_its_cart() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    let cart = guest.add_item("sku-1", 3).await.cart("add 3 × sku-1");

    let ended = guest.end_session().await;
    ended.assert_status(204, "DELETE /api/v1/session");
    assert!(ended.text.is_empty(), "a 204 has no body: {ended}");

    guest
        .get_cart()
        .await
        .problem(401, "GET /api/v1/cart after logout");
    guest
        .whoami()
        .await
        .problem(401, "GET /api/v1/session after logout");
    guest
        .add_item("sku-2", 1)
        .await
        .problem(401, "POST /api/v1/cart/items after logout");

    // The session is gone; the cart is not.
    platform
        .assert_db_matches(&cart, "after DELETE /api/v1/session")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;

    // Generated when the client sent none: `send` checks it is there on every reply.
    let first = guest.get_cart().await;
    let second = guest.get_cart().await;
    assert_ne!(
        first.header("x-request-id"),
        second.header("x-request-id"),
        "each request gets its own id"
    );

    let echoed = |request: RequestBuilder| {
        Reply::through_gateway(request.header("x-request-id", "test-123"))
    };
    let replies = [
        (
            "201",
            echoed(platform.gateway(Method::POST, "/api/v1/sessions")).await,
        ),
        (
            "200",
            echoed(guest.request(Method::GET, "/api/v1/cart")).await,
        ),
        (
            "400",
            echoed(
                guest
                    .request(Method::POST, "/api/v1/cart/items")
                    .json(&json!({"product_id": "sku-1"})),
            )
            .await,
        ),
        (
            "401",
            echoed(platform.gateway(Method::GET, "/api/v1/cart")).await,
        ),
        (
            "204",
            echoed(guest.request(Method::DELETE, "/api/v1/session")).await,
        ),
    ];
    for (status, reply) in &replies {
        assert_eq!(reply.status.to_string(), *status, "{reply}");
        assert_eq!(
            reply.header("x-request-id"),
            Some("test-123"),
            "a client-sent X-Request-Id is echoed on a {status}: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_svc_rejects_calls_without_the_internal_credential() {
    let platform = platform().await;
    let cart_id = Uuid::now_v7();
    let as_guest = |request: RequestBuilder| {
        request
            .header("x-identity-kind", "guest")
            .header("x-identity-cart-id", cart_id.to_string())
    };
    let wrong_token = "0".repeat(platform.internal_token().len());

    let reply = Reply::send(as_guest(platform.cart_svc(Method::GET, "/api/v1/cart"))).await;
    reply.assert_status(401, "cart-svc GET /api/v1/cart without X-Internal-Token");

    let reply = Reply::send(
        as_guest(platform.cart_svc(Method::GET, "/api/v1/cart"))
            .header("x-internal-token", &wrong_token),
    )
    .await;
    reply.assert_status(
        401,
        "cart-svc GET /api/v1/cart with a wrong X-Internal-Token",
    );

    let reply = Reply::send(
        as_guest(platform.cart_svc(Method::POST, "/api/v1/cart/items"))
            .header("x-internal-token", &wrong_token)
            .json(&json!({"product_id": "sku-1", "quantity": 1})),
    )
    .await;
    reply.assert_status(
        401,
        "cart-svc POST /api/v1/cart/items with a wrong X-Internal-Token",
    );
    assert_eq!(
        platform.db_cart(cart_id).await,
        None,
        "a rejected internal call wrote nothing"
    );

    // The same call with the right credential is served: the refusals above were about
    // the credential, not the request.
    let reply = Reply::send(
        as_guest(platform.cart_svc(Method::GET, "/api/v1/cart"))
            .header("x-internal-token", platform.internal_token()),
    )
    .await;
    reply.assert_status(
        200,
        "cart-svc GET /api/v1/cart with the internal credential",
    );
    let cart = CartView::parse(&reply.json(), "cart-svc GET /api/v1/cart");
    assert_eq!(cart.cart_id, cart_id);
    assert_eq!(cart.version, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_headers_are_ignored_by_the_gateway() {
    let platform = platform().await;
    let alice = platform.start_guest_session().await;
    let alices_cart = alice
        .add_item("sku-alice", 3)
        .await
        .cart("alice adds sku-alice");
    let mallory = platform.start_guest_session().await;

    // Mallory claims Alice's cart with every internal header, even the real internal
    // secret: the gateway must drop them all and speak for Mallory's session only.
    let impersonating = |request: RequestBuilder| {
        request
            .header("x-identity-kind", "guest")
            .header("x-identity-cart-id", alice.cart_id.to_string())
            .header("x-identity-user-id", Uuid::now_v7().to_string())
            .header("x-internal-token", platform.internal_token())
    };

    let seen = mallory
        .send(impersonating(mallory.request(Method::GET, "/api/v1/cart")))
        .await
        .cart("mallory reads with alice's cart id in X-Identity-Cart-Id");
    assert_eq!(seen.cart_id, mallory.cart_id);
    assert!(seen.items.is_empty(), "mallory sees none of alice's items");

    let changed = mallory
        .send(impersonating(
            mallory
                .request(Method::POST, "/api/v1/cart/items")
                .json(&json!({"product_id": "sku-mallory", "quantity": 1})),
        ))
        .await
        .cart("mallory adds with alice's cart id in X-Identity-Cart-Id");
    assert_eq!(changed.cart_id, mallory.cart_id);
    assert_eq!(changed.lines(), [("sku-mallory".into(), 1)]);
    platform
        .assert_db_matches(&changed, "mallory's add landed in mallory's cart")
        .await;

    let emptied = mallory
        .send(impersonating(
            mallory.request(Method::DELETE, "/api/v1/cart"),
        ))
        .await
        .cart("mallory empties with alice's cart id in X-Identity-Cart-Id");
    assert_eq!(emptied.cart_id, mallory.cart_id);

    assert_unchanged(
        &platform,
        &alice,
        &alices_cart,
        "mallory's impersonation attempts",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_session_expires_but_its_cart_survives() {
    let platform =
        Platform::start(PlatformOptions::new().env("SESSION_GUEST_IDLE_TIMEOUT_SECS", "2")).await;
    let guest = platform.start_guest_session().await;
    assert_eq!(
        guest.created.json()["idle_timeout_seconds"],
        json!(2),
        "{}",
        guest.created
    );
    let cart = guest.add_item("sku-1", 2).await.cart("add 2 × sku-1");

    // Active for longer than the timeout: each request slides it.
    for second in 1..=3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        guest.get_cart().await.cart(&format!(
            "GET /api/v1/cart {second} s into an active session"
        ));
    }

    tokio::time::sleep(Duration::from_millis(3500)).await;
    guest
        .get_cart()
        .await
        .problem(401, "GET /api/v1/cart after 3.5 s idle with a 2 s timeout");
    guest
        .whoami()
        .await
        .problem(401, "GET /api/v1/session after the session expired");

    // A session expiring never deletes a cart.
    platform
        .assert_db_matches(&cart, "after the session expired")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_cookie_mutations_are_refused() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    let empty = current_cart(&guest).await;

    let add_by_cookie = |site: &str| {
        guest
            .request_with_cookie(Method::POST, "/api/v1/cart/items")
            .header("sec-fetch-site", site)
            .json(&json!({"product_id": "sku-1", "quantity": 1}))
    };

    let what = "a cross-site POST authenticated by the cart_session cookie";
    guest
        .send(add_by_cookie("cross-site"))
        .await
        .problem(403, what);
    assert_unchanged(&platform, &guest, &empty, what).await;

    let what = "a cross-site DELETE /api/v1/cart authenticated by the cookie";
    guest
        .send(
            guest
                .request_with_cookie(Method::DELETE, "/api/v1/cart")
                .header("sec-fetch-site", "cross-site"),
        )
        .await
        .problem(403, what);
    assert_unchanged(&platform, &guest, &empty, what).await;

    // A header credential cannot be forged by another site, so the same request with it
    // goes through.
    let cart = guest
        .send(
            guest
                .request(Method::POST, "/api/v1/cart/items")
                .header("sec-fetch-site", "cross-site")
                .json(&json!({"product_id": "sku-1", "quantity": 1})),
        )
        .await
        .cart("a cross-site POST authenticated by X-Session-Token");
    assert_eq!(cart.version, 1);

    let cart = guest
        .send(add_by_cookie("same-origin"))
        .await
        .cart("a same-origin POST authenticated by the cookie");
    assert_eq!(cart.quantity_of("sku-1"), Some(2));
    platform
        .assert_db_matches(&cart, "after the allowed requests")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_label_routes_by_template_never_by_product_id() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    guest.add_item("sku-1", 2).await.cart("add 2 × sku-1");
    guest.set_quantity("sku-1", 4).await.cart("set sku-1 to 4");
    guest.remove_item("sku-1").await.cart("remove sku-1");
    guest.get_cart().await.cart("read the cart");

    for (service, base) in [
        ("gateway", platform.gateway_url()),
        ("cart-svc", platform.cart_svc_url()),
    ] {
        let reply = Reply::send(platform.client().get(format!("{base}/metrics"))).await;
        reply.assert_status(200, &format!("{service} GET /metrics"));
        let samples: Vec<&str> = reply
            .text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert!(
            samples.iter().any(|l| {
                l.starts_with("http_server_request_duration_seconds_bucket{")
                    && l.contains(r#"http_route="/api/v1/cart/items""#)
            }),
            "{service}: no http_server_request_duration_seconds_bucket sample with \
             http_route=\"/api/v1/cart/items\" in\n{}",
            reply.text
        );
        let cart_id = guest.cart_id.to_string();
        for raw in ["sku-1", cart_id.as_str(), guest.session_token.as_str()] {
            let leaking: Vec<&&str> = samples.iter().filter(|l| l.contains(raw)).collect();
            assert!(
                leaking.is_empty(),
                "{service}: metric labels must hold route templates, never `{raw}`: {leaking:#?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_have_two_separate_carts() {
    let platform = platform().await;
    let ann = platform.start_guest_session().await;
    let bob = platform.start_guest_session().await;
    assert_ne!(ann.cart_id, bob.cart_id);
    assert_ne!(ann.session_token, bob.session_token);
    assert_ne!(ann.cart_token, bob.cart_token);

    let anns = ann.add_item("sku-1", 2).await.cart("ann adds 2 × sku-1");
    let bobs = current_cart(&bob).await;
    assert_eq!(bobs.cart_id, bob.cart_id);
    assert!(bobs.items.is_empty(), "bob does not see ann's line");
    assert_eq!(bobs.version, 0);

    let bobs = bob.add_item("sku-1", 5).await.cart("bob adds 5 × sku-1");
    assert_eq!(bobs.quantity_of("sku-1"), Some(5));
    assert_eq!(bobs.version, 1);
    let bobs = bob.empty_cart().await.cart("bob empties his cart");

    let anns_now = current_cart(&ann).await;
    assert_eq!(anns_now.version, anns.version);
    assert_eq!(anns_now.lines(), [("sku-1".into(), 2)]);
    platform.assert_db_matches(&anns_now, "ann's cart").await;
    platform.assert_db_matches(&bobs, "bob's cart").await;
}

/// FR5: a guest whose session ended (or expired) gets the same cart back with its
/// `cart_token`; anything else that looks like a token gives a fresh, empty cart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_token_brings_the_guest_cart_back_after_the_session_ends() {
    let platform = platform().await;
    let guest = platform.start_guest_session().await;
    guest.add_item("sku-1", 3).await.cart("the first add");
    guest
        .end_session()
        .await
        .assert_status(204, "ending the session");

    let back = platform
        .start_guest_session_with(json!({ "cart_token": guest.cart_token }))
        .await;
    assert_eq!(back.created.json()["recovered"], true, "{}", back.created);
    assert_eq!(back.cart_id, guest.cart_id, "the same cart comes back");
    assert_eq!(back.cart_token, guest.cart_token, "its token stays valid");
    assert_ne!(back.session_token, guest.session_token, "a new session");
    let cart = back.current_cart().await;
    assert_eq!(cart.quantity_of("sku-1"), Some(3));
    let cart_after = back
        .add_item("sku-1", 1)
        .await
        .cart("an add on the recovered cart");
    assert_eq!(cart_after.quantity_of("sku-1"), Some(4));
    assert_eq!(cart_after.version, cart.version + 1);

    // A token of a cart never written to, an unknown one, a malformed one: not errors,
    // just a fresh empty cart (API.md).
    let unwritten = platform.start_guest_session().await;
    for token in [
        unwritten.cart_token.clone(),
        "A".repeat(43),
        "not a token!".to_owned(),
    ] {
        let fresh = platform
            .start_guest_session_with(json!({ "cart_token": token }))
            .await;
        assert_eq!(
            fresh.created.json()["recovered"],
            false,
            "{token}: {}",
            fresh.created
        );
        assert_ne!(fresh.cart_id, guest.cart_id);
        assert_eq!(fresh.current_cart().await.items.len(), 0);
    }

    // A malformed body is still a 400.
    for body in [
        json!({ "cart_token": 5 }),
        json!({ "cart_token": "x", "extra": 1 }),
    ] {
        platform
            .send(
                platform
                    .gateway(Method::POST, "/api/v1/sessions")
                    .json(&body),
            )
            .await
            .problem(400, &format!("POST /api/v1/sessions {body}"));
    }
}

/// Cookie-authenticated writes from an origin on `ALLOWED_ORIGINS` pass the CSRF check;
/// from any other origin they are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_may_write_with_the_cookie_and_others_may_not() {
    let platform = Platform::start(PlatformOptions::new().service_env(
        "gateway",
        "ALLOWED_ORIGINS",
        "https://shop.example, https://m.shop.example/",
    ))
    .await;
    let guest = platform.start_guest_session().await;
    let add_from = |origin: &str| {
        guest
            .request_with_cookie(Method::POST, "/api/v1/cart/items")
            .header("origin", origin)
            .json(&json!({"product_id": "sku-1", "quantity": 1}))
    };
    guest
        .send(add_from("https://shop.example"))
        .await
        .cart("a write from an allowed origin");
    guest
        .send(add_from("https://m.shop.example"))
        .await
        .cart("a write from the other allowed origin");
    guest
        .send(add_from("https://evil.example"))
        .await
        .problem(403, "a cookie write from an origin not on the list");
    assert_eq!(guest.current_cart().await.quantity_of("sku-1"), Some(2));
}
