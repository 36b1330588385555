//! Logs as JSON lines on stdout, filtered by `RUST_LOG` (default `info`).
//!
//! Request spans carry `request_id`, so every line logged while serving a request can
//! be joined to it. Secrets never reach a log: tokens are only ever logged as a short
//! prefix of their hash, and request headers are never logged.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

pub fn init_logs(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if pretty {
        registry.with(fmt::layer().with_target(false)).try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init()
    };
    // A second init (tests that build several services in one process) keeps the first.
    if result.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}
