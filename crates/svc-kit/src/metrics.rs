//! One Prometheus registry per process, and the HTTP server metrics every service shares
//! (named after the OpenTelemetry HTTP semantic conventions).

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

/// Buckets dense around the 150 ms p99 goal, so the SLO can be read off the histogram.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

static PG_TIMEOUTS: std::sync::OnceLock<prometheus::IntCounter> = std::sync::OnceLock::new();

static REDIS_CALLS: std::sync::OnceLock<prometheus::IntCounterVec> = std::sync::OnceLock::new();

/// Counts one Redis call by result (`ok`, `error`, `timeout`); see
/// [`Metrics::count_redis_calls`].
pub fn redis_call(result: &str) {
    if let Some(c) = REDIS_CALLS.get() {
        c.with_label_values(&[result]).inc();
    }
}

static PG_WAIT: std::sync::OnceLock<prometheus::Histogram> = std::sync::OnceLock::new();

/// Records how long a request waited for a pooled Postgres connection.
pub fn pool_waited(d: std::time::Duration) {
    if let Some(h) = PG_WAIT.get() {
        h.observe(d.as_secs_f64());
    }
}

/// Counts a Postgres pool acquisition that timed out (see [`Metrics::watch_pg_pool`]).
pub fn pool_timed_out() {
    if let Some(c) = PG_TIMEOUTS.get() {
        c.inc();
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Labels: `http_request_method`, `http_route` (the route *template*),
    /// `http_response_status_code`.
    pub http_server_duration: HistogramVec,
}

impl Metrics {
    pub fn new(service: &str) -> Arc<Self> {
        let registry = Registry::new();
        let http_server_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, by route template.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &[
                "http_request_method",
                "http_route",
                "http_response_status_code",
            ],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(http_server_duration.clone()))
            .expect("first registration of a fresh registry");

        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Build information; the value is always 1."),
            &["service", "version"],
        )
        .expect("static metric definition is valid");
        build_info
            .with_label_values(&[service, env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("first registration of a fresh registry");

        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Only fails if already registered, which cannot happen on a new registry.
            let _ = registry.register(Box::new(pc));
        }

        Arc::new(Self {
            registry,
            http_server_duration,
        })
    }

    /// Registers a service's own collector; a duplicate name is a programming error
    /// caught by the first test that builds the service.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: &C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique within a service");
        c.clone()
    }

    /// Pool saturation gauges for a Postgres pool (`db_pool_connections{state}`,
    /// `db_pool_max_connections`), sampled every second by a background task, and the
    /// counter of acquisitions that timed out (`db_pool_acquire_timeouts_total`, fed by
    /// [`pool_timed_out`]).
    pub fn watch_pg_pool(&self, pool: sqlx::PgPool, max: u32) {
        let valid = "static metric definition is valid";
        let conns = self.register(
            &IntGaugeVec::new(
                Opts::new(
                    "db_pool_connections",
                    "Postgres pool connections, by state (idle, in_use).",
                ),
                &["state"],
            )
            .expect(valid),
        );
        let max_gauge = self.register(
            &prometheus::IntGauge::new("db_pool_max_connections", "Postgres pool size limit.")
                .expect(valid),
        );
        max_gauge.set(i64::from(max));
        let timeouts = self.register(
            &prometheus::IntCounter::new(
                "db_pool_acquire_timeouts_total",
                "Postgres connections not obtained within DATABASE_ACQUIRE_TIMEOUT_MS.",
            )
            .expect(valid),
        );
        let _ = PG_TIMEOUTS.set(timeouts);
        let wait = self.register(
            &prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "db_pool_acquire_wait_seconds",
                    "Time waited for a pooled Postgres connection (where the service measures it: cart-svc's requests).",
                )
                .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
            )
            .expect(valid),
        );
        let _ = PG_WAIT.set(wait);
        tokio::spawn(async move {
            loop {
                let size = i64::from(pool.size());
                let idle = i64::try_from(pool.num_idle()).unwrap_or(0);
                conns.with_label_values(&["idle"]).set(idle);
                conns
                    .with_label_values(&["in_use"])
                    .set((size - idle).max(0));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Registers `redis_calls_total{result}`, fed by [`redis_call`].
    pub fn count_redis_calls(&self) {
        let c = self.register(
            &prometheus::IntCounterVec::new(
                Opts::new(
                    "redis_calls_total",
                    "Redis calls, by result (ok, error, timeout).",
                ),
                &["result"],
            )
            .expect("static metric definition is valid"),
        );
        for r in ["ok", "error", "timeout"] {
            c.with_label_values(&[r]);
        }
        let _ = REDIS_CALLS.set(c);
    }

    /// Pool saturation gauges for a Redis pool (`redis_pool_connections{state}`).
    pub fn watch_redis_pool(&self, pool: deadpool_redis::Pool) {
        self.count_redis_calls();
        let conns = self.register(
            &IntGaugeVec::new(
                Opts::new(
                    "redis_pool_connections",
                    "Redis pool connections, by state (available, in_use).",
                ),
                &["state"],
            )
            .expect("static metric definition is valid"),
        );
        tokio::spawn(async move {
            loop {
                let st = pool.status();
                let available = i64::try_from(st.available).unwrap_or(0);
                let size = i64::try_from(st.size).unwrap_or(0);
                conns.with_label_values(&["available"]).set(available);
                conns
                    .with_label_values(&["in_use"])
                    .set((size - available).max(0));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// The text exposition of every registered metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
