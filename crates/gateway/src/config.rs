use std::time::Duration;

use svc_kit::config::{Common, ConfigError, Env};
use svc_kit::internal::ClientSettings;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub session_url: String,
    pub cart_url: String,
    pub auth_url: String,
    pub jwt: crate::jwt::JwtSettings,
    pub guard: crate::guard::GuardSettings,
    /// Response timeout of cart reads (writes and every other call use
    /// `UPSTREAM_TIMEOUT_MS`): a read is cheap and retried, so it may give up sooner.
    pub read_timeout: Duration,
    pub redis: svc_kit::datastores::RedisSettings,
    pub rate_limit: Option<crate::edge::RateLimitSettings>,
    pub upstream: ClientSettings,
    pub max_body_bytes: usize,
    /// Public requests inside this process at once (the front door, `door.rs`).
    pub max_in_flight: usize,
    /// Adds `Secure` to the cookies (set it whenever the site is served over HTTPS).
    pub cookie_secure: bool,
    /// Lifetime of the `cart_token` cookie: as long as guest carts are kept.
    pub cart_token_cookie_max_age: Duration,
    /// Origins (scheme://host[:port]) whose cookie-authenticated unsafe requests are
    /// accepted besides same-origin ones.
    pub allowed_origins: Vec<String>,
}

impl Config {
    pub fn read(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let e = &mut env;
        let cfg = Self {
            common: Common {
                // Clients (browsers, apps) hold idle connections between a shopper's
                // clicks; the operator sets how long the gateway keeps them.
                keep_alive: e.secs("GATEWAY_KEEP_ALIVE_SECS", 75, 1..=3600),
                reuseport: e.bool("GATEWAY_REUSEPORT", false),
                ..Common::read(e, "GATEWAY_LISTEN", "127.0.0.1:8080")
            },
            session_url: e.base_url("SESSION_URL", "http://127.0.0.1:8082"),
            cart_url: e.base_url("CART_URL", "http://127.0.0.1:8083"),
            auth_url: e.base_url("AUTH_URL", "http://127.0.0.1:8081"),
            jwt: crate::jwt::JwtSettings {
                issuer: e.string("AUTH_JWT_ISSUER", "cart-platform"),
                audience: e.string("AUTH_JWT_AUDIENCE", "cart-platform-api"),
                refetch_interval: e.millis(
                    "GATEWAY_JWKS_REFETCH_INTERVAL_MS",
                    5000,
                    100..=3_600_000,
                ),
                max_age: e.secs("GATEWAY_JWKS_MAX_AGE_SECS", 300, 10..=86_400),
            },
            upstream: ClientSettings {
                connect_timeout: e.millis("UPSTREAM_CONNECT_TIMEOUT_MS", 1000, 10..=60_000),
                request_timeout: e.millis("UPSTREAM_TIMEOUT_MS", 5000, 10..=300_000),
                max_idle_per_host: e.int_in("UPSTREAM_MAX_IDLE_PER_HOST", 256, 1..=100_000),
            },
            guard: crate::guard::GuardSettings {
                max_in_flight: e.int_in("UPSTREAM_MAX_IN_FLIGHT", 256, 1..=100_000),
                max_wait: e.millis("UPSTREAM_ADMISSION_WAIT_MS", 50, 0..=10_000),
                failures_to_open: e.int_in("UPSTREAM_BREAKER_FAILURES", 5, 1..=1000),
                cooldown: e.millis("UPSTREAM_BREAKER_COOLDOWN_MS", 2000, 10..=600_000),
                budget_percent: e.int_in("UPSTREAM_RETRY_BUDGET_PERCENT", 10, 0..=100),
            },
            max_in_flight: e.int_in("GATEWAY_MAX_IN_FLIGHT", 1024, 1..=1_000_000),
            read_timeout: e.millis("UPSTREAM_READ_TIMEOUT_MS", 2000, 10..=300_000),
            redis: svc_kit::datastores::RedisSettings::read(e),
            rate_limit: {
                let enabled = e.bool("RATE_LIMIT_ENABLED", true);
                let settings = crate::edge::RateLimitSettings {
                    client: crate::edge::Policy {
                        name: "client",
                        per_second: e
                            .int_in("RATE_LIMIT_PER_SECOND", 20u32, 1..=1_000_000)
                            .into(),
                        burst: e.int_in("RATE_LIMIT_BURST", 40, 1..=1_000_000),
                    },
                    auth: crate::edge::Policy {
                        name: "auth",
                        per_second: f64::from(e.int_in(
                            "RATE_LIMIT_AUTH_PER_MINUTE",
                            10u32,
                            1..=1_000_000,
                        )) / 60.0,
                        burst: e.int_in("RATE_LIMIT_AUTH_BURST", 5, 1..=1_000_000),
                    },
                    trust_forwarded_for: e.bool("RATE_LIMIT_TRUST_FORWARDED_FOR", false),
                };
                enabled.then_some(settings)
            },
            max_body_bytes: e.int_in("MAX_BODY_BYTES", 16 * 1024, 1024..=1024 * 1024),
            cookie_secure: e.bool("COOKIE_SECURE", false),
            cart_token_cookie_max_age: Duration::from_secs(
                e.int_in("GUEST_CART_RETENTION_DAYS", 14u64, 1..=3650) * 24 * 3600,
            ),
            allowed_origins: e
                .string("ALLOWED_ORIGINS", "")
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        };
        env.finish()?;
        Ok(cfg)
    }
}
