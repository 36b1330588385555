//! `/livez`, `/readyz` and `/metrics`, the same on every service.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use crate::metrics::Metrics;
use crate::problem::Problem;

pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One dependency `/readyz` checks: a name for the report and an async probe.
pub struct Check {
    pub name: &'static str,
    pub probe: Box<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl Check {
    pub fn new<F, Fut>(name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            probe: Box::new(move || Box::pin(probe())),
        }
    }
}

impl Check {
    /// Postgres answers `SELECT 1`.
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        Self::new("postgres", move || {
            let p = pool.clone();
            async move { crate::datastores::pg_ping(&p).await }
        })
    }

    /// Redis answers `PING`.
    pub fn redis(pool: deadpool_redis::Pool) -> Self {
        Self::new("redis", move || {
            let p = pool.clone();
            async move { crate::datastores::redis_ping(&p).await }
        })
    }
}

/// Whether this process should receive traffic: its checks pass and it is not
/// shutting down.
pub struct Readiness {
    checks: Vec<Check>,
    shutting_down: AtomicBool,
}

impl Readiness {
    pub fn new(checks: Vec<Check>) -> Arc<Self> {
        Arc::new(Self {
            checks,
            shutting_down: AtomicBool::new(false),
        })
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Runs every check concurrently, each bounded by two seconds.
    pub async fn failures(&self) -> Vec<String> {
        if self.is_shutting_down() {
            return vec!["shutting down".to_owned()];
        }
        let probes = self.checks.iter().map(|c| async move {
            match tokio::time::timeout(std::time::Duration::from_secs(2), (c.probe)()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{}: {e}", c.name)),
                Err(_) => Some(format!("{}: timed out", c.name)),
            }
        });
        futures_util::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let failures = readiness.failures().await;
    if failures.is_empty() {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"status":"ready"}"#)
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
            .detail(failures.join("; "))
            .retry_after(1)
            .to_response()
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
