//! session-svc: every session's record and its TTL in Redis.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    svc_kit::telemetry::init_logs("session-svc");
    match session_svc::run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "session-svc failed");
            std::process::ExitCode::FAILURE
        }
    }
}
