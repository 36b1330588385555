//! No secret reaches a log: after a journey that hands every kind of credential to the
//! platform (guest session tokens by header and cookie, cart tokens, passwords right
//! and wrong, access and refresh tokens old and new, garbage bearer tokens, the
//! internal token services call each other with), the five services' logs, at
//! `RUST_LOG=debug`, contain none of them, nor a user session's full id (the access
//! token's `sid`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use base64::Engine as _;
use e2e::{new_email, Platform, PlatformOptions, Reply};
use reqwest::Method;
use serde_json::{json, Value};

/// Every credential a reply carries: token fields of its JSON body and cookie values.
fn secrets_of(reply: &Reply, into: &mut Vec<(String, String)>) {
    if let Ok(body) = serde_json::from_str::<Value>(&reply.text) {
        for name in [
            "session_token",
            "cart_token",
            "access_token",
            "refresh_token",
        ] {
            if let Some(v) = body.get(name).and_then(Value::as_str) {
                into.push((name.to_owned(), v.to_owned()));
            }
        }
    }
    for c in reply.set_cookies() {
        if !c.value.is_empty() {
            into.push((format!("cookie {}", c.name), c.value.clone()));
        }
    }
}

/// The access token's `sid` claim (its payload is base64url without padding).
fn sid_of(access_token: &str) -> String {
    let payload = access_token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {access_token}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("the JWT payload is base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("the JWT payload is JSON");
    claims["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("no string sid claim: {claims}"))
        .to_owned()
}

fn request_id(reply: &Reply) -> String {
    reply
        .header("x-request-id")
        .expect("every gateway response has an X-Request-Id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_even_at_debug() {
    let platform = Platform::start(PlatformOptions::new().env("RUST_LOG", "debug")).await;
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut request_ids: Vec<String> = Vec::new();

    // A guest: session token by header and by cookie, a cart token.
    let guest = platform.start_guest_session().await;
    secrets_of(&guest.created, &mut secrets);
    secrets.push(("guest session token".into(), guest.session_token.clone()));
    secrets.push(("guest cart token".into(), guest.cart_token.clone()));
    guest
        .add_item("sku-1", 2)
        .await
        .assert_status(200, "add an item");
    let by_cookie = guest
        .send(guest.request_with_cookie(Method::GET, "/api/v1/cart"))
        .await;
    by_cookie.assert_status(200, "read the cart by cookie");
    request_ids.push(request_id(&by_cookie));

    // Recovering the cart by its cart token: a second guest, new tokens.
    let recovered = platform
        .start_guest_session_with(json!({ "cart_token": guest.cart_token }))
        .await;
    secrets_of(&recovered.created, &mut secrets);
    secrets.push((
        "recovered session token".into(),
        recovered.session_token.clone(),
    ));
    secrets.push(("recovered cart token".into(), recovered.cart_token.clone()));
    recovered
        .get_cart()
        .await
        .assert_status(200, "read the recovered cart");

    // Registration and a login that merges the guest's cart.
    let email = new_email();
    let password = "Tr0ub4dor&3-secret-in-logs";
    let wrong_password = "wrong-Passw0rd-never-logged";
    secrets.push(("password".into(), password.into()));
    secrets.push(("wrong password".into(), wrong_password.into()));
    platform
        .register(&email, password)
        .await
        .assert_status(201, "register");
    let user = platform.login(&email, password, Some(&recovered)).await;
    secrets_of(&user.login, &mut secrets);
    request_ids.push(request_id(&user.login));
    let sid = sid_of(&user.access_token);

    // The access token in use.
    user.get_cart()
        .await
        .assert_status(200, "read the merged cart");
    user.whoami().await.assert_status(200, "whoami");
    user.add_item("sku-2", 1)
        .await
        .assert_status(200, "add as the user");

    // A refresh; the old refresh token is replayed after the logout below (a replay
    // before it would end the session: reuse detection).
    let refreshed = user.refresh_with(&user.refresh_token).await;
    refreshed.assert_status(200, "refresh");
    secrets_of(&refreshed, &mut secrets);
    let body = refreshed.json();
    let next = user.with_tokens(
        body["access_token"]
            .as_str()
            .expect("refresh gives an access token"),
        body["refresh_token"]
            .as_str()
            .expect("refresh gives a refresh token"),
    );
    next.get_cart()
        .await
        .assert_status(200, "read the cart with the new token");
    // A failed login and a garbage bearer token.
    let failed = platform.login_reply(&email, wrong_password, None).await;
    failed.assert_status(401, "a login with the wrong password");
    let garbage = "Bearer eyJhbGciOiJub25lIn0.Z2FyYmFnZS1zZWNyZXQ.c2lnbmF0dXJlLWdhcmJhZ2U";
    secrets.push((
        "garbage authorization".into(),
        garbage["Bearer ".len()..].to_owned(),
    ));
    let refused = platform
        .send(
            platform
                .gateway(Method::GET, "/api/v1/cart")
                .header("authorization", garbage),
        )
        .await;
    assert_eq!(refused.status, 401, "a garbage bearer token: {refused}");

    // Logout, a replay of the old refresh token and of the new one (refused), then the
    // new access token is dead.
    next.logout().await.assert_status(204, "logout");
    for (what, token) in [("old", &user.refresh_token), ("new", &next.refresh_token)] {
        let replay = user.refresh_with(token).await;
        assert!(
            (400..500).contains(&replay.status),
            "the {what} refresh token after logout must be refused: {replay}"
        );
        secrets_of(&replay, &mut secrets);
    }
    let last = next.get_cart().await;
    assert_eq!(last.status, 401, "the access token after logout: {last}");
    request_ids.push(request_id(&last));

    // What to look for: whole tokens, and the signature part of each access token.
    let mut needles = secrets.clone();
    for (what, token) in &secrets {
        if what.contains("access_token") {
            let signature = token.rsplit('.').next().unwrap().to_owned();
            needles.push((format!("{what} (signature)"), signature));
        }
    }
    needles.push((
        "internal token".into(),
        platform.internal_token().to_owned(),
    ));
    needles.push(("user session id (sid)".into(), sid));
    for (what, v) in &needles {
        assert!(v.len() >= 16, "{what} is too short to search for: {v:?}");
    }
    let kinds: Vec<&str> = needles.iter().map(|(w, _)| w.as_str()).collect();
    for must in [
        "access_token",
        "refresh_token",
        "session_token",
        "cart_token",
    ] {
        assert!(
            kinds.iter().any(|k| k.contains(must)),
            "the journey collected no {must}: {kinds:?}"
        );
    }

    // The logs are written as requests finish: wait until the last one is in.
    let mut logs = platform.logs();
    for _ in 0..50 {
        if request_ids.iter().all(|id| logs.contains(id.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        logs = platform.logs();
    }
    // A test that reads no logs must not pass: they hold the requests' ids and debug lines.
    for id in &request_ids {
        assert!(
            logs.contains(id.as_str()),
            "the logs do not mention request {id}: are they read at all?\n{logs}"
        );
    }
    assert!(
        logs.contains("DEBUG"),
        "no DEBUG line although RUST_LOG=debug"
    );
    println!(
        "{} bytes of logs searched for {} secrets",
        logs.len(),
        needles.len()
    );

    let leaks: Vec<String> = needles
        .iter()
        .filter_map(|(what, v)| {
            logs.lines()
                .find(|l| l.contains(v.as_str()))
                .map(|l| format!("{what} in: {l}"))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets in the logs:\n{}",
        leaks.join("\n")
    );
}
