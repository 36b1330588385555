//! cleanup-worker: scheduled, throttled deletion of expired data. Serves only
//! `/livez`, `/readyz` and `/metrics` over HTTP.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    svc_kit::telemetry::init_logs("cleanup-worker");
    match cleanup_worker::run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cleanup-worker failed");
            std::process::ExitCode::FAILURE
        }
    }
}
