//! Accounts and the journeys that cross services (API.md "Accounts", "Merge on login"):
//! register, login with and without a guest cart, a second device, logout, refresh
//! rotation and reuse, expiry, the JWT checks at the edge, login timing and throttling,
//! and the TTL of every session key in Redis.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use e2e::{new_email, Platform, PlatformOptions, User};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_validates_normalises_and_refuses_duplicates() {
    let p = Platform::start(PlatformOptions::new()).await;
    let local = format!("Ann.{}", Uuid::new_v4().simple());
    let created = p
        .register(&format!("  {local}@Example.COM "), PASSWORD)
        .await;
    created.assert_status(201, "register");
    let email = format!("{}@example.com", local.to_lowercase());
    assert_eq!(created.json()["email"], json!(email), "{created}");
    let user_id: Uuid = created.json()["user_id"].as_str().unwrap().parse().unwrap();
    let (stored_email, hash): (String, String) =
        sqlx::query_as("SELECT email, password_hash FROM auth.users WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(p.db())
            .await
            .unwrap();
    assert_eq!(stored_email, email);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "argon2id with OWASP's parameters, got {hash}"
    );

    p.register(&email.to_uppercase(), PASSWORD)
        .await
        .problem(409, "the same email again")
        .assert_field("email", "duplicate");
    p.register("not-an-email", PASSWORD)
        .await
        .problem(400, "bad email")
        .assert_field("email", "bad email");
    p.register(&new_email(), "short")
        .await
        .problem(400, "short password")
        .assert_field("password", "short password");
    p.register(&new_email(), &"x".repeat(129))
        .await
        .problem(400, "long password");
    let extra = p
        .send(
            p.gateway(Method::POST, "/api/v1/auth/register")
                .json(&json!({"email": new_email(), "password": PASSWORD, "is_admin": true})),
        )
        .await;
    extra.problem(400, "an unknown field");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM auth.users")
        .fetch_one(p.db())
        .await
        .unwrap();
    assert_eq!(users, 1, "bad input changed nothing");

    let jwks = p
        .send(p.gateway(Method::GET, "/.well-known/jwks.json"))
        .await;
    jwks.assert_status(200, "jwks");
    let key = &jwks.json()["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(key.get("d").is_none(), "never the private part");
}

