//! The worker's own metrics. Dashboards and alerts are written against these exact names
//! and labels; `kind` takes only the values of [`Kind::ALL`].

use prometheus::{Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use svc_kit::metrics::Metrics;

use crate::jobs::Kind;

#[derive(Clone)]
pub struct WorkerMetrics {
    pub rows_deleted: IntCounterVec,
    pub rows_would_delete: IntCounterVec,
    pub batches: IntCounterVec,
    pub batch_duration: HistogramVec,
    pub oldest_expired_age: GaugeVec,
    pub lock_held: IntGauge,
    pub last_pass_completed: Gauge,
    pub passes: IntCounterVec,
}

/// Pass results, the only values of `cleanup_passes_total{result}`.
pub const PASS_RESULTS: [&str; 3] = ["ok", "error", "interrupted"];

impl WorkerMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let by_kind = |name: &str, help: &str| {
            metrics.register(
                &IntCounterVec::new(Opts::new(name, help), &["kind"])
                    .expect("static metric definition is valid"),
            )
        };
        let m = Self {
            rows_deleted: by_kind(
                "cleanup_rows_deleted_total",
                "Rows (or Redis index members) deleted, by kind.",
            ),
            rows_would_delete: by_kind(
                "cleanup_rows_would_delete_total",
                "Rows a dry-run pass found expired and would have deleted, by kind.",
            ),
            batches: by_kind("cleanup_batches_total", "Deletion batches run, by kind."),
            batch_duration: metrics.register(
                &HistogramVec::new(
                    HistogramOpts::new(
                        "cleanup_batch_duration_seconds",
                        "Duration of one deletion batch (its transaction and cache deletes), by kind.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                    &["kind"],
                )
                .expect("static metric definition is valid"),
            ),
            oldest_expired_age: metrics.register(
                &GaugeVec::new(
                    Opts::new(
                        "cleanup_oldest_expired_age_seconds",
                        "How long past its deadline the oldest expired row still waiting is (0 when none), by kind.",
                    ),
                    &["kind"],
                )
                .expect("static metric definition is valid"),
            ),
            lock_held: metrics.register(
                &IntGauge::new(
                    "cleanup_lock_held",
                    "1 while this worker holds the cleanup advisory lock (the one replica that deletes).",
                )
                .expect("static metric definition is valid"),
            ),
            last_pass_completed: metrics.register(
                &Gauge::new(
                    "cleanup_last_pass_completed_timestamp_seconds",
                    "Unix time at which the last complete pass ended.",
                )
                .expect("static metric definition is valid"),
            ),
            passes: metrics.register(
                &IntCounterVec::new(
                    Opts::new(
                        "cleanup_passes_total",
                        "Passes by result: ok, error (some job failed), interrupted (stopped, lock lost or window closed).",
                    ),
                    &["result"],
                )
                .expect("static metric definition is valid"),
            ),
        };
        // Every series exists from the start, so a rate() or an absent() alert sees 0
        // rather than nothing.
        for kind in Kind::ALL {
            let k = [kind.label()];
            m.rows_deleted.with_label_values(&k);
            m.rows_would_delete.with_label_values(&k);
            m.batches.with_label_values(&k);
            m.oldest_expired_age.with_label_values(&k);
            m.batch_duration.with_label_values(&k);
        }
        for r in PASS_RESULTS {
            m.passes.with_label_values(&[r]);
        }
        m
    }
}
