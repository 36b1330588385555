//! The load-test tool as a load tester runs it: the real `loadtest` binary against the
//! real platform, judged by its exit codes, its reports, what the seeded shoppers see
//! through the gateway, and what is in Postgres afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use e2e::{Platform, PlatformOptions};
use reqwest::Method;
use serde_json::Value;

fn loadtest(args: &[&str]) -> Output {
    Command::new(e2e::binary("loadtest"))
        .args(args)
        .output()
        .expect("the loadtest binary runs (cargo build --bins)")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn seed(platform: &Platform, dir: &Path, users: usize) -> std::path::PathBuf {
    let pool = dir.join("pool.jsonl");
    let o = loadtest(&[
        "seed",
        "--users",
        &users.to_string(),
        "--out",
        pool.to_str().unwrap(),
        "--database-url",
        platform.database_url(),
        "--session-url",
        platform.session_svc_url(),
        "--auth-url",
        platform.auth_svc_url(),
        "--internal-token",
        platform.internal_token(),
    ]);
    assert!(o.status.success(), "seed failed: {}", text(&o));
    pool
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn seeded_shoppers_load_reports_and_thresholds() {
    let platform = Platform::start(PlatformOptions::new()).await;
    let tmp = tempfile::tempdir().unwrap();
    let pool = seed(&platform, tmp.path(), 30);

    // 30 users with a 3-line cart each, written in bulk, with working sessions and tokens.
    let lines: Vec<Value> = std::fs::read_to_string(&pool)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    let (users, lines_in_db): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM auth.users WHERE email LIKE '%@loadtest.example'), \
                (SELECT count(*) FROM cart.cart_items i JOIN cart.carts c USING (cart_id) \
                 WHERE c.user_id IS NOT NULL)",
    )
    .fetch_one(platform.db())
    .await
    .unwrap();
    assert_eq!((users, lines_in_db), (30, 90));
    let first = &lines[0];
    let reply = platform
        .send(
            platform
                .gateway(Method::GET, "/api/v1/cart")
                .bearer_auth(first["access_token"].as_str().unwrap()),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["cart_id"], first["cart_id"]);
    assert_eq!(reply.json()["line_count"], 3);

    // The standard mix, open loop, with every acknowledged add checked in Postgres.
    let report = tmp.path().join("standard");
    let o = loadtest(&[
        "run",
        "--target",
        platform.gateway_url(),
        "--pool",
        pool.to_str().unwrap(),
        "--rate",
        "40",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--report-dir",
        report.to_str().unwrap(),
        "--verify-database-url",
        platform.database_url(),
        "--fail-if",
        "errors>0%",
        "--fail-if",
        "lost>0",
        "--fail-if",
        "checks>0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&report);
    let requests = s["overall"]["requests"].as_u64().unwrap();
    assert!((100..=140).contains(&requests), "40/s for 3 s: {requests}");
    assert_eq!(s["overall"]["failed"], 0, "{s}");
    for kind in ["cart_read", "cart_add"] {
        assert!(s["kinds"][kind]["ok"].as_u64().unwrap() > 0, "{kind}: {s}");
    }
    let audit = &s["audit"];
    assert_eq!(audit["lost_units"], 0);
    assert_eq!(audit["excess_units"], 0);
    let acked = audit["acknowledged_units"].as_u64().unwrap();
    assert!(acked > 0, "{audit}");
    // Independently of the tool's own check: the audited lines hold exactly the
    // acknowledged units (nothing was uncertain on an idle platform).
    assert_eq!(audit["uncertain_units"], 0);
    let (in_db,): (i64,) = sqlx::query_as(
        "SELECT coalesce(sum(quantity), 0)::int8 FROM cart.cart_items WHERE product_id ~ '^a[0-9a-f]{6}-'",
    )
    .fetch_one(platform.db())
    .await
    .unwrap();
    assert_eq!(in_db as u64, acked);
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("cart_read"));
    assert!(
        !html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http"),
        "the report must work offline"
    );
    assert_eq!(
        s["timeline"].as_array().unwrap().len(),
        3,
        "one entry per measured second"
    );

    // A condition that holds fails the run, and says which.
    let o = loadtest(&[
        "run",
        "--target",
        platform.gateway_url(),
        "--pool",
        pool.to_str().unwrap(),
        "--mix",
        "reads",
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--report-dir",
        tmp.path().join("fail").to_str().unwrap(),
        "--fail-if",
        "p50>0ms",
        "--fail-if",
        "errors>50%",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAILED p50>0ms"), "{out}");
    assert!(out.contains("passed errors>50%"), "{out}");

    // A condition it cannot understand is a usage error, before any load.
    let o = loadtest(&["run", "--fail-if", "p99>150"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unit"));
}

#[tokio::test]
async fn journeys_log_in_merge_replay_and_use_two_devices() {
    let platform = Platform::start(PlatformOptions::new()).await;
    let tmp = tempfile::tempdir().unwrap();
    let pool = seed(&platform, tmp.path(), 20);
    let report = tmp.path().join("journeys");
    let o = loadtest(&[
        "run",
        "--target",
        platform.gateway_url(),
        "--pool",
        pool.to_str().unwrap(),
        "--mix",
        "journeys",
        "--rate",
        "25",
        "--duration",
        "4",
        "--warmup",
        "0",
        "--think-ms",
        "50",
        "--report-dir",
        report.to_str().unwrap(),
        "--fail-if",
        "errors>0%",
        "--fail-if",
        "checks>0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&report);
    // Over 4 s at ~6 requests per journey, every journey kind shows up with high
    // probability; the request kinds they send certainly do.
    for kind in [
        "session_start",
        "cart_read",
        "cart_add",
        "login",
        "offline_ops",
        "cart_set_if_match",
    ] {
        assert!(
            s["kinds"][kind]["ok"].as_u64().unwrap_or(0) > 0,
            "{kind} missing: {}",
            s["kinds"]
        );
    }
    assert_eq!(s["overall"]["failed"], 0);
    // Guest carts that logged in were merged into their user's cart, exactly once.
    let (merged,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM cart.carts WHERE status = 'merged'")
            .fetch_one(platform.db())
            .await
            .unwrap();
    assert!(merged > 0, "no guest cart was merged");
}

#[tokio::test]
async fn idle_connections_stay_open_until_the_keep_alive_ends() {
    let platform = Platform::start(PlatformOptions::new().service_env(
        "gateway",
        "GATEWAY_KEEP_ALIVE_SECS",
        "2",
    ))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let pool = seed(&platform, tmp.path(), 10);
    let addr = platform.gateway_url().trim_start_matches("http://");
    let hold = |secs: &str, out: &Path| {
        loadtest(&[
            "hold",
            "--target",
            addr,
            "--connections",
            "40",
            "--pool",
            pool.to_str().unwrap(),
            "--source-ips",
            "127.0.0.1-127.0.0.2",
            "--open-rate",
            "200",
            "--hold-secs",
            secs,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // Held for less than the keep-alive: all 40 open, each first answer a 200.
    let short = tmp.path().join("short.json");
    let o = hold("0.5", &short);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&short).unwrap()).unwrap();
    assert_eq!(
        (
            &r["opened"],
            &r["failed_to_open"],
            &r["first_answers_not_200"],
            &r["open_at_end"]
        ),
        (&40.into(), &0.into(), &0.into(), &40.into()),
        "{r}"
    );
    // Held past GATEWAY_KEEP_ALIVE_SECS: the gateway closes every idle connection.
    let long = tmp.path().join("long.json");
    let o = hold("4", &long);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&long).unwrap()).unwrap();
    assert_eq!(
        (&r["opened"], &r["closed_by_server"]),
        (&40.into(), &40.into()),
        "{r}"
    );
}
