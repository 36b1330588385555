//! The gateway as an edge under pressure: shedding at a bounded queue, safe retries,
//! shared rate limits (and their fallback), CORS, trace context and header hygiene.
//! A small TCP proxy of the test's own sits between a gateway and cart-svc to slow the
//! upstream down and to see exactly what reaches it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Platform, PlatformOptions};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy in front of `upstream` that holds every chunk of every response for
/// `delay`, and records every byte the gateway sent through it.
struct SlowProxy {
    url: String,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl SlowProxy {
    async fn start(upstream: &str, delay: Duration) -> SlowProxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let seen = Arc::clone(&seen2);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        SlowProxy { url, seen }
    }

    fn requests_to(&self, request_line_prefix: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        let text = String::from_utf8_lossy(&seen);
        text.matches(request_line_prefix).count()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

async fn get_cart(
    client: &reqwest::Client,
    gateway: &str,
    token: &str,
) -> (u16, Duration, reqwest::header::HeaderMap) {
    let t = Instant::now();
    let r = client
        .get(format!("{gateway}/api/v1/cart"))
        .header("x-session-token", token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let _ = r.bytes().await;
    (status, t.elapsed(), headers)
}

/// With cart-svc slowed to ~1 s a call and room for 9 reads at once, a burst of 30
/// reads: 9 are served at the upstream's pace, the other 21 are answered 503 +
/// Retry-After within the 200 ms admission wait — none waits longer, none is lost. (The
/// wait is generous enough that the quick session checks, which share the same bound
/// on session-svc, are never what gets shed on a loaded test machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saturated_upstream_sheds_the_excess_at_once() {
    let mut p = Platform::start(PlatformOptions::new()).await;
    let proxy = SlowProxy::start(p.cart_svc_url(), Duration::from_millis(1000)).await;
    let gw = p
        .start_extra_gateway(&[
            ("CART_URL", proxy.url.as_str()),
            ("UPSTREAM_MAX_IN_FLIGHT", "10"),
            ("UPSTREAM_ADMISSION_WAIT_MS", "200"),
        ])
        .await;
    let guest = p.start_guest_session().await;
    guest.add_item("sku-1", 1).await.assert_status(200, "seed");
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (c, g, t) = (client.clone(), gw.clone(), guest.session_token.clone());
            tokio::spawn(async move { get_cart(&c, &g, &t).await })
        })
        .collect();
    let mut served = Vec::new();
    let mut shed = Vec::new();
    for t in tasks {
        let (status, took, headers) = t.await.unwrap();
        match status {
            200 => served.push(took),
            503 => {
                assert!(
                    headers.contains_key("retry-after"),
                    "503 without Retry-After"
                );
                shed.push(took);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    println!("served {:?}", served);
    println!("shed {:?}", shed);
    assert_eq!(served.len(), 9, "reads get 90 % of 10 slots");
    assert_eq!(shed.len(), 21);
    for took in &shed {
        assert!(
            *took < Duration::from_millis(600),
            "shed after {took:?}, not at once"
        );
    }
    for took in &served {
        assert!(
            *took < Duration::from_millis(3000),
            "an admitted read took {took:?}"
        );
    }
    // Writes of shoppers mid-purchase still get the slots reads may not use.
    let shed_metric = p
        .metric(
            &gw,
            "gateway_upstream_shed_total",
            &[
                ("upstream", "cart-svc"),
                ("reason", "full"),
                ("priority", "normal"),
            ],
        )
        .await;
    assert_eq!(shed_metric, Some(21.0));
}

/// The front door: with room for 10 requests inside the gateway (reads may take 9) and
/// cart-svc slowed to ~1 s, a burst of 30 reads: 9 are served, 21 get 503 +
/// Retry-After at once, refused at the door (the upstream guard, with room to spare,
/// sheds nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_front_door_refuses_what_does_not_fit_inside() {
    let mut p = Platform::start(PlatformOptions::new()).await;
    let proxy = SlowProxy::start(p.cart_svc_url(), Duration::from_millis(1000)).await;
    let gw = p
        .start_extra_gateway(&[
            ("CART_URL", proxy.url.as_str()),
            ("GATEWAY_MAX_IN_FLIGHT", "10"),
        ])
        .await;
    let guest = p.start_guest_session().await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (c, g, t) = (client.clone(), gw.clone(), guest.session_token.clone());
            tokio::spawn(async move { get_cart(&c, &g, &t).await })
        })
        .collect();
    let (mut served, mut shed) = (0, Vec::new());
    for t in tasks {
        let (status, took, headers) = t.await.unwrap();
        match status {
            200 => served += 1,
            503 => {
                assert!(
                    headers.contains_key("retry-after"),
                    "503 without Retry-After"
                );
                shed.push(took);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((served, shed.len()), (9, 21), "reads get 90 % of 10 places");
    for took in &shed {
        assert!(
            *took < Duration::from_millis(600),
            "refused after {took:?}, not at once"
        );
    }
    let at_door = p
        .metric(
            &gw,
            "gateway_front_door_shed_total",
            &[("priority", "normal")],
        )
        .await;
    assert_eq!(at_door, Some(21.0));
    let at_guard = p
        .metric(
            &gw,
            "gateway_upstream_shed_total",
            &[
                ("upstream", "cart-svc"),
                ("reason", "full"),
                ("priority", "normal"),
            ],
        )
        .await;
    assert_eq!(at_guard, Some(0.0));
    // Once they have left, the door lets the next one in.
    assert_eq!(get_cart(&client, &gw, &guest.session_token).await.0, 200);
}

/// A POST without an Idempotency-Key is never sent twice; a GET, or a POST with a key,
/// that timed out is retried exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_requests_safe_to_repeat_are_retried_once() {
    let mut p = Platform::start(PlatformOptions::new()).await;
    let proxy = SlowProxy::start(p.cart_svc_url(), Duration::from_millis(600)).await;
    let gw = p
        .start_extra_gateway(&[
            ("CART_URL", proxy.url.as_str()),
            ("UPSTREAM_TIMEOUT_MS", "200"),
            ("UPSTREAM_READ_TIMEOUT_MS", "200"),
        ])
        .await;
    let guest = p.start_guest_session().await;
    let client = reqwest::Client::new();
    let send = |method: Method, path: &str, key: Option<&str>| {
        let mut rb = client
            .request(method, format!("{gw}{path}"))
            .header("x-session-token", &guest.session_token);
        if let Some(k) = key {
            rb = rb.header("idempotency-key", k);
        }
        rb
    };
    let r = send(Method::POST, "/api/v1/cart/items", None)
        .json(&json!({"product_id": "sku-post", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        proxy.requests_to("POST /api/v1/cart/items"),
        1,
        "a POST without a key is never retried"
    );

    let r = send(Method::GET, "/api/v1/cart", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        proxy.requests_to("GET /api/v1/cart "),
        2,
        "a timed-out GET is retried once"
    );

    let r = send(Method::POST, "/api/v1/cart/items", Some("key-1"))
        .json(&json!({"product_id": "sku-keyed", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        proxy.requests_to("POST /api/v1/cart/items"),
        3,
        "a keyed POST is retried once"
    );
    // The keyed retry was deduplicated by cart-svc: one unit, not two.
    let cart = guest.current_cart().await;
    assert_eq!(cart.quantity_of("sku-keyed"), Some(1));
    let retries = p
        .metric(
            &gw,
            "gateway_upstream_retries_total",
            &[("upstream", "cart-svc"), ("result", "sent")],
        )
        .await;
    assert_eq!(retries, Some(2.0));
}

/// What reaches cart-svc: the gateway's own credential and the caller's real identity,
/// whatever the client sent; the client's trace continued with the gateway's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_headers_never_reach_a_backend_and_the_trace_continues() {
    let mut p = Platform::start(PlatformOptions::new()).await;
    let proxy = SlowProxy::start(p.cart_svc_url(), Duration::ZERO).await;
    let gw = p
        .start_extra_gateway(&[("CART_URL", proxy.url.as_str())])
        .await;
    let guest = p.start_guest_session().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::Client::new()
        .get(format!("{gw}/api/v1/cart"))
        .header("x-session-token", &guest.session_token)
        .header("x-internal-token", "forged-forged-forged-forged-forged")
        .header("x-identity-kind", "user")
        .header("x-identity-user-id", "0196f2c4-0000-7000-8000-000000000000")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = proxy.text().to_ascii_lowercase();
    assert!(!seen.contains("forged-forged"), "{seen}");
    assert!(!seen.contains("x-identity-user-id"), "{seen}");
    assert!(seen.contains("x-identity-kind: guest"), "{seen}");
    assert!(seen.contains(&format!("x-internal-token: {}", p.internal_token())));
    assert!(
        !seen.contains(&guest.session_token.to_ascii_lowercase()),
        "the credential itself stays at the edge"
    );
    assert!(
        seen.contains(&format!("traceparent: 00-{trace}-")),
        "{seen}"
    );
    assert!(
        !seen.contains("00f067aa0ba902b7"),
        "the gateway's own span is the parent"
    );
    assert_eq!(seen.matches("traceparent:").count(), 1);
}

async fn burst(
    client: &reqwest::Client,
    gateways: &[String],
    token: &str,
    n: usize,
) -> (usize, usize, Vec<reqwest::header::HeaderMap>) {
    let (mut ok, mut limited, mut refusals) = (0, 0, Vec::new());
    for i in 0..n {
        let (status, _, headers) = get_cart(client, &gateways[i % gateways.len()], token).await;
        match status {
            200 => {
                assert!(headers.contains_key("ratelimit"), "200 without RateLimit");
                ok += 1;
            }
            429 => {
                limited += 1;
                refusals.push(headers);
            }
            other => panic!("unexpected {other}"),
        }
    }
    (ok, limited, refusals)
}

/// One client's bucket is shared by every gateway replica (it lives in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_gateway_replicas() {
    let limits = [("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "5")];
    let mut p = Platform::start(
        PlatformOptions::new()
            .env(limits[0].0, limits[0].1)
            .env(limits[1].0, limits[1].1),
    )
    .await;
    let second = p.start_extra_gateway(&[]).await;
    let guest = p.start_guest_session().await;
    let gateways = [p.gateway_url().to_owned(), second];
    let (ok, limited, refusals) =
        burst(&reqwest::Client::new(), &gateways, &guest.session_token, 12).await;
    assert!(
        (5..=6).contains(&ok),
        "{ok} allowed across two replicas with a burst of 5"
    );
    assert_eq!(ok + limited, 12);
    let h = &refusals[0];
    assert!(h.get("retry-after").is_some());
    assert_eq!(h.get("ratelimit-policy").unwrap(), "\"client\";q=5;w=5");
    assert!(h
        .get("ratelimit")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("\"client\";r=0;t="));
    // Another client has its own bucket.
    let other = p.start_guest_session().await;
    other.get_cart().await.assert_status(200, "another client");
}

/// With Redis unreachable, each replica limits on its own instead of failing requests
/// or letting everything through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_fall_back_in_process_when_redis_is_down() {
    let p = Platform::start(
        PlatformOptions::new()
            .service_env("gateway", "RATE_LIMIT_PER_SECOND", "1")
            .service_env("gateway", "RATE_LIMIT_BURST", "5")
            .service_env("gateway", "REDIS_URL", "redis://127.0.0.1:1"),
    )
    .await;
    let guest = p.start_guest_session().await;
    let (ok, limited, _) = burst(
        &reqwest::Client::new(),
        &[p.gateway_url().to_owned()],
        &guest.session_token,
        10,
    )
    .await;
    assert!(
        (5..=6).contains(&ok),
        "{ok} allowed in process with a burst of 5"
    );
    assert!(limited >= 4);
    let fallback = p
        .metric(
            p.gateway_url(),
            "gateway_rate_limit_fallback_total",
            &[("policy", "client")],
        )
        .await;
    assert!(fallback.unwrap_or(0.0) >= 10.0);
}

/// Logins and registrations have their own, stricter bucket per address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_has_a_stricter_limit_per_address() {
    let p = Platform::start(
        PlatformOptions::new()
            .env("RATE_LIMIT_AUTH_PER_MINUTE", "2")
            .env("RATE_LIMIT_AUTH_BURST", "2"),
    )
    .await;
    let statuses = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                p.login_reply("nobody@example.com", "wrong password!", None)
                    .await
                    .status,
            );
        }
        v
    };
    assert_eq!(statuses, vec![401, 401, 429]);
    // Cart traffic is not affected.
    let guest = p.start_guest_session().await;
    guest.get_cart().await.assert_status(200, "cart read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_exactly_the_listed_origins() {
    let p = Platform::start(PlatformOptions::new().env("ALLOWED_ORIGINS", "https://shop.example"))
        .await;
    let client = reqwest::Client::new();
    let gw = p.gateway_url();
    let preflight = |origin: &str| {
        client
            .request(Method::OPTIONS, format!("{gw}/api/v1/cart/items"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, x-session-token",
            )
            .send()
    };
    let ok = preflight("https://shop.example").await.unwrap();
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-session-token") && allowed.contains("idempotency-key"));
    assert!(h["vary"].to_str().unwrap().contains("Origin"));

    let evil = preflight("https://evil.example").await.unwrap();
    assert_eq!(evil.status(), 403);
    assert!(!evil.headers().contains_key("access-control-allow-origin"));

    let guest = p.start_guest_session().await;
    let r = guest
        .send(
            guest
                .request(Method::GET, "/api/v1/cart")
                .header("origin", "https://shop.example"),
        )
        .await;
    r.assert_status(200, "a read from the allowed origin");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap()
        .to_owned();
    assert!(
        exposed.contains("ETag") && exposed.contains("Retry-After"),
        "{exposed}"
    );

    // CSRF: a cookie-authenticated write from another site is refused.
    let forged = guest
        .send(
            guest
                .request_with_cookie(Method::POST, "/api/v1/cart/items")
                .header("origin", "https://evil.example")
                .json(&json!({"product_id": "sku-1", "quantity": 1})),
        )
        .await;
    forged.problem(403, "a cross-site cookie write");
    assert!(guest.current_cart().await.lines().is_empty());
}
