//! Running an HTTP service: the shared middleware and ops routes, and graceful shutdown.
//!
//! On SIGTERM or SIGINT: `/readyz` turns 503 at once, the listener stays open for
//! `SHUTDOWN_DELAY_MS` (so a load balancer notices and stops routing here), then it
//! closes and in-flight requests get up to `SHUTDOWN_DRAIN_SECS` to finish.

use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::config::Common;
use crate::internal::InternalToken;
use crate::metrics::Metrics;
use crate::observe::observe;
use crate::ops::{self, Readiness};
use crate::problem::Problem;

/// What every service hands to [`serve`].
pub struct Service {
    pub name: &'static str,
    pub common: Common,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

pub async fn serve<F>(svc: Service, configure: F) -> anyhow::Result<()>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let metrics = web::Data::from(svc.metrics.clone());
    let readiness = web::Data::from(svc.readiness.clone());
    let token = web::Data::new(InternalToken(svc.common.internal_token.clone()));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(observe))
            .app_data(metrics.clone())
            .app_data(readiness.clone())
            .app_data(token.clone())
            .configure(ops::routes)
            .configure(configure.clone())
            .default_service(web::to(|| async {
                Problem::not_found("no such resource").to_response()
            }))
    })
    .workers(svc.common.workers)
    // Longer than any client's idle-connection timeout (ours is 30 s, see
    // `internal::http_client`): the client must always be the side that closes an idle
    // keep-alive connection, or it may send a request on a socket the server is closing.
    .keep_alive(svc.common.keep_alive)
    .disable_signals()
    .shutdown_timeout(svc.common.shutdown_drain.as_secs())
    .listen(listener(svc.common.listen, svc.common.reuseport)?)?;

    for addr in server.addrs() {
        tracing::info!(service = svc.name, %addr, "listening");
    }
    let server = server.run();
    let handle = server.handle();
    let readiness = svc.readiness.clone();
    let delay = svc.common.shutdown_delay;
    let name = svc.name;
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!(service = name, "stop requested: no longer ready, draining");
        readiness.begin_shutdown();
        tokio::time::sleep(delay).await;
        handle.stop(true).await;
    });
    server.await?;
    tracing::info!(service = svc.name, "stopped");
    Ok(())
}

/// The listening socket. With `reuseport`, several processes can listen on one port and
/// the kernel spreads connections over them: past ~20,000 open connections one process
/// runs out of file descriptors, and a machine's share of a sale spike needs several.
fn listener(addr: std::net::SocketAddr, reuseport: bool) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot listen on {addr}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    #[cfg(unix)]
    if reuseport {
        socket.set_reuse_port(true).map_err(fail)?;
    }
    #[cfg(not(unix))]
    if reuseport {
        anyhow::bail!("cannot listen on {addr}: SO_REUSEPORT needs a Unix system");
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(4096).map_err(fail)?;
    Ok(socket.into())
}

/// Resolves on SIGTERM (Kubernetes, systemd, scripts/up.sh) or SIGINT (Ctrl-C).
pub async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The process exit code for a service's result, logging the failure (with its whole
/// cause chain) as the last line.
pub fn exit_code(service: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    // Off the async thread: flushing blocks until the last spans are exported.
    let _ = std::thread::spawn(crate::telemetry::shutdown).join();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(service, error = format!("{e:#}"), "failed");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_lets_processes_share_a_port_and_only_then() {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
        let first = listener(any, true).expect("a free port");
        let addr = first.local_addr().expect("bound");
        let second = listener(addr, true).expect("a second listener with SO_REUSEPORT");
        assert_eq!(second.local_addr().expect("bound"), addr);
        // Without it (the default), a second service on a taken port fails at start,
        // rather than silently getting half of the connections.
        let err = listener(addr, false).expect_err("the port is taken");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        let lone = listener(any, false).expect("a free port");
        let lone_addr = lone.local_addr().expect("bound");
        assert!(listener(lone_addr, true).is_err());
    }
}
