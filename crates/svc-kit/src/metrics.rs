//! One Prometheus registry per process, and the HTTP server metrics every service shares
//! (named after the OpenTelemetry HTTP semantic conventions).

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

/// Buckets dense around the 150 ms p99 goal, so the SLO can be read off the histogram.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

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

    /// The text exposition of every registered metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
