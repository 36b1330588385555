//! One request is one trace across services: an OTLP/HTTP (JSON) receiver of the test's
//! own collects the spans every service exports while one cart change goes through the
//! gateway with a caller's `traceparent`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Platform, PlatformOptions};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// A minimal OTLP/HTTP receiver: every POST body is an ExportTraceServiceRequest in
/// JSON; it answers 200 `{}`.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&spans);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 65536];
                loop {
                    // Headers, then Content-Length bytes of body; keep-alive: many requests.
                    let header_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < header_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..header_end + len).skip(header_end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        store.lock().unwrap().extend(parse(&v));
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, spans)
}

fn parse(v: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_ascii_lowercase();
                out.push(Span {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent: text("parentSpanId"),
                });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cart_change_is_one_trace_across_the_services() {
    let (url, spans) = receiver().await;
    let p = Platform::start(
        PlatformOptions::new()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    )
    .await;
    let guest = p.start_guest_session().await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let reply = guest
        .send(
            guest
                .request(Method::POST, "/api/v1/cart/items")
                .header("traceparent", format!("00-{trace}-{caller_span}-01"))
                .json(&json!({"product_id": "sku-1", "quantity": 1})),
        )
        .await;
    reply.assert_status(200, "add");

    let deadline = Instant::now() + Duration::from_secs(15);
    let ours = loop {
        let ours: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        let services: Vec<&str> = ours.iter().map(|s| s.service.as_str()).collect();
        let complete = ["gateway", "session-svc", "cart-svc"]
            .iter()
            .all(|s| services.contains(s))
            && ours.iter().any(|s| s.name == "postgres")
            && ours.iter().any(|s| s.name == "redis");
        if complete || Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for s in &ours {
        println!("{s:?}");
    }
    let by_id: HashMap<&str, &Span> = ours.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let server = |service: &str| {
        ours.iter()
            .find(|s| s.service == service && s.name.starts_with("post "))
            .unwrap_or_else(|| panic!("no request span from {service}: {ours:#?}"))
    };
    let gateway = server("gateway");
    assert_eq!(
        gateway.parent, caller_span,
        "the gateway continues the caller's span"
    );
    assert_eq!(gateway.name, "post /api/v1/cart/items");
    let session = server("session-svc");
    assert_eq!(
        session.parent, gateway.span_id,
        "session-svc is called by the gateway's span"
    );
    let cart = server("cart-svc");
    assert_eq!(
        cart.parent, gateway.span_id,
        "cart-svc is called by the gateway's span"
    );
    let db = ours
        .iter()
        .find(|s| s.service == "cart-svc" && s.name == "postgres")
        .expect("a postgres span in cart-svc");
    assert_eq!(db.parent, cart.span_id);
    let redis = ours
        .iter()
        .find(|s| s.service == "session-svc" && s.name == "redis")
        .expect("a redis span in session-svc");
    assert_eq!(redis.parent, session.span_id);
    // Every span of the trace hangs off another span of it, or off the caller.
    for s in &ours {
        assert!(
            s.parent == caller_span || by_id.contains_key(s.parent.as_str()),
            "orphan span {s:?}"
        );
    }
    // The logs name the same trace.
    assert!(p.logs().contains(trace), "the trace id is in the logs");
}
