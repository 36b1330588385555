//! cleanup-worker connects to Postgres (the `cart` schema, owned and migrated by
//! cart-svc) and Redis, and serves its operations endpoints. The cleanup jobs themselves
//! are the cleanup issue's work.

use std::sync::Arc;

use svc_kit::config::{Common, ConfigError, Env};
use svc_kit::datastores::{PgSettings, RedisSettings};
use svc_kit::metrics::Metrics;
use svc_kit::ops::{Check, Readiness};
use svc_kit::server::{serve, Service};

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub pg: PgSettings,
    pub redis: RedisSettings,
}

impl Config {
    pub fn read(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let e = &mut env;
        let cfg = Self {
            common: Common::read(e, "CLEANUP_LISTEN", "127.0.0.1:8084"),
            pg: PgSettings::read(e),
            redis: RedisSettings::read(e),
        };
        env.finish()?;
        Ok(cfg)
    }
}

pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    let pg = cfg.pg.pool()?;
    let redis = cfg.redis.pool()?;
    let readiness = Readiness::new(vec![
        Check::postgres(pg.clone()),
        Check::redis(redis.clone()),
    ]);
    let svc = Service {
        name: "cleanup-worker",
        common: cfg.common.clone(),
        metrics: Metrics::new("cleanup-worker"),
        readiness: Arc::clone(&readiness),
    };
    serve(svc, |_| {}).await?;
    pg.close().await;
    Ok(())
}
