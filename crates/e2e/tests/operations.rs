//! How the services behave as processes: graceful stop on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use e2e::{Platform, PlatformOptions};

/// The Kubernetes stop sequence: on SIGTERM the gateway reports not-ready at once but
/// keeps serving for `SHUTDOWN_DELAY_MS` (load balancers move away meanwhile), then
/// closes its listener, lets in-flight requests finish and exits 0. No request that
/// reached it is cut off or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_gateway_without_losing_a_request() {
    let mut platform =
        Platform::start(PlatformOptions::new().service_env("gateway", "SHUTDOWN_DELAY_MS", "1500"))
            .await;
    let guest = platform.start_guest_session().await;
    let client = reqwest::Client::new();
    let gateway = platform.gateway_url().to_owned();
    let token = guest.session_token.clone();

    let add = |client: reqwest::Client| {
        let (gateway, token) = (gateway.clone(), token.clone());
        async move {
            client
                .post(format!("{gateway}/api/v1/cart/items"))
                .header("x-session-token", token)
                .header("content-type", "application/json")
                .body(r#"{"product_id":"sku-1","quantity":1}"#)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    // Requests in flight when the signal arrives.
    let in_flight: Vec<_> = (0..40).map(|_| tokio::spawn(add(client.clone()))).collect();
    let stopped = Instant::now();
    let term = tokio::task::spawn_blocking(move || {
        let status = platform.terminate("gateway", Duration::from_secs(20));
        (platform, status)
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client
        .get(format!("{gateway}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready while draining");
    // Still served during the delay.
    assert_eq!(add(client.clone()).await.unwrap(), 200);

    for r in in_flight {
        assert_eq!(
            r.await.unwrap().unwrap(),
            200,
            "an in-flight request was cut off"
        );
    }
    let (mut platform, status) = term.await.unwrap();
    let status = status.expect("the gateway exited by itself");
    assert!(status.success(), "gateway exit status {status}");
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "left before its delay"
    );

    let quantity: i32 =
        sqlx::query_scalar("SELECT quantity FROM cart.cart_items WHERE product_id = 'sku-1'")
            .fetch_one(platform.db())
            .await
            .unwrap();
    assert_eq!(quantity, 41, "every acknowledged add is in Postgres");

    // The other services stop cleanly too.
    for (name, status) in platform.stop() {
        if name == "gateway" {
            continue;
        }
        let status = status.unwrap_or_else(|| panic!("{name} had to be killed"));
        assert!(status.success(), "{name} exit status {status}");
    }
}
