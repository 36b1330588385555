//! auth-svc owns the `auth` schema: users and their argon2id password hashes, refresh
//! tokens, failed-login throttling, and the signing keys of access tokens. It knows
//! nothing of carts or sessions: the gateway composes login from its answers.
//! Start reading at `http.rs`; `keys.rs` signs, `passwords.rs` hashes, `store.rs` holds
//! the queries.

pub mod http;
pub mod keys;
pub mod passwords;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use svc_kit::config::{Common, ConfigError, Env};
use svc_kit::datastores::PgSettings;
use svc_kit::metrics::Metrics;
use svc_kit::ops::{Check, Readiness};
use svc_kit::server::{serve, Service};

use crate::http::AuthMetrics;
use crate::keys::KeyRing;
use crate::passwords::{HashSettings, Hasher};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/auth");

/// OWASP's argon2id floor (m=19 MiB, t=2, p=1): the configuration may go above, never
/// below.
pub const MIN_ARGON2_MEMORY_KIB: u32 = 19_456;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub pg: PgSettings,
    pub run_migrations: bool,
    pub tokens: TokenSettings,
    pub keys_dir: PathBuf,
    pub generate_key: bool,
    pub hashing: HashSettings,
    pub throttle: ThrottleSettings,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// Failed logins per account: after `max_failures` within `window`, the account's
/// logins are refused (429) for `lockout`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    pub max_failures: i32,
    pub window: Duration,
    pub lockout: Duration,
}

impl Config {
    pub fn read(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let e = &mut env;
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let cfg = Self {
            common: Common::read(e, "AUTH_LISTEN", "127.0.0.1:8081"),
            pg: PgSettings::read(e),
            run_migrations: e.bool("RUN_MIGRATIONS", true),
            tokens: TokenSettings {
                issuer: e.string("AUTH_JWT_ISSUER", "cart-platform"),
                audience: e.string("AUTH_JWT_AUDIENCE", "cart-platform-api"),
                access_ttl: e.secs("AUTH_ACCESS_TOKEN_TTL_SECS", 900, 30..=24 * 3600),
                refresh_ttl: e.secs(
                    "AUTH_REFRESH_TOKEN_TTL_SECS",
                    30 * 24 * 3600,
                    60..=365 * 24 * 3600,
                ),
            },
            keys_dir: PathBuf::from(e.string("AUTH_SIGNING_KEYS_DIR", ".data/auth-keys")),
            generate_key: e.bool("AUTH_GENERATE_SIGNING_KEY", true),
            hashing: HashSettings {
                memory_kib: e.int_in(
                    "AUTH_ARGON2_MEMORY_KIB",
                    MIN_ARGON2_MEMORY_KIB,
                    MIN_ARGON2_MEMORY_KIB..=4 * 1024 * 1024,
                ),
                iterations: e.int_in("AUTH_ARGON2_ITERATIONS", 2, 2..=100),
                parallelism: e.int_in("AUTH_ARGON2_PARALLELISM", 1, 1..=64),
                concurrency: e.int_in("AUTH_HASH_CONCURRENCY", cpus, 1..=1024),
                max_waiting: e.int_in("AUTH_HASH_MAX_WAITING", 4 * cpus, 0..=100_000),
                max_wait: e.millis("AUTH_HASH_MAX_WAIT_MS", 1000, 1..=60_000),
            },
            throttle: ThrottleSettings {
                max_failures: e.int_in("AUTH_LOGIN_MAX_FAILURES", 5, 1..=1000),
                window: e.secs("AUTH_LOGIN_FAILURE_WINDOW_SECS", 900, 1..=24 * 3600),
                lockout: e.secs("AUTH_LOGIN_LOCKOUT_SECS", 300, 1..=24 * 3600),
            },
            max_body_bytes: e.int_in("MAX_BODY_BYTES", 16 * 1024, 1024..=1024 * 1024),
        };
        env.finish()?;
        Ok(cfg)
    }
}

pub struct AppState {
    pub pool: sqlx::PgPool,
    pub keys: KeyRing,
    pub hasher: Hasher,
    pub tokens: TokenSettings,
    pub throttle: ThrottleSettings,
    pub max_body_bytes: usize,
    pub metrics: AuthMetrics,
}

pub async fn migrate_only() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    cfg.pg.migrate("auth", &MIGRATOR).await
}

pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    let keys = KeyRing::load(&cfg.keys_dir, cfg.generate_key)?;
    if cfg.run_migrations {
        cfg.pg.migrate("auth", &MIGRATOR).await?;
    }
    let pool = cfg.pg.pool()?;
    let metrics = Metrics::new("auth-svc");
    metrics.watch_pg_pool(pool.clone(), cfg.pg.max_connections);
    let readiness = Readiness::new(vec![Check::postgres(pool.clone())]);
    let state = web::Data::new(AppState {
        pool: pool.clone(),
        keys,
        hasher: Hasher::new(cfg.hashing, &metrics)?,
        tokens: cfg.tokens.clone(),
        throttle: cfg.throttle,
        max_body_bytes: cfg.max_body_bytes,
        metrics: AuthMetrics::new(&metrics),
    });
    let svc = Service {
        name: "auth-svc",
        common: cfg.common.clone(),
        metrics: Arc::clone(&metrics),
        readiness,
    };
    serve(svc, move |c| {
        c.app_data(state.clone()).configure(http::routes);
    })
    .await?;
    pool.close().await;
    Ok(())
}
