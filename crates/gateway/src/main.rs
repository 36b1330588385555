//! gateway: the public API surface. Authenticates callers at the edge and forwards
//! their identity to the backends; touches no datastore.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    svc_kit::telemetry::init_logs("gateway");
    svc_kit::server::exit_code("gateway", gateway::run().await)
}
