//! The cleanup worker as operators run it: the real binary in its three modes, next to
//! the real platform, judged by what is left in Postgres, what a shopper sees through
//! the gateway, its metrics and its exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use e2e::{Platform, PlatformOptions};
use uuid::Uuid;

/// The platform's own worker does one pass on the empty database at start and then
/// sleeps for a day, on a lock of its own, so the workers a test starts are the only
/// ones that touch what the test seeds.
async fn platform() -> Platform {
    let platform = Platform::start(
        PlatformOptions::new()
            .service_env("cleanup-worker", "CLEANUP_INTERVAL_SECS", "86400")
            .service_env("cleanup-worker", "CLEANUP_LOCK_KEY", "1"),
    )
    .await;
    let url = platform.cleanup_worker_url().to_owned();
    eventually(
        Duration::from_secs(20),
        "the platform's worker finishes its first pass",
        || {
            let (platform, url) = (&platform, url.clone());
            async move {
                platform
                    .metric(&url, "cleanup_passes_total", &[("result", "ok")])
                    .await
                    .unwrap_or(0.0)
                    >= 1.0
            }
        },
    )
    .await;
    platform
}

async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin() -> PathBuf {
    e2e::binary("cleanup-worker")
}

/// A cleanup-worker process of the test's own, on the platform's database and Redis
/// prefix (or none), killed when dropped; its log is shown when the test fails.
struct Worker {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Worker {
    fn start(platform: Option<&Platform>, env: &[(&str, &str)]) -> Worker {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("cleanup-worker-{}.log", Uuid::new_v4()));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CLEANUP_LISTEN", format!("127.0.0.1:{port}"))
            .env("INTERNAL_TOKEN", "x".repeat(32))
            .env("REDIS_URL", std::env::var("REDIS_URL").unwrap_or_default())
            .env("RUST_LOG", "info");
        if let Some(p) = platform {
            cmd.env("DATABASE_URL", p.database_url())
                .env("REDIS_KEY_PREFIX", p.redis_key_prefix())
                .env("INTERNAL_TOKEN", p.internal_token());
        }
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (cargo build --workspace --bins)",
                bin().display()
            )
        });
        Worker {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to end on its own.
    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    async fn metric(&self, platform: &Platform, name: &str, labels: &[(&str, &str)]) -> f64 {
        platform
            .metric(&self.url, name, labels)
            .await
            .unwrap_or(-1.0)
    }

    async fn ready(&self) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("{}/readyz", self.url);
        eventually(
            Duration::from_secs(20),
            "the worker answers /readyz 200",
            || {
                let (client, url) = (client.clone(), url.clone());
                async move { matches!(client.get(url).send().await, Ok(r) if r.status() == 200) }
            },
        )
        .await;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- cleanup-worker log -----\n{}", self.log());
        }
        let _ = fs::remove_file(&self.log);
    }
}

async fn carts_left(platform: &Platform) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cart.carts")
        .fetch_one(platform.db())
        .await
        .unwrap()
}

/// `n` guest carts last changed 20 days ago, written straight into Postgres.
async fn seed_expired_guest_carts(platform: &Platform, n: i32) {
    sqlx::query(
        "INSERT INTO cart.carts (cart_id, updated_at)
         SELECT gen_random_uuid(), now() - interval '20 days' - make_interval(secs => g)
           FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(platform.db())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cart_retention_below_30_days_is_refused_at_start_up() {
    let mut worker = Worker::start(None, &[("CLEANUP_USER_CART_RETENTION_DAYS", "29")]);
    let status = worker.wait(Duration::from_secs(20));
    assert!(!status.success(), "it must refuse to start: {status}");
    let log = worker.log();
    assert!(
        log.contains("CLEANUP_USER_CART_RETENTION_DAYS=29") && log.contains("at least 30 days"),
        "the message names the variable and the floor:\n{log}"
    );
}

/// A guest who left 15 days ago loses the cart (and its cached copy: the gateway shows
/// an empty cart, not a stale one); a guest active yesterday keeps theirs. The dry run
/// before it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_then_once_delete_only_the_expired_guest_cart() {
    let platform = platform().await;
    let gone = platform.start_guest_session().await;
    gone.add_item("sku-1", 2).await.assert_status(200, "add");
    let stays = platform.start_guest_session().await;
    stays.add_item("sku-2", 1).await.assert_status(200, "add");
    // Both are cached now; backdate their last change.
    for (cart, age) in [(&gone, "15 days"), (&stays, "1 day")] {
        sqlx::query(&format!(
            "UPDATE cart.carts SET updated_at = now() - interval '{age}' WHERE cart_id = $1"
        ))
        .bind(cart.cart_id)
        .execute(platform.db())
        .await
        .unwrap();
    }
    let lock = ("CLEANUP_LOCK_KEY", "42");

    let mut dry = Worker::start(Some(&platform), &[("CLEANUP_MODE", "dry-run"), lock]);
    let status = dry.wait(Duration::from_secs(30));
    assert!(status.success(), "dry-run exits 0: {status}\n{}", dry.log());
    assert!(
        dry.log().contains("\"would_delete\":1"),
        "it reports what it would delete:\n{}",
        dry.log()
    );
    assert_eq!(carts_left(&platform).await, 2, "a dry run deletes nothing");

    let mut once = Worker::start(Some(&platform), &[("CLEANUP_MODE", "once"), lock]);
    let status = once.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "once exits 0 after its pass: {status}\n{}",
        once.log()
    );

    assert!(
        platform.db_cart(gone.cart_id).await.is_none(),
        "the expired cart is deleted"
    );
    let cart = gone.current_cart().await;
    assert_eq!(
        (cart.version, cart.items.len()),
        (0, 0),
        "the shopper sees an empty cart, not a cached one"
    );
    assert!(platform.db_cart(stays.cart_id).await.is_some());
    let cart = stays.current_cart().await;
    assert_eq!(
        (cart.version, cart.items.len()),
        (1, 1),
        "the recent cart is untouched"
    );
}

