//! session-svc: sessions in Redis, each with a TTL that is its idle timeout. A session
//! is cheap and may be lost; a cart is not, so nothing here ever deletes a cart.

pub mod config;
pub mod http;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use svc_kit::config::Env;
use svc_kit::metrics::Metrics;
use svc_kit::ops::{Check, Readiness};
use svc_kit::server::{serve, Service};

use crate::config::{Config, Timeouts};
use crate::http::SessionMetrics;
use crate::store::Store;

pub struct AppState {
    pub store: Store,
    pub timeouts: Timeouts,
    pub max_body_bytes: usize,
    pub metrics: SessionMetrics,
}

impl AppState {
    /// A new user session's record, with the configured lifetimes.
    pub fn user_session(&self, user: domain::UserId, cart_id: domain::CartId) -> store::NewSession {
        store::NewSession {
            kind: store::Kind::User(user),
            cart_id,
            cart_token_hash: None,
            idle: self.timeouts.user_idle,
            absolute: Some(self.timeouts.user_absolute),
        }
    }
}

pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    let pool = cfg.redis.pool()?;
    let metrics = Metrics::new("session-svc");
    metrics.watch_redis_pool(pool.clone());
    let readiness = Readiness::new(vec![Check::redis(pool.clone())]);
    let state = web::Data::new(AppState {
        store: Store::new(
            pool,
            cfg.redis.key_prefix.clone(),
            cfg.redis.timeout.max(Duration::from_millis(50)),
        ),
        timeouts: cfg.timeouts,
        max_body_bytes: cfg.max_body_bytes,
        metrics: SessionMetrics::new(&metrics),
    });
    let svc = Service {
        name: "session-svc",
        common: cfg.common.clone(),
        metrics: Arc::clone(&metrics),
        readiness,
    };
    serve(svc, move |c| {
        c.app_data(state.clone()).configure(http::routes);
    })
    .await
}
