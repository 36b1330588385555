//! Connection pools for Postgres and Redis with bounded sizes and short waits: under
//! overload a request fails fast with 503 instead of queueing until every caller times
//! out (NFR5).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::{Env, Secret};

#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
}

impl PgSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        Self {
            url: env.secret_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/cart_platform",
            ),
            max_connections: env.int_in("DATABASE_MAX_CONNECTIONS", 16, 1..=1000),
            acquire_timeout: env.millis("DATABASE_ACQUIRE_TIMEOUT_MS", 1000, 10..=60_000),
            statement_timeout: env.millis("DATABASE_STATEMENT_TIMEOUT_MS", 5000, 0..=600_000),
        }
    }

    fn options(&self) -> anyhow::Result<PgConnectOptions> {
        // The URL may carry a password: never echo it in the error.
        let opts = PgConnectOptions::from_str(self.url.expose())
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid postgres:// URL"))?;
        let ms = self.statement_timeout.as_millis().to_string();
        Ok(opts.options([("statement_timeout", ms.as_str())]))
    }

    /// A pool that connects lazily, so the service starts (and reports not-ready) while
    /// Postgres is down, and recovers by itself when it returns.
    pub fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(0)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            .connect_lazy_with(self.options()?))
    }

    /// Runs `migrator` for one schema. The schema is created first and put first on the
    /// search path, so the migration history (`_sqlx_migrations`) lives inside the schema
    /// it describes: each owning service keeps its own history in the shared database.
    pub async fn migrate(&self, schema: &str, migrator: &Migrator) -> anyhow::Result<()> {
        anyhow::ensure!(
            schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "schema names are lower-case identifiers"
        );
        let opts = self.options()?.options([("search_path", schema)]);
        let mut conn = PgConnection::connect_with(&opts).await.context(
            "connecting to Postgres to migrate (is DATABASE_URL right and the database created?)",
        )?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating schema {schema}"))?;
        migrator
            .run(&mut conn)
            .await
            .with_context(|| format!("migrating schema {schema}"))?;
        conn.close().await.ok();
        tracing::info!(schema, "migrations applied");
        Ok(())
    }
}

/// `SELECT 1` for `/readyz`.
pub async fn pg_ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|_| "unreachable".to_owned())
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: Secret,
    pub pool_size: usize,
    pub timeout: Duration,
    /// Prepended to every key this process writes: lets several deployments (or test
    /// runs) share one Redis without touching each other's keys.
    pub key_prefix: String,
}

impl RedisSettings {
    pub fn read(env: &mut Env<'_>) -> Self {
        Self {
            url: env.secret_or("REDIS_URL", "redis://127.0.0.1:6379"),
            pool_size: env.int_in("REDIS_POOL_SIZE", 16, 1..=1024),
            timeout: env.millis("REDIS_TIMEOUT_MS", 250, 10..=60_000),
            key_prefix: env.string("REDIS_KEY_PREFIX", ""),
        }
    }

    /// Connections are made on first use, so the service starts while Redis is down.
    pub fn pool(&self) -> anyhow::Result<deadpool_redis::Pool> {
        let mut cfg = deadpool_redis::Config::from_url(self.url.expose());
        cfg.pool = Some(PoolConfig {
            max_size: self.pool_size,
            timeouts: Timeouts {
                wait: Some(self.timeout),
                create: Some(self.timeout),
                recycle: Some(self.timeout),
            },
            ..PoolConfig::default()
        });
        cfg.create_pool(Some(Runtime::Tokio1))
            .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid redis:// URL"))
    }
}

/// The Redis connection of a request path. deadpool-redis checks every connection it
/// hands out with an `UNWATCH` + `PING` round trip, which doubled the Redis round trips
/// (and their CPU on both sides) of every session touch and cart cache read. Its
/// connections are multiplexed, made to be shared by concurrent callers, and nothing
/// here uses `WATCH`: so one connection from the pool is kept and shared until a call on
/// it fails, and only then is the next one taken from the pool (which checks it, or
/// connects afresh). The pool keeps its bounds, timeouts and lazy connecting.
#[derive(Clone)]
pub struct SharedRedis {
    pool: deadpool_redis::Pool,
    current:
        std::sync::Arc<std::sync::Mutex<Option<deadpool_redis::redis::aio::MultiplexedConnection>>>,
}

impl SharedRedis {
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self {
            pool,
            current: std::sync::Arc::default(),
        }
    }

    /// The shared connection, taken from the pool when there is none yet.
    pub async fn conn(
        &self,
    ) -> Result<deadpool_redis::redis::aio::MultiplexedConnection, deadpool_redis::PoolError> {
        if let Some(conn) = self.current.lock().ok().and_then(|c| c.clone()) {
            return Ok(conn);
        }
        let pooled = self.pool.get().await?;
        let conn = (*pooled).clone();
        if let Ok(mut current) = self.current.lock() {
            *current = Some(conn.clone());
        }
        Ok(conn)
    }

    /// Forgets the shared connection after a failed call on it (broken, or Redis too
    /// slow): the next call takes one from the pool, checked.
    pub fn discard(&self) {
        if let Ok(mut current) = self.current.lock() {
            *current = None;
        }
    }
}

/// `PING` for `/readyz`.
pub async fn redis_ping(pool: &deadpool_redis::Pool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|_| "unreachable".to_owned())?;
    deadpool_redis::redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|_| "not answering".to_owned())
}
