//! gateway: the public API surface (API.md). Routing, authentication at the edge, request
//! ids, CSRF protection, and forwarding with the caller's identity; it never touches a
//! datastore. Start reading at `routes.rs`; `openapi.rs` builds the OpenAPI document
//! (`/openapi.json`, `/docs`) from the handlers' annotations.

pub mod accounts;
pub mod caller;
pub mod config;
pub mod door;
pub mod edge;
pub mod guard;
pub mod jwt;
pub mod openapi;
pub mod routes;
pub mod upstream;

use std::sync::Arc;

use actix_web::web;
use svc_kit::config::Env;
use svc_kit::internal::Peer;
use svc_kit::metrics::Metrics;
use svc_kit::ops::{Check, Readiness};
use svc_kit::server::{serve, Service};

use crate::config::Config;

pub struct AppState {
    pub cfg: Config,
    pub sessions: Peer,
    pub carts: Peer,
    pub auth: Peer,
    pub jwt: Arc<jwt::Verifier>,
    pub guards: Guards,
    /// `None` when rate limiting is switched off (`RATE_LIMIT_ENABLED=false`).
    pub limiter: Option<Arc<edge::RateLimiter>>,
    pub door: door::Door,
}

/// One guard (admission, breaker, retry budget) per upstream.
pub struct Guards {
    pub sessions: Arc<guard::Guard>,
    pub carts: Arc<guard::Guard>,
    pub auth: Arc<guard::Guard>,
}

impl Guards {
    pub fn new(settings: guard::GuardSettings, metrics: &Metrics) -> Self {
        let m = guard::GuardMetrics::new(metrics);
        Self {
            sessions: guard::Guard::new("session-svc", settings, m.clone()),
            carts: guard::Guard::new("cart-svc", settings, m.clone()),
            auth: guard::Guard::new("auth-svc", settings, m),
        }
    }
}

impl AppState {
    /// The guard of a peer.
    pub fn guard(&self, peer: &Peer) -> &Arc<guard::Guard> {
        match peer.name {
            "session-svc" => &self.guards.sessions,
            "cart-svc" => &self.guards.carts,
            _ => &self.guards.auth,
        }
    }
}

pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::read(Env::from_process())?;
    let token = cfg.common.internal_token.clone();
    let sessions = Peer::new(
        "session-svc",
        cfg.session_url.clone(),
        token.clone(),
        cfg.upstream,
    );
    let carts = Peer::new(
        "cart-svc",
        cfg.cart_url.clone(),
        token.clone(),
        cfg.upstream,
    );
    let auth = Peer::new("auth-svc", cfg.auth_url.clone(), token, cfg.upstream);
    let jwt = Arc::new(jwt::Verifier::new(auth.clone(), cfg.jwt.clone()));
    // Keys are refreshed in the background, so a rotation or a removed key is seen
    // without waiting for a request with an unknown `kid`. auth-svc is not a readiness
    // check: guests shop without it.
    let refresher = Arc::clone(&jwt);
    let every = cfg.jwt.max_age;
    tokio::spawn(async move {
        loop {
            refresher.refresh_if_stale().await;
            tokio::time::sleep(every / 4).await;
        }
    });
    let metrics = Metrics::new("gateway");
    let guards = Guards::new(cfg.guard, &metrics);
    let door = door::Door::new(cfg.max_in_flight, &metrics);
    let limiter = match cfg.rate_limit {
        Some(settings) => Some(Arc::new(edge::RateLimiter::new(
            settings,
            cfg.redis.pool()?,
            cfg.redis.key_prefix.clone(),
            cfg.redis.timeout,
            &metrics,
        ))),
        None => None,
    };
    // Ready when the peers every guest request needs answer.
    let checks = [sessions.clone(), carts.clone()]
        .into_iter()
        .map(|peer| {
            Check::new(peer.name, move || {
                let p = peer.clone();
                async move { p.alive().await }
            })
        })
        .collect();
    let readiness = Readiness::new(checks);
    let svc = Service {
        name: "gateway",
        common: cfg.common.clone(),
        metrics: Arc::clone(&metrics),
        readiness,
    };
    let state = web::Data::new(AppState {
        cfg,
        sessions,
        carts,
        auth,
        jwt,
        guards,
        limiter,
        door,
    });
    serve(svc, move |c| {
        // One scope around every public route, so CORS and rate limits wrap them all
        // (and not the operations endpoints svc-kit serves).
        c.app_data(state.clone()).service(
            web::scope("")
                .wrap(actix_web::middleware::from_fn(edge::rate_limit))
                .wrap(actix_web::middleware::from_fn(door::front_door))
                .wrap(actix_web::middleware::from_fn(edge::cors))
                .configure(routes::routes),
        );
    })
    .await
}
