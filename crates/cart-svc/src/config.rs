use domain::Limits;
use svc_kit::config::{Common, ConfigError, Env};
use svc_kit::datastores::{PgSettings, RedisSettings};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub pg: PgSettings,
    pub redis: RedisSettings,
    pub limits: Limits,
    /// Refuse `PUT` without `If-Match` (428): for frontends that must never overwrite a
    /// quantity another device changed.
    pub require_if_match_on_put: bool,
    pub max_body_bytes: usize,
    pub run_migrations: bool,
    /// How long a cached cart snapshot lives in Redis.
    pub cache_ttl_secs: u64,
    /// How long the cache's breaker keeps a failing Redis out of the request path.
    pub cache_breaker_cooldown: std::time::Duration,
    /// The longest a request may wait on Postgres (acquiring a connection included)
    /// before it is answered 503: a stalled database must not hang clients.
    pub db_deadline: std::time::Duration,
    pub merge_strategy: domain::MergeStrategy,
}

impl Config {
    /// Reads every setting, reporting all invalid ones at once.
    pub fn read(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let e = &mut env;
        let cfg = Self {
            common: Common::read(e, "CART_LISTEN", "127.0.0.1:8083"),
            pg: PgSettings::read(e),
            redis: RedisSettings::read(e),
            limits: Limits {
                max_line_quantity: e.int_in(
                    "CART_MAX_LINE_QUANTITY",
                    99,
                    1..=Limits::CEILING_LINE_QUANTITY,
                ),
                max_lines: e.int_in("CART_MAX_LINES", 100, 1..=Limits::CEILING_LINES),
                max_product_id_len: e.int_in(
                    "CART_MAX_PRODUCT_ID_LEN",
                    64,
                    1..=Limits::CEILING_PRODUCT_ID_LEN,
                ),
            },
            require_if_match_on_put: e.bool("CART_REQUIRE_IF_MATCH_ON_PUT", false),
            max_body_bytes: e.int_in("MAX_BODY_BYTES", 16 * 1024, 1024..=1024 * 1024),
            run_migrations: e.bool("RUN_MIGRATIONS", true),
            cache_ttl_secs: e.int_in("CART_CACHE_TTL_SECS", 3600, 1..=30 * 24 * 3600),
            cache_breaker_cooldown: e.millis("CART_CACHE_BREAKER_COOLDOWN_MS", 2000, 100..=600_000),
            db_deadline: e.millis("CART_DB_DEADLINE_MS", 1000, 50..=60_000),
            merge_strategy: e.get("CART_MERGE_STRATEGY", domain::MergeStrategy::Sum),
        };
        env.finish()?;
        Ok(cfg)
    }
}
