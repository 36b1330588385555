//! cleanup-worker: scheduled, throttled deletion of expired data. Serves only
//! `/livez`, `/readyz` and `/metrics` over HTTP.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    svc_kit::telemetry::init_logs("cleanup-worker");
    svc_kit::server::exit_code("cleanup-worker", cleanup_worker::run().await)
}
