//! cleanup-worker: removes expired carts and stale records (issue 6) in small paced
//! batches, one replica at a time, and serves `/livez`, `/readyz` and `/metrics`.
//! Where to start reading: `jobs.rs` (what is deleted, and the SQL), then `worker.rs`
//! (passes, pacing, the lock, the modes).

pub mod config;
pub mod jobs;
pub mod metrics;
pub mod worker;

use std::sync::Arc;

use svc_kit::config::Env;
use svc_kit::metrics::Metrics;
use svc_kit::ops::{Check, Readiness};
use svc_kit::server::{serve, wait_for_stop_signal, Service};

use crate::config::{Config, Mode};
use crate::metrics::WorkerMetrics;
use crate::worker::{Schedule, Stop, Worker};

pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    let pg = cfg.pg.pool()?;
    let redis = cfg.redis.pool()?;
    let metrics = Metrics::new("cleanup-worker");
    metrics.watch_pg_pool(pg.clone(), cfg.pg.max_connections);
    // Readiness is about the datastores only: a replica waiting for the lock is a
    // healthy standby (`cleanup_lock_held` tells which one works).
    let readiness = Readiness::new(vec![
        Check::postgres(pg.clone()),
        Check::redis(redis.clone()),
    ]);
    let worker = Worker {
        pg: pg.clone(),
        redis,
        jobs: cfg.jobs.clone(),
        metrics: WorkerMetrics::new(&metrics),
    };
    let schedule = Schedule {
        mode: cfg.mode,
        interval: cfg.interval,
        window: cfg.window,
        lock_key: cfg.lock_key,
    };
    tracing::info!(
        mode = ?cfg.mode,
        interval_secs = cfg.interval.as_secs(),
        window = cfg.window.map(|w| w.to_string()),
        batch_size = cfg.jobs.batch_size,
        max_rows_per_second = cfg.jobs.max_rows_per_second,
        retention = ?cfg.jobs.retention,
        "cleanup worker starting"
    );
    let (stop_tx, stop) = Stop::new();
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stop requested: finishing the current batch");
        let _ = stop_tx.send(true);
    });
    let svc = Service {
        name: "cleanup-worker",
        common: cfg.common.clone(),
        metrics: Arc::clone(&metrics),
        readiness,
    };
    let server = serve(svc, |_| {});
    let work = worker.run(&schedule, stop);
    tokio::pin!(server, work);
    let result = tokio::select! {
        worked = &mut work => match cfg.mode {
            // In `run` mode the work ends only on a stop signal, which also stops the
            // server: let it drain.
            Mode::Run => match worked {
                Ok(()) => server.await,
                Err(e) => Err(e),
            },
            // The endpoints serve /metrics while the pass runs; the process ends with the
            // pass (exit 0 when it completed), not with a signal.
            Mode::Once | Mode::DryRun => worked,
        },
        // A server that cannot listen ends the process; one stopped by a signal waits
        // for the batch in hand.
        served = &mut server => match served {
            Err(e) => Err(e),
            Ok(()) => work.await,
        },
    };
    pg.close().await;
    result
}
