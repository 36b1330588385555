//! Plumbing that every binary of the platform shares, written once: typed configuration
//! from the environment, JSON logs, the `/livez` `/readyz` `/metrics` endpoints, the
//! request middleware (request ids, latency by route template, problem+json for every
//! error), request-body rules, internal trust and clients, datastore pools, and graceful
//! shutdown. A service's `main.rs` reads its config and calls [`server::serve`].

pub mod body;
pub mod config;
pub mod datastores;
pub mod internal;
pub mod metrics;
pub mod observe;
pub mod ops;
pub mod problem;
pub mod server;
pub mod telemetry;
pub mod trace;

pub use problem::Problem;
