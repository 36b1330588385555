use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Url};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::cart::{CartView, DbCart};
use crate::datastores::{PrivatePostgres, PrivateRedis};
use crate::guest::Guest;
use crate::reply::Reply;

/// How long the whole platform may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the services get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of each log shown when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Extra configuration for one platform.
#[derive(Debug, Clone, Default)]
pub struct PlatformOptions {
    env: Vec<(String, String)>,
    service_env: Vec<(String, String, String)>,
    own_redis: bool,
    own_redis_stopped: bool,
    own_postgres: bool,
}

impl PlatformOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// An extra environment variable for every service, e.g.
    /// `SESSION_GUEST_IDLE_TIMEOUT_SECS=2`. Overrides the harness's own.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// An extra environment variable for one service only (`"cart-svc"`, `"gateway"`,
    /// ...), e.g. `service_env("cart-svc", "CART_MAX_LINES", "5")`. Overrides both the
    /// harness's own variables and [`PlatformOptions::env`].
    pub fn service_env(
        mut self,
        service: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        let service = service.into();
        assert!(
            SERVICE_NAMES.contains(&service.as_str()),
            "service_env: unknown service {service:?} (one of {SERVICE_NAMES:?})"
        );
        self.service_env.push((service, key.into(), value.into()));
        self
    }

    /// Gives cart-svc a `redis-server` of this platform's own (see
    /// [`Platform::redis`]), which the test may stop, restart, freeze and thaw.
    /// session-svc and cleanup-worker keep the shared `REDIS_URL`, so guests can still
    /// authenticate while cart-svc's Redis is down.
    pub fn own_redis(mut self) -> Self {
        self.own_redis = true;
        self
    }

    /// Like [`PlatformOptions::own_redis`], but that Redis is stopped before the
    /// services start (cart-svc must start and be ready without it); start it with
    /// `platform.redis().restart()`.
    pub fn own_redis_stopped(mut self) -> Self {
        self.own_redis = true;
        self.own_redis_stopped = true;
        self
    }

    /// Runs the whole platform on a Postgres cluster of its own (see
    /// [`Platform::postgres`]), which the test may pause and resume; `DATABASE_URL` is
    /// not used. Every Postgres user (auth-svc, cart-svc, cleanup-worker) and the
    /// test's own pool connect to it; session-svc uses Redis only.
    pub fn own_postgres(mut self) -> Self {
        self.own_postgres = true;
        self
    }
}

struct Service {
    name: &'static str,
    url: String,
    log: PathBuf,
    child: Child,
}

/// The five binaries, running on their own database and Redis key prefix.
///
/// Dropping it stops the services (SIGTERM, then a kill after 10 s), shows the tail of
/// every log when the test is failing, and drops the database.
pub struct Platform {
    gateway_url: String,
    auth_url: String,
    session_url: String,
    cart_url: String,
    cleanup_url: String,
    client: reqwest::Client,
    db: PgPool,
    admin_database_url: String,
    database_name: String,
    database_url: String,
    redis_key_prefix: String,
    internal_token: String,
    log_dir: PathBuf,
    services: Vec<Service>,
    service_env: Vec<(String, String, String)>,
    logs_shown: bool,
    redis: Option<PrivateRedis>,
    postgres: Option<PrivatePostgres>,
    /// The environment every service started with (for extra replicas).
    base_env: Vec<(String, String)>,
}