/// A guest with lines logs in: the lines merge into the account's cart (summed), the
/// guest session ends, the cookies are cleared, and a retried login doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_merges_the_guest_cart_exactly_once() {
    let p = Platform::start(PlatformOptions::new()).await;
    // The account already has a cart from an earlier visit.
    let first = p.new_user(None).await;
    first
        .add_item("sku-a", 3)
        .await
        .assert_status(200, "user add");
    let user_cart = first.current_cart().await;

    let guest = p.start_guest_session().await;
    guest
        .add_item("sku-a", 2)
        .await
        .assert_status(200, "guest add a");
    guest
        .add_item("sku-b", 1)
        .await
        .assert_status(200, "guest add b");

    let user = p.login(&first.email, PASSWORD, Some(&guest)).await;
    let cart = user.login_cart();
    assert_eq!(
        cart.cart_id, user_cart.cart_id,
        "merged into the account's cart"
    );
    assert_eq!(cart.lines(), vec![("sku-a".into(), 5), ("sku-b".into(), 1)]);
    assert_eq!(user.login.json()["cart"]["merge_dropped"], json!([]));
    assert_eq!(user.login.json()["token_type"], "Bearer");
    assert_eq!(user.login.json()["expires_in"], 900);
    for name in ["cart_session", "cart_token"] {
        let c = user.login.set_cookie(name);
        assert!(c.value.is_empty(), "{name} cleared: {:?}", c);
    }
    // The guest session is over (no fixation); its cart is closed and points at the
    // account's cart.
    guest.get_cart().await.problem(401, "the old guest token");
    let (status, into): (String, Option<Uuid>) =
        sqlx::query_as("SELECT status, merged_into FROM cart.carts WHERE cart_id = $1")
            .bind(guest.cart_id)
            .fetch_one(p.db())
            .await
            .unwrap();
    assert_eq!((status.as_str(), into), ("merged", Some(cart.cart_id)));
    // Its cart token recovers nothing any more.
    let fresh = p
        .start_guest_session_with(json!({ "cart_token": guest.cart_token }))
        .await;
    assert_eq!(fresh.created.json()["recovered"], json!(false));

    // The login is retried with the same (now dead) guest token: nothing doubles.
    let again = p.login(&first.email, PASSWORD, Some(&guest)).await;
    assert_eq!(
        again.login_cart().lines(),
        vec![("sku-a".into(), 5), ("sku-b".into(), 1)]
    );
    let now = user.current_cart().await;
    assert_eq!(now.lines(), vec![("sku-a".into(), 5), ("sku-b".into(), 1)]);
    p.assert_db_matches(&now, "after the merge").await;
    let merges = p
        .metric(
            p.cart_svc_url(),
            "cart_merges_total",
            &[("result", "merged")],
        )
        .await;
    assert_eq!(merges, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_caps_at_the_line_limit_and_reports_dropped_lines() {
    let p = Platform::start(PlatformOptions::new().service_env("cart-svc", "CART_MAX_LINES", "3"))
        .await;
    let first = p.new_user(None).await;
    first.add_item("sku-a", 60).await.assert_status(200, "a");
    first.add_item("sku-x", 1).await.assert_status(200, "x");
    let guest = p.start_guest_session().await;
    guest
        .add_item("sku-a", 50)
        .await
        .assert_status(200, "guest a");
    guest
        .add_item("sku-c", 1)
        .await
        .assert_status(200, "guest c");
    guest
        .add_item("sku-d", 1)
        .await
        .assert_status(200, "guest d");
    let user = p.login(&first.email, PASSWORD, Some(&guest)).await;
    let cart = user.login_cart();
    assert_eq!(
        cart.lines(),
        vec![
            ("sku-a".into(), 99),
            ("sku-c".into(), 1),
            ("sku-x".into(), 1)
        ],
        "60 + 50 capped at 99; sku-c takes the last line"
    );
    assert_eq!(user.login.json()["cart"]["merge_dropped"], json!(["sku-d"]));
    p.assert_db_matches(&user.current_cart().await, "after a capped merge")
        .await;
}

/// A user with no cart yet: the guest cart becomes theirs (same id, same lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_account_cart_the_guest_cart_becomes_the_users() {
    let p = Platform::start(PlatformOptions::new()).await;
    let email = new_email();
    p.register(&email, PASSWORD)
        .await
        .assert_status(201, "register");
    let guest = p.start_guest_session().await;
    guest
        .add_item("sku-a", 2)
        .await
        .assert_status(200, "guest add");
    let user = p.login(&email, PASSWORD, Some(&guest)).await;
    let cart = user.login_cart();
    assert_eq!(cart.cart_id, guest.cart_id);
    assert_eq!(cart.lines(), vec![("sku-a".into(), 2)]);
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM cart.carts WHERE cart_id = $1")
            .bind(guest.cart_id)
            .fetch_one(p.db())
            .await
            .unwrap();
    assert_eq!(owner, Some(user.user_id));
    let who = user.whoami().await;
    who.assert_status(200, "whoami");
    assert_eq!(who.json()["kind"], "user");
    assert_eq!(who.json()["user_id"], json!(user.user_id.to_string()));
    assert_eq!(who.json()["cart_id"], json!(guest.cart_id.to_string()));
}

