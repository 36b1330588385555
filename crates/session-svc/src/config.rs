use std::time::Duration;

use svc_kit::config::{Common, ConfigError, Env};
use svc_kit::datastores::RedisSettings;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub redis: RedisSettings,
    pub timeouts: Timeouts,
    pub max_body_bytes: usize,
}

/// Session lifetimes (API.md "Lifetimes").
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A guest session ends after this long without a request (sliding).
    pub guest_idle: Duration,
    /// A user session ends after this long without a request (sliding)…
    pub user_idle: Duration,
    /// …and at the latest this long after login, however active.
    pub user_absolute: Duration,
}

impl Config {
    pub fn read(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let e = &mut env;
        let cfg = Self {
            common: Common::read(e, "SESSION_LISTEN", "127.0.0.1:8082"),
            redis: RedisSettings::read(e),
            timeouts: Timeouts {
                guest_idle: e.secs("SESSION_GUEST_IDLE_TIMEOUT_SECS", 1800, 1..=30 * 24 * 3600),
                user_idle: e.secs("SESSION_USER_IDLE_TIMEOUT_SECS", 1800, 1..=30 * 24 * 3600),
                user_absolute: e.secs(
                    "SESSION_USER_ABSOLUTE_TIMEOUT_SECS",
                    7 * 24 * 3600,
                    1..=365 * 24 * 3600,
                ),
            },
            max_body_bytes: e.int_in("MAX_BODY_BYTES", 16 * 1024, 1024..=1024 * 1024),
        };
        env.finish()?;
        Ok(cfg)
    }
}
