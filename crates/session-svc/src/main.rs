//! session-svc: every session's record and its TTL in Redis.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    svc_kit::telemetry::init_logs("session-svc");
    svc_kit::server::exit_code("session-svc", session_svc::run().await)
}
