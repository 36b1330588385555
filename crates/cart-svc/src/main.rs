//! cart-svc: carts and their lines in Postgres (the source of truth).
//!
//! `cart-svc` serves; `cart-svc migrate` applies the `cart` schema's migrations and exits
//! (for Kubernetes jobs and scripts/up.sh).

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    svc_kit::telemetry::init_logs("cart-svc");
    let command = std::env::args().nth(1);
    let result = match command.as_deref() {
        None | Some("serve") => cart_svc::run().await,
        Some("migrate") => cart_svc::migrate_only().await,
        Some(other) => Err(anyhow::anyhow!(
            "unknown command {other:?}; expected `serve` or `migrate`"
        )),
    };
    svc_kit::server::exit_code("cart-svc", result)
}
