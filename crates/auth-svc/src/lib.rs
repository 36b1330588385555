//! auth-svc owns the `auth` schema (users). It migrates it at start and serves the
//! operations endpoints; the account API (register, login, refresh, logout, JWKS) is
//! built on this in the accounts issue.

use std::sync::Arc;

use svc_kit::config::{Common, ConfigError, Env};
use svc_kit::datastores::PgSettings;
use svc_kit::metrics::Metrics;
use svc_kit::ops::{Check, Readiness};
use svc_kit::server::{serve, Service};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/auth");

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub pg: PgSettings,
    pub run_migrations: bool,
}

impl Config {
    pub fn read(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let e = &mut env;
        let cfg = Self {
            common: Common::read(e, "AUTH_LISTEN", "127.0.0.1:8081"),
            pg: PgSettings::read(e),
            run_migrations: e.bool("RUN_MIGRATIONS", true),
        };
        env.finish()?;
        Ok(cfg)
    }
}

pub async fn migrate_only() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    cfg.pg.migrate("auth", &MIGRATOR).await
}

pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    if cfg.run_migrations {
        cfg.pg.migrate("auth", &MIGRATOR).await?;
    }
    let pool = cfg.pg.pool()?;
    let readiness = Readiness::new(vec![Check::postgres(pool.clone())]);
    let svc = Service {
        name: "auth-svc",
        common: cfg.common.clone(),
        metrics: Metrics::new("auth-svc"),
        readiness: Arc::clone(&readiness),
    };
    serve(svc, |_| {}).await?;
    pool.close().await;
    Ok(())
}
