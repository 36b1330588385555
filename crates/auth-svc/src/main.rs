//! auth-svc: users, password hashes, signing keys, access tokens, refresh tokens.
//!
//! `auth-svc` serves; `auth-svc migrate` applies the `auth` schema's migrations and exits.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    svc_kit::telemetry::init_logs("auth-svc");
    let result = match std::env::args().nth(1).as_deref() {
        None | Some("serve") => auth_svc::run().await,
        Some("migrate") => auth_svc::migrate_only().await,
        Some(other) => Err(anyhow::anyhow!(
            "unknown command {other:?}; expected `serve` or `migrate`"
        )),
    };
    svc_kit::server::exit_code("auth-svc", result)
}