/// Two devices: each its own session, one cart; changes are visible on the other at
/// once, and concurrent adds from both all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_shares_the_cart() {
    let p = Platform::start(PlatformOptions::new()).await;
    let phone = p.new_user(None).await;
    let laptop = p.login(&phone.email, PASSWORD, None).await;
    assert_ne!(phone.access_token, laptop.access_token);
    let sid = |u: &User| {
        let payload = u.access_token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["sid"].as_str().unwrap().to_owned()
    };
    assert_ne!(sid(&phone), sid(&laptop), "each device has its own session");
    phone
        .add_item("sku-a", 1)
        .await
        .assert_status(200, "phone add");
    assert_eq!(
        laptop.current_cart().await.lines(),
        vec![("sku-a".into(), 1)]
    );

    let mut tasks = Vec::new();
    for i in 0..10 {
        let (a, b) = (phone.clone(), laptop.clone());
        tasks.push(tokio::spawn(
            async move { a.add_item("sku-b", 1).await.status },
        ));
        tasks.push(tokio::spawn(async move {
            b.add_item(&format!("sku-{i}"), 1).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let cart = phone.current_cart().await;
    assert_eq!(
        cart.quantity_of("sku-b"),
        Some(10),
        "relative adds from both survive"
    );
    assert_eq!(cart.lines().len(), 12);
    assert_eq!(cart.lines(), laptop.current_cart().await.lines());
    p.assert_db_matches(&cart, "after two devices").await;
}

/// A guest keeps adding while the login merges: every add that was acknowledged is in
/// the account's cart afterwards, whichever side of the merge it fell on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_racing_the_login_are_not_lost() {
    let p = Platform::start(PlatformOptions::new()).await;
    let first = p.new_user(None).await;
    first
        .add_item("sku-user", 1)
        .await
        .assert_status(200, "user add");
    for round in 0..3 {
        let guest = p.start_guest_session().await;
        guest
            .add_item("seed", 1)
            .await
            .assert_status(200, "guest seed");
        let adder = {
            let guest = guest.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..30 {
                    let product = format!("r{round}-{i}");
                    if guest.add_item(&product, 1).await.status == 200 {
                        acknowledged.push(product);
                    }
                }
                acknowledged
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let user = p.login(&first.email, PASSWORD, Some(&guest)).await;
        let acknowledged = adder.await.unwrap();
        let cart = user.current_cart().await;
        for product in &acknowledged {
            assert_eq!(
                cart.quantity_of(product),
                Some(1),
                "acknowledged add {product} lost"
            );
        }
        assert_eq!(cart.quantity_of("sku-user"), Some(1));
        p.assert_db_matches(&cart, "after a racing merge").await;
    }
}

/// Logout ends the session and its refresh token at once; the cart stays and comes
/// back on the next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_tokens_at_once_and_the_cart_comes_back() {
    let p = Platform::start(PlatformOptions::new()).await;
    let user = p.new_user(None).await;
    user.add_item("sku-a", 4).await.assert_status(200, "add");
    user.logout().await.assert_status(204, "logout");
    user.get_cart()
        .await
        .problem(401, "the access token of a logged-out session");
    user.refresh_with(&user.refresh_token)
        .await
        .problem(401, "the refresh token of a logged-out session");
    let back = p.login(&user.email, PASSWORD, None).await;
    assert_eq!(back.current_cart().await.lines(), vec![("sku-a".into(), 4)]);
    // DELETE /api/v1/session with a Bearer token logs out too.
    back.send(back.request(Method::DELETE, "/api/v1/session"))
        .await
        .assert_status(204, "DELETE /api/v1/session");
    back.get_cart()
        .await
        .problem(401, "after DELETE /api/v1/session");
}

/// Refresh rotates; presenting a used refresh token revokes the whole family and its
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let p = Platform::start(PlatformOptions::new()).await;
    let user = p.new_user(None).await;
    let first = user.refresh_with(&user.refresh_token).await;
    first.assert_status(200, "first refresh");
    let body = first.json();
    let new_access = body["access_token"].as_str().unwrap().to_owned();
    let new_refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, user.refresh_token);
    let rotated = user.with_tokens(&new_access, &new_refresh);
    rotated
        .get_cart()
        .await
        .assert_status(200, "the new access token");

    // The old token again: refused, and the family (the new token too) is revoked.
    user.refresh_with(&user.refresh_token)
        .await
        .problem(401, "a reused refresh token");
    user.refresh_with(&new_refresh)
        .await
        .problem(401, "the successor of a reused token");
    rotated
        .get_cart()
        .await
        .problem(401, "the session of a revoked family");
    let revoked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM auth.refresh_tokens WHERE user_id = $1 AND revoked_at IS NOT NULL",
    )
    .bind(user.user_id)
    .fetch_one(p.db())
    .await
    .unwrap();
    assert_eq!(revoked, 2);
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM auth.refresh_tokens")
        .fetch_all(p.db())
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| h != &user.refresh_token && h != &new_refresh),
        "refresh tokens are stored hashed"
    );
}

