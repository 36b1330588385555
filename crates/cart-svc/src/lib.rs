//! cart-svc: the Cart and CartItem rows in Postgres (source of truth), changed one
//! transaction at a time, answered as the whole cart with its version as ETag.
//! Where to start reading: `store.rs` (the transactions), then `http.rs`.

pub mod cache;
pub mod caller;
pub mod config;
mod error;
pub mod http;
pub mod store;
pub mod view;

use std::sync::Arc;

use actix_web::web;
use domain::Limits;
use prometheus::{IntCounterVec, Opts};
use svc_kit::config::Env;
use svc_kit::metrics::Metrics;
use svc_kit::ops::{Check, Readiness};
use svc_kit::server::{serve, Service};

use crate::cache::Cache;
use crate::config::Config;
use crate::store::Store;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/cart");

/// Shared by every handler.
pub struct AppState {
    pub store: Store,
    pub cache: Cache,
    pub limits: Limits,
    pub require_if_match_on_put: bool,
    pub max_body_bytes: usize,
    /// The longest a request may wait on Postgres before it is answered 503.
    pub db_deadline: std::time::Duration,
    pub merge_strategy: domain::MergeStrategy,
    pub merge_metrics: MergeMetrics,
}

/// Merges at login (by result) and the guest lines they moved or dropped; idempotent
/// replays; offline ops by status.
pub struct MergeMetrics {
    merges: IntCounterVec,
    lines: IntCounterVec,
    pub replays: prometheus::IntCounter,
    pub offline_ops: IntCounterVec,
}

impl MergeMetrics {
    pub fn new(m: &Metrics) -> Self {
        let this = Self {
            merges: m.register(
                &IntCounterVec::new(
                    Opts::new(
                        "cart_merges_total",
                        "Login merges, by result (nothing, adopted, merged).",
                    ),
                    &["result"],
                )
                .expect("static metric definition is valid"),
            ),
            lines: m.register(
                &IntCounterVec::new(
                    Opts::new(
                        "cart_merged_lines_total",
                        "Guest cart lines handled by merges, by outcome (merged, dropped, capped).",
                    ),
                    &["outcome"],
                )
                .expect("static metric definition is valid"),
            ),
            replays: m.register(
                &prometheus::IntCounter::new(
                    "cart_idempotent_replays_total",
                    "Requests answered with the stored outcome of their Idempotency-Key.",
                )
                .expect("static metric definition is valid"),
            ),
            offline_ops: m.register(
                &IntCounterVec::new(
                    Opts::new(
                        "cart_offline_ops_total",
                        "Offline ops processed, by status (applied, duplicate, conflict, rejected).",
                    ),
                    &["status"],
                )
                .expect("static metric definition is valid"),
            ),
        };
        for s in ["applied", "duplicate", "conflict", "rejected"] {
            this.offline_ops.with_label_values(&[s]);
        }
        // Every series exists from the start, so rates see 0, not nothing.
        for r in ["nothing", "adopted", "merged"] {
            this.merges.with_label_values(&[r]);
        }
        for o in ["merged", "dropped", "capped"] {
            this.lines.with_label_values(&[o]);
        }
        this
    }

    pub fn record(&self, r: &store::MergeResult) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        match r {
            store::MergeResult::Nothing => self.merges.with_label_values(&["nothing"]).inc(),
            store::MergeResult::Adopted => self.merges.with_label_values(&["adopted"]).inc(),
            store::MergeResult::Merged(o) => {
                self.merges.with_label_values(&["merged"]).inc();
                self.lines
                    .with_label_values(&["merged"])
                    .inc_by(count(o.merged_lines));
                self.lines
                    .with_label_values(&["dropped"])
                    .inc_by(count(o.dropped.len()));
                self.lines
                    .with_label_values(&["capped"])
                    .inc_by(count(o.capped.len()));
            }
        }
    }
}

pub async fn migrate_only() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    cfg.pg.migrate("cart", &MIGRATOR).await
}

pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    if cfg.run_migrations {
        cfg.pg.migrate("cart", &MIGRATOR).await?;
    }
    let pool = cfg.pg.pool()?;
    let metrics = Metrics::new("cart-svc");
    metrics.watch_pg_pool(pool.clone(), cfg.pg.max_connections);
    let redis = cfg.redis.pool()?;
    metrics.watch_redis_pool(redis.clone());
    let readiness = Readiness::new(vec![Check::postgres(pool.clone())]);
    // Redis is not a readiness check: carts are served from Postgres while it is down.
    let cache = Cache::new(
        redis,
        cfg.redis.key_prefix.clone(),
        cfg.cache_ttl_secs,
        cfg.redis.timeout,
        cfg.cache_breaker_cooldown,
        &metrics,
    );
    let state = web::Data::new(AppState {
        store: Store::new(pool.clone()),
        cache,
        limits: cfg.limits,
        require_if_match_on_put: cfg.require_if_match_on_put,
        max_body_bytes: cfg.max_body_bytes,
        db_deadline: cfg.db_deadline,
        merge_strategy: cfg.merge_strategy,
        merge_metrics: MergeMetrics::new(&metrics),
    });
    let svc = Service {
        name: "cart-svc",
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