/// Two replicas at once: one holds the lock and deletes, the other waits (ready, lock
/// gauge 0, nothing deleted). SIGKILL the first and the second takes over; SIGTERM the
/// second mid-pass and it stops after its batch, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_deletes_the_other_waits_and_takes_over_when_it_dies() {
    let platform = platform().await;
    const CARTS: i64 = 3_000;
    seed_expired_guest_carts(&platform, CARTS as i32).await;
    let env = [
        ("CLEANUP_MODE", "run"),
        ("CLEANUP_LOCK_KEY", "4242"),
        ("CLEANUP_BATCH_SIZE", "50"),
        ("CLEANUP_MAX_ROWS_PER_SECOND", "200"),
    ];
    let first = Worker::start(Some(&platform), &env);
    first.ready().await;
    eventually(
        Duration::from_secs(10),
        "the first worker takes the lock",
        || async { first.metric(&platform, "cleanup_lock_held", &[]).await == 1.0 },
    )
    .await;
    let second = Worker::start(Some(&platform), &env);
    second.ready().await;
    eventually(
        Duration::from_secs(10),
        "the first worker deletes",
        || async { carts_left(&platform).await < CARTS - 100 },
    )
    .await;

    assert_eq!(
        second.metric(&platform, "cleanup_lock_held", &[]).await,
        0.0,
        "the second waits"
    );
    let by_second = second
        .metric(
            &platform,
            "cleanup_rows_deleted_total",
            &[("kind", "guest_carts")],
        )
        .await;
    assert_eq!(by_second, 0.0, "a waiting worker deletes nothing");
    assert!(second
        .log()
        .contains("another worker holds the cleanup lock"));

    first.signal("-KILL");
    let left_at_kill = carts_left(&platform).await;
    eventually(
        // Generous: on a loaded CI machine the take-over waits for Postgres to notice
        // the killed worker's connection and for the next 1 s lock poll.
        Duration::from_secs(30),
        "the second worker takes over",
        || async { second.metric(&platform, "cleanup_lock_held", &[]).await == 1.0 },
    )
    .await;
    eventually(
        // Generous: on a loaded CI machine the take-over waits for Postgres to notice
        // the killed worker's connection and for the next 1 s lock poll.
        Duration::from_secs(30),
        "the second worker deletes",
        || async {
            second
                .metric(
                    &platform,
                    "cleanup_rows_deleted_total",
                    &[("kind", "guest_carts")],
                )
                .await
                >= 100.0
        },
    )
    .await;
    assert!(carts_left(&platform).await < left_at_kill);

    // Graceful stop mid-pass: the batch in hand finishes, the rest waits for next time.
    let mut second = second;
    second.signal("-TERM");
    let stopped = Instant::now();
    let status = second.wait(Duration::from_secs(15));
    assert!(status.success(), "a stopped worker exits 0: {status}");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "it stops after a batch, not after the pass"
    );
    let left = carts_left(&platform).await;
    assert!(left > 0, "the pass was cut short, not finished");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        carts_left(&platform).await,
        left,
        "nothing is deleted after the stop"
    );
}