/// Short timeouts: sessions expire, carts survive, and both come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_and_carts_survive() {
    let p = Platform::start(
        PlatformOptions::new()
            .service_env("session-svc", "SESSION_GUEST_IDLE_TIMEOUT_SECS", "2")
            .service_env("session-svc", "SESSION_USER_IDLE_TIMEOUT_SECS", "2"),
    )
    .await;
    let guest = p.start_guest_session().await;
    guest
        .add_item("sku-g", 1)
        .await
        .assert_status(200, "guest add");
    let user = p.new_user(None).await;
    user.add_item("sku-u", 2)
        .await
        .assert_status(200, "user add");
    tokio::time::sleep(Duration::from_millis(3200)).await;

    guest
        .get_cart()
        .await
        .problem(401, "an expired guest session");
    let back = p
        .start_guest_session_with(json!({ "cart_token": guest.cart_token }))
        .await;
    assert_eq!(back.created.json()["recovered"], json!(true));
    assert_eq!(back.current_cart().await.lines(), vec![("sku-g".into(), 1)]);

    user.get_cart()
        .await
        .problem(401, "an expired user session");
    user.refresh_with(&user.refresh_token)
        .await
        .problem(401, "the refresh token of an expired session");
    let again = p.login(&user.email, PASSWORD, None).await;
    assert_eq!(
        again.current_cart().await.lines(),
        vec![("sku-u".into(), 2)]
    );
}