impl Platform {
    /// Creates a fresh database and Redis key prefix, starts the five binaries on free
    /// ports, and returns once every `/readyz` answers 200.
    pub async fn start(options: PlatformOptions) -> Platform {
        let redis_url = required_env("REDIS_URL");
        let bin_dir = bin_dir();
        for name in SERVICE_NAMES {
            let path = bin_dir.join(name);
            assert!(
                path.is_file(),
                "binary {} is missing: run `cargo build --workspace --bins` first \
                 (or point E2E_BIN_DIR at the directory that holds the five binaries)",
                path.display()
            );
        }

        // Private datastores first (they hold their ports from then on), owned by locals
        // until the platform holds them, so a panic on the way stops them.
        let postgres = if options.own_postgres {
            let [port] = free_ports();
            Some(PrivatePostgres::start(port).await)
        } else {
            None
        };
        let redis = options.own_redis.then(|| {
            let [port] = free_ports();
            let redis = PrivateRedis::start(port);
            if options.own_redis_stopped {
                redis.stop();
            }
            redis
        });
        let admin_database_url = match &postgres {
            Some(pg) => pg.admin_url(),
            None => required_env("DATABASE_URL"),
        };

        let run_id = Uuid::new_v4().simple().to_string();
        let database_name = format!("e2e_{run_id}");
        let database_url = create_database(&admin_database_url, &database_name).await;
        let db = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&database_url)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to the fresh database {database_name}: {e}")
            });

        let log_dir = std::env::temp_dir().join(format!("e2e-{run_id}"));
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create log dir {}: {e}", log_dir.display()));

        let [gateway, auth, session, cart, cleanup] = free_ports();
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let internal_token = hex::encode(rand::random::<[u8; 24]>());
        let redis_key_prefix = format!("e2e:{run_id}:");

        let mut platform = Platform {
            gateway_url: url(gateway),
            auth_url: url(auth),
            session_url: url(session),
            cart_url: url(cart),
            cleanup_url: url(cleanup),
            client: client_builder().build().expect("reqwest client"),
            db,
            admin_database_url,
            database_name,
            database_url: database_url.clone(),
            redis_key_prefix: redis_key_prefix.clone(),
            internal_token: internal_token.clone(),
            log_dir,
            services: Vec::new(),
            service_env: options.service_env,
            logs_shown: false,
            redis,
            postgres,
            base_env: Vec::new(),
        };
        if let Some(redis) = &platform.redis {
            platform
                .service_env
                .insert(0, ("cart-svc".into(), "REDIS_URL".into(), redis.url()));
        }

        let listen = |port: u16| format!("127.0.0.1:{port}");
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url),
            ("REDIS_URL".into(), redis_url),
            ("REDIS_KEY_PREFIX".into(), redis_key_prefix),
            ("INTERNAL_TOKEN".into(), internal_token),
            ("GATEWAY_LISTEN".into(), listen(gateway)),
            ("AUTH_LISTEN".into(), listen(auth)),
            ("SESSION_LISTEN".into(), listen(session)),
            ("CART_LISTEN".into(), listen(cart)),
            ("CLEANUP_LISTEN".into(), listen(cleanup)),
            ("AUTH_URL".into(), url(auth)),
            ("SESSION_URL".into(), url(session)),
            ("CART_URL".into(), url(cart)),
            // A signing key of the run's own, generated by auth-svc at start.
            (
                "AUTH_SIGNING_KEYS_DIR".into(),
                platform.log_dir.join("auth-keys").display().to_string(),
            ),
            // Tests drive one session hard; the limits are exercised by tests that set
            // their own.
            ("RATE_LIMIT_PER_SECOND".into(), "100000".into()),
            ("RATE_LIMIT_BURST".into(), "100000".into()),
            ("RATE_LIMIT_AUTH_PER_MINUTE".into(), "100000".into()),
            ("RATE_LIMIT_AUTH_BURST".into(), "100000".into()),
            ("RUST_LOG".into(), "info".into()),
            ("RUST_BACKTRACE".into(), "1".into()),
        ];
        env.extend(options.env);
        platform.base_env = env.clone();

        // auth-svc and cart-svc migrate the database when they start: let them get
        // there (they listen once migrated) before the services that read their tables.
        let deadline = Instant::now() + READY_TIMEOUT;
        for name in ["auth-svc", "cart-svc"] {
            platform.spawn(&bin_dir, name, &env);
        }
        platform.wait_until(deadline, "/livez").await;
        for name in ["session-svc", "cleanup-worker", "gateway"] {
            platform.spawn(&bin_dir, name, &env);
        }
        platform.wait_until(deadline, "/readyz").await;
        platform
    }

    /// Starts another gateway process (a second replica) with the same configuration
    /// plus `extra` variables, on a free port; returns its URL once it is ready.
    pub async fn start_extra_gateway(&mut self, extra: &[(&str, &str)]) -> String {
        let [port] = free_ports();
        let url = format!("http://127.0.0.1:{port}");
        let mut last: Vec<(String, String)> =
            vec![("GATEWAY_LISTEN".into(), format!("127.0.0.1:{port}"))];
        last.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let env = self.base_env.clone();
        self.spawn_process(
            &bin_dir(),
            "gateway",
            "gateway-extra",
            url.clone(),
            &env,
            &last,
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = self
                .client
                .get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "the extra gateway on {port} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway, where every public call goes: `http://127.0.0.1:<port>`.
    pub fn gateway_url(&self) -> &str {
        &self.gateway_url
    }

    /// cart-svc itself, for tests that call it directly (it serves only the gateway).
    pub fn cart_svc_url(&self) -> &str {
        &self.cart_url
    }

    pub fn auth_svc_url(&self) -> &str {
        &self.auth_url
    }

    pub fn session_svc_url(&self) -> &str {
        &self.session_url
    }

    pub fn cleanup_worker_url(&self) -> &str {
        &self.cleanup_url
    }

    /// cart-svc's own Redis; fails unless started with [`PlatformOptions::own_redis`].
    #[track_caller]
    pub fn redis(&self) -> &PrivateRedis {
        self.redis.as_ref().expect(
            "this platform has no Redis of its own: start it with PlatformOptions::own_redis()",
        )
    }

    /// The platform's own Postgres cluster; fails unless started with
    /// [`PlatformOptions::own_postgres`].
    #[track_caller]
    pub fn postgres(&self) -> &PrivatePostgres {
        self.postgres
            .as_ref()
            .expect("this platform has no Postgres of its own: start it with PlatformOptions::own_postgres()")
    }

    /// One sample of a service's `GET /metrics` (`base_url` is e.g.
    /// [`Platform::cart_svc_url`]): the value of the series `name` whose labels are
    /// exactly `labels` (in any order); `None` when there is no such series yet.
    pub async fn metric(&self, base_url: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let reply = Reply::send(self.client.get(format!("{base_url}/metrics"))).await;
        reply.assert_status(200, &format!("GET {base_url}/metrics"));
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        reply.text.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, mut series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                None => (series, Vec::new()),
            };
            series_labels.sort();
            (series_name == name && series_labels == wanted)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
    }

    /// A client without a cookie store: credentials are whatever the test sends.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A new client that keeps cookies the way a browser would.
    pub fn cookie_client(&self) -> reqwest::Client {
        client_builder()
            .cookie_store(true)
            .build()
            .expect("reqwest client with a cookie store")
    }

    /// A pool on this platform's own database, for assertions.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    pub fn redis_key_prefix(&self) -> &str {
        &self.redis_key_prefix
    }

    /// The shared secret the services expect on internal calls.
    pub fn internal_token(&self) -> &str {
        &self.internal_token
    }

    /// Where each service's stdout and stderr go (`<service>.log`).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Every service's log so far, each under a `==> <service> <==` header.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for service in &self.services {
            all.push_str(&format!("==> {} <==\n", service.name));
            all.push_str(&fs::read_to_string(&service.log).unwrap_or_default());
        }
        all
    }

    /// A request to the gateway, with no credential.
    pub fn gateway(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.gateway_url))
    }

    /// A request straight to cart-svc, with no internal credential.
    pub fn cart_svc(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.cart_url))
    }

    /// Sends a request that went through the gateway and checks what every gateway
    /// response must carry (an `X-Request-Id`).
    pub async fn send(&self, request: RequestBuilder) -> Reply {
        Reply::through_gateway(request).await
    }

    /// `POST /api/v1/sessions` with no body: a new guest, checked to be a 201.
    pub async fn start_guest_session(&self) -> Guest {
        let reply = self
            .send(self.gateway(Method::POST, "/api/v1/sessions"))
            .await;
        Guest::from_created_session(self.client.clone(), self.gateway_url.clone(), reply)
    }

    /// `POST /api/v1/sessions` with a body (e.g. `{"cart_token": …}` to recover a cart).
    pub async fn start_guest_session_with(&self, body: serde_json::Value) -> Guest {
        let reply = self
            .send(self.gateway(Method::POST, "/api/v1/sessions").json(&body))
            .await;
        Guest::from_created_session(self.client.clone(), self.gateway_url.clone(), reply)
    }

    /// The cart as Postgres holds it, `None` when no row was written yet.
    pub async fn db_cart(&self, cart_id: Uuid) -> Option<DbCart> {
        DbCart::load(&self.db, cart_id).await
    }

    /// Asserts that Postgres holds exactly the cart a response showed: no row while
    /// the cart was never changed (version 0), else the same version, lines and owner,
    /// status `active`.
    pub async fn assert_db_matches(&self, cart: &CartView, when: &str) {
        let stored = self.db_cart(cart.cart_id).await;
        cart.assert_stored_as(stored.as_ref(), when);
    }

    fn spawn(&mut self, bin_dir: &Path, name: &'static str, env: &[(String, String)]) {
        let url = match name {
            "gateway" => self.gateway_url.clone(),
            "auth-svc" => self.auth_url.clone(),
            "session-svc" => self.session_url.clone(),
            "cart-svc" => self.cart_url.clone(),
            _ => self.cleanup_url.clone(),
        };
        self.spawn_process(bin_dir, name, name, url, env, &[]);
    }

    /// Starts `binary` as the service called `name` (its log is `<name>.log`), with
    /// `env`, then the binary's `service_env`, then `last`.
    fn spawn_process(
        &mut self,
        bin_dir: &Path,
        binary: &'static str,
        name: &'static str,
        url: String,
        env: &[(String, String)],
        last: &[(String, String)],
    ) {
        let log = self.log_dir.join(format!("{name}.log"));
        let stdout =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let stderr = stdout.try_clone().expect("clone a log file handle");
        let mut command = Command::new(bin_dir.join(binary));
        // A clean environment: a variable exported in the developer's shell (say
        // CART_MAX_LINES=5) must not change what the tests see.
        command.env_clear();
        for key in ["PATH", "HOME", "TMPDIR"] {
            if let Ok(value) = std::env::var(key) {
                command.env(key, value);
            }
        }
        let own = self
            .service_env
            .iter()
            .filter(|(service, _, _)| service == binary)
            .map(|(_, k, v)| (k.as_str(), v.as_str()));
        command
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(own)
            .envs(last.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.services.push(Service {
            name,
            url,
            log,
            child,
        });
    }

    /// Polls `path` on every started service until each answers 200; fails early when
    /// a service exits, and with every log's tail at the deadline.
    async fn wait_until(&mut self, deadline: Instant, path: &str) {
        let probe = client_builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("reqwest client");
        let mut pending: Vec<usize> = (0..self.services.len()).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for i in pending {
                if let Ok(Some(status)) = self.services[i].child.try_wait() {
                    let name = self.services[i].name;
                    self.fail_with_logs(&format!("{name} exited during start-up ({status})"));
                }
                let url = format!("{}{path}", self.services[i].url);
                let ok = matches!(probe.get(&url).send().await, Ok(r) if r.status() == 200);
                if !ok {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = pending.iter().map(|&i| self.services[i].name).collect();
                self.fail_with_logs(&format!(
                    "not ready after {}s: GET {path} is not 200 on {}",
                    READY_TIMEOUT.as_secs(),
                    names.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn fail_with_logs(&mut self, what: &str) -> ! {
        self.logs_shown = true;
        panic!("{what}\n{}", self.log_tails());
    }

    fn log_tails(&self) -> String {
        let mut out = format!("logs in {}:\n", self.log_dir.display());
        for service in &self.services {
            let text = fs::read_to_string(&service.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!(
                "----- {} (last {} of {} lines) -----\n{}\n",
                service.name,
                tail.len(),
                lines.len(),
                tail.join("\n")
            ));
        }
        let own = [
            (
                "private postgres",
                self.postgres.as_ref().map(PrivatePostgres::log_path),
            ),
            (
                "private redis",
                self.redis.as_ref().map(PrivateRedis::log_path),
            ),
        ];
        for (name, log) in own {
            if let Some(log) = log {
                let text = fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                out.push_str(&format!(
                    "----- {name} ({}) -----\n{}\n",
                    log.display(),
                    tail.join("\n")
                ));
            }
        }
        out
    }

    /// Sends SIGTERM to one service and waits up to `within` for it to exit: its exit
    /// status, or `None` if it had to be killed.
    pub fn terminate(&mut self, name: &str, within: Duration) -> Option<ExitStatus> {
        let service = self
            .services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service named {name}"));
        let _ = Command::new("kill")
            .args(["-TERM", &service.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + within;
        loop {
            match service.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = service.child.kill();
                    let _ = service.child.wait();
                    return None;
                }
            }
        }
    }

    /// Stops every service: SIGTERM, up to 10 s to exit, then a kill. Returns how each
    /// one ended (a graceful stop is a success).
    pub fn stop(&mut self) -> Vec<(&'static str, Option<ExitStatus>)> {
        for service in &mut self.services {
            if matches!(service.child.try_wait(), Ok(None)) {
                // `kill` the program, because the workspace forbids the unsafe libc call.
                let _ = Command::new("kill")
                    .args(["-TERM", &service.child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut ended = Vec::new();
        for service in &mut self.services {
            let status = loop {
                match service.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = service.child.kill();
                        let _ = service.child.wait();
                        break None;
                    }
                }
            };
            ended.push((service.name, status));
        }
        ended
    }

    fn drop_database(&self) {
        let admin = self.admin_database_url.clone();
        let name = self.database_name.clone();
        let (done, finished) = mpsc::channel();
        // Drop cannot await, and the test's runtime may be gone or busy: a thread of
        // its own with a small runtime, waited on for a bounded time only.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        let mut conn = PgConnection::connect(&admin).await?;
                        sqlx::raw_sql(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                            .execute(&mut conn)
                            .await
                    })
                    .await;
                });
            }
            let _ = done.send(());
        });
        let _ = finished.recv_timeout(Duration::from_secs(6));
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // A paused or frozen datastore first goes on, so the services can stop cleanly.
        if let Some(postgres) = &self.postgres {
            postgres.resume();
        }
        if let Some(redis) = &self.redis {
            redis.thaw();
        }
        let ended = self.stop();
        let panicking = std::thread::panicking();
        if panicking && !self.logs_shown {
            let stops: Vec<String> = ended
                .iter()
                .map(|(name, status)| match status {
                    Some(status) => format!("{name}: {status}"),
                    None => format!("{name}: killed after {}s", STOP_GRACE.as_secs()),
                })
                .collect();
            eprintln!(
                "\n===== e2e platform (test failed) =====\nstopped: {}\n{}",
                stops.join(", "),
                self.log_tails()
            );
        }
        match self.postgres.take() {
            // The whole cluster goes, with the database.
            Some(postgres) => drop(postgres),
            None => self.drop_database(),
        }
        drop(self.redis.take());
        if !panicking {
            let _ = fs::remove_dir_all(&self.log_dir);
        }
    }
}

const SERVICE_NAMES: [&str; 5] = [
    "gateway",
    "auth-svc",
    "session-svc",
    "cart-svc",
    "cleanup-worker",
];

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set. The end-to-end tests need a real Postgres (a superuser \
             DATABASE_URL: each test creates its own database) and a real Redis \
             (REDIS_URL). Run them with `scripts/test.sh`, which starts throw-away ones \
             and sets both."
        ),
    }
}

/// Where a workspace binary the tests run lives (`E2E_BIN_DIR`, else target/debug).
pub fn binary(name: &str) -> PathBuf {
    bin_dir().join(name)
}

fn bin_dir() -> PathBuf {
    match std::env::var_os("E2E_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug"),
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        // Every address is on this machine: a proxy from the environment must not
        // intercept them.
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
}

/// Asks the kernel for free ports at once (so they are distinct), then releases them
/// for the services (and private datastores) to bind.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port on 127.0.0.1"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// `a="1",b="x"` as `[("a", "1"), ("b", "x")]` (values of our metrics hold no `",`).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    text.split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

async fn create_database(admin_url: &str, name: &str) -> String {
    let mut conn = PgConnection::connect(admin_url).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to DATABASE_URL ({e}); it must point at a running Postgres \
             as a superuser (scripts/test.sh starts one)"
        )
    });
    sqlx::raw_sql(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot CREATE DATABASE {name} through DATABASE_URL: {e}"));
    let _ = conn.close().await;

    let mut url =
        Url::parse(admin_url).unwrap_or_else(|e| panic!("DATABASE_URL is not a URL ({e})"));
    url.set_path(&format!("/{name}"));
    url.to_string()
}