fn signing_key(p: &Platform) -> EncodingKey {
    let dir = p.log_dir().join("auth-keys");
    let path = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pem"))
        .expect("auth-svc generated a key");
    let pem = std::fs::read(&path).unwrap();
    EncodingKey::from_ed_pem(&pem).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// The gateway's JWT checks: only EdDSA tokens signed by a published key, for this
/// issuer and audience, unexpired and untampered, are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_tokens_are_refused() {
    let p = Platform::start(PlatformOptions::new()).await;
    let user = p.new_user(None).await;
    let parts: Vec<&str> = user.access_token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let key = signing_key(&p);
    let sign = |claims: &Value, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    };
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let now = chrono::Utc::now().timestamp();

    // The control: a token we sign ourselves with the real key and sound claims works,
    // so every refusal below is the check, not the harness.
    let control = sign(&with("jti", json!("control")), &kid, &key);
    let as_bearer = |t: &str| {
        let t = t.to_owned();
        let p = &p;
        async move {
            p.send(p.gateway(Method::GET, "/api/v1/cart").bearer_auth(t))
                .await
        }
    };
    as_bearer(&control)
        .await
        .assert_status(200, "a sound token");

    let public_x = {
        let jwks = p
            .send(p.gateway(Method::GET, "/.well-known/jwks.json"))
            .await;
        URL_SAFE_NO_PAD
            .decode(jwks.json()["keys"][0]["x"].as_str().unwrap())
            .unwrap()
    };
    let foreign_pem = auth_svc::keys::generate_pem().unwrap();
    let foreign = EncodingKey::from_ed_pem(foreign_pem.as_bytes()).unwrap();
    let tampered = {
        let forged = b64(&with("sub", json!(Uuid::now_v7().to_string())));
        format!("{}.{}.{}", parts[0], forged, parts[2])
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
                parts[1]
            ),
        ),
        (
            "HS256 signed with the public key",
            jsonwebtoken::encode(
                &Header {
                    kid: Some(kid.clone()),
                    ..Header::new(Algorithm::HS256)
                },
                &claims,
                &EncodingKey::from_secret(&public_x),
            )
            .unwrap(),
        ),
        ("expired", sign(&with("exp", json!(now - 120)), &kid, &key)),
        (
            "wrong aud",
            sign(&with("aud", json!("someone-else")), &kid, &key),
        ),
        (
            "wrong iss",
            sign(&with("iss", json!("https://evil.example")), &kid, &key),
        ),
        ("unknown kid", sign(&claims, "no-such-kid", &foreign)),
        ("foreign key under our kid", sign(&claims, &kid, &foreign)),
        ("tampered payload", tampered),
        ("garbage", "not.a.jwt".to_owned()),
        (
            "a live sid of another user",
            sign(&with("sub", json!(Uuid::now_v7().to_string())), &kid, &key),
        ),
    ];
    for (name, token) in cases {
        let reply = as_bearer(&token).await;
        reply.problem(401, name);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Unknown email and wrong password take the same path and the same time, and answer
/// the same body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_email_and_wrong_password_look_the_same() {
    let p = Platform::start(PlatformOptions::new().service_env(
        "auth-svc",
        "AUTH_LOGIN_MAX_FAILURES",
        "1000",
    ))
    .await;
    let email = new_email();
    p.register(&email, PASSWORD)
        .await
        .assert_status(201, "register");
    let (mut unknown, mut wrong, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    let mut bodies = Vec::new();
    let timed = |email: String| {
        let p = &p;
        async move {
            let t = Instant::now();
            let r = p.login_reply(&email, "wrong password!", None).await;
            let took = t.elapsed().as_secs_f64();
            r.assert_status(401, "unknown email or wrong password");
            (took, r.json())
        }
    };
    for i in 0..40 {
        // Adjacent pairs in ABBA order: whatever else loads the machine at that moment
        // loads both members of a pair alike, and neither kind always goes first.
        let ((u, ub), (w, wb)) = if i % 2 == 0 {
            let u = timed(new_email()).await;
            (u, timed(email.clone()).await)
        } else {
            let w = timed(email.clone()).await;
            (timed(new_email()).await, w)
        };
        if i == 0 {
            bodies.extend([ub, wb]);
        }
        unknown.push(u);
        wrong.push(w);
        diffs.push(u - w);
    }
    assert_eq!(bodies[0], bodies[1], "the same 401 body");
    let (u, w, d) = (median(unknown), median(wrong), median(diffs));
    println!(
        "median unknown email {u:.4}s, wrong password {w:.4}s, median paired difference {d:.4}s"
    );
    assert!(
        d.abs() / u.max(w) < 0.10,
        "unknown email and wrong password differ by more than 10 %: unknown {u:.4}s, wrong {w:.4}s, paired difference {d:.4}s"
    );
    // Both really did an argon2 verification (tens of ms), not a shortcut.
    assert!(u > 0.01 && w > 0.01, "unknown {u}, wrong {w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_throttle_the_account() {
    let p = Platform::start(
        PlatformOptions::new()
            .service_env("auth-svc", "AUTH_LOGIN_MAX_FAILURES", "3")
            .service_env("auth-svc", "AUTH_LOGIN_LOCKOUT_SECS", "60"),
    )
    .await;
    let email = new_email();
    p.register(&email, PASSWORD)
        .await
        .assert_status(201, "register");
    for _ in 0..2 {
        p.login_reply(&email, "wrong password!", None)
            .await
            .problem(401, "a failure below the limit");
    }
    let third = p.login_reply(&email, "wrong password!", None).await;
    third.problem(429, "the failure that reaches the limit");
    let retry: u64 = third.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    p.login_reply(&email, PASSWORD, None)
        .await
        .problem(429, "even the right password while locked");
    // An unknown address is throttled the same way (no enumeration through 429s).
    let ghost = new_email();
    for _ in 0..2 {
        p.login_reply(&ghost, "wrong password!", None)
            .await
            .problem(401, "ghost");
    }
    p.login_reply(&ghost, "wrong password!", None)
        .await
        .problem(429, "ghost at the limit");
    // Another account is not affected.
    let other = p.new_user(None).await;
    other.get_cart().await.assert_status(200, "another account");
}

/// No session key in Redis is ever without a TTL, whatever wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_key_has_a_ttl() {
    let p = Platform::start(PlatformOptions::new()).await;
    let guest = p.start_guest_session().await;
    guest.add_item("sku-a", 1).await.assert_status(200, "add");
    let _ = guest.whoami().await;
    let user = p.new_user(Some(&guest)).await; // bind (rotation)
    let second = p.login(&user.email, PASSWORD, None).await; // a plain user session
    let _ = second.whoami().await; // touch
    let _ = user.refresh_with(&user.refresh_token).await;
    let other = p.start_guest_session().await;
    other
        .end_session()
        .await
        .assert_status(204, "end a guest session");

    let url = std::env::var("REDIS_URL").unwrap();
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", p.redis_key_prefix());
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let sessions = keys.iter().filter(|k| k.contains("session:")).count();
    assert!(sessions >= 2, "the test wrote sessions: {keys:?}");
    assert!(
        keys.iter().any(|k| k.contains("user-sessions:")),
        "the per-user index exists: {keys:?}"
    );
    for key in keys.iter().filter(|k| k.contains("session")) {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}
