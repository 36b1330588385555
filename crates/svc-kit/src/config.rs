//! Typed configuration from environment variables.
//!
//! Every variable is read through [`Env`], which records each problem instead of
//! stopping at the first, so a misconfigured deployment reports everything wrong in one
//! start-up message that names each variable. The README's config table lists them all.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A secret value (tokens, passwords, URLs with credentials): never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Reads variables from a source (the process environment, or a map in tests).
type Source<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

pub struct Env<'a> {
    source: Source<'a>,
    errors: Vec<String>,
}

impl Default for Env<'_> {
    fn default() -> Self {
        Self::from_process()
    }
}

impl<'a> Env<'a> {
    pub fn from_process() -> Self {
        Self::from_fn(|k| std::env::var(k).ok())
    }

    pub fn from_fn(f: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self {
            source: Box::new(f),
            errors: Vec::new(),
        }
    }

    fn raw(&self, name: &str) -> Option<String> {
        (self.source)(name).filter(|v| !v.trim().is_empty())
    }

    /// A variable parsed with `FromStr`, or `default` when unset or empty.
    pub fn get<T>(&mut self, name: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => default,
            Some(v) => match v.trim().parse() {
                Ok(x) => x,
                Err(e) => {
                    self.errors.push(format!("  {name}={v:?}: {e}"));
                    default
                }
            },
        }
    }

    /// An integer that must lie within `range`.
    pub fn int_in<T>(&mut self, name: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let v = self.get(name, default);
        if !range.contains(&v) {
            self.errors.push(format!(
                "  {name}={v}: must be between {} and {}",
                range.start(),
                range.end()
            ));
        }
        v
    }

    pub fn string(&mut self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    pub fn bool(&mut self, name: &str, default: bool) -> bool {
        match self.raw(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => default,
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    self.errors
                        .push(format!("  {name}={v:?}: expected true or false"));
                    default
                }
            },
        }
    }

    pub fn socket_addr(&mut self, name: &str, default: &str) -> SocketAddr {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
        let raw = self.string(name, default);
        match raw.parse() {
            Ok(a) => a,
            Err(e) => {
                self.errors.push(format!(
                    "  {name}={raw:?}: {e} (expected host:port, e.g. 0.0.0.0:8080)"
                ));
                fallback
            }
        }
    }

    /// An http(s) base URL without a trailing slash.
    pub fn base_url(&mut self, name: &str, default: &str) -> String {
        let raw = self.string(name, default);
        if !(raw.starts_with("http://") || raw.starts_with("https://")) {
            self.errors.push(format!(
                "  {name}={raw:?}: must start with http:// or https://"
            ));
        }
        raw.trim_end_matches('/').to_owned()
    }

    pub fn secs(
        &mut self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Duration {
        Duration::from_secs(self.int_in(name, default, range))
    }

    pub fn millis(
        &mut self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Duration {
        Duration::from_millis(self.int_in(name, default, range))
    }

    /// A required secret of at least `min_len` characters.
    pub fn secret(&mut self, name: &str, min_len: usize, hint: &str) -> Secret {
        match self.raw(name) {
            Some(v) if v.len() >= min_len => Secret(v),
            Some(_) => {
                self.errors.push(format!(
                    "  {name}: must be at least {min_len} characters ({hint})"
                ));
                Secret(String::new())
            }
            None => {
                self.errors.push(format!("  {name}: required ({hint})"));
                Secret(String::new())
            }
        }
    }

    /// A secret with a default (e.g. a connection URL that carries a password).
    pub fn secret_or(&mut self, name: &str, default: &str) -> Secret {
        Secret(self.string(name, default))
    }

    /// Records a cross-field problem found by the caller.
    pub fn invalid(&mut self, msg: impl Into<String>) {
        self.errors.push(format!("  {}", msg.into()));
    }

    /// Ends reading: every problem found, or `Ok`.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors))
        }
    }
}

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub listen: SocketAddr,
    pub internal_token: Secret,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_drain: Duration,
    /// How long `/readyz` reports 503 before the listener closes, so load balancers stop
    /// routing here before connections are refused.
    pub shutdown_delay: Duration,
    pub workers: usize,
    /// How long an idle keep-alive connection stays open. Not read from the environment
    /// here: only the gateway faces clients that hold connections (GATEWAY_KEEP_ALIVE_SECS).
    pub keep_alive: Duration,
    /// Share the listening port with other processes (SO_REUSEPORT); gateway only.
    pub reuseport: bool,
}

impl Common {
    pub fn read(env: &mut Env<'_>, listen_var: &str, default_listen: &str) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            listen: env.socket_addr(listen_var, default_listen),
            internal_token: env.secret(
                "INTERNAL_TOKEN",
                32,
                "the shared secret on internal calls; scripts/up.sh generates one",
            ),
            shutdown_drain: env.secs("SHUTDOWN_DRAIN_SECS", 10, 0..=600),
            shutdown_delay: env.millis("SHUTDOWN_DELAY_MS", 0, 0..=60_000),
            workers: env.int_in("HTTP_WORKERS", cores, 1..=256),
            keep_alive: Duration::from_secs(75),
            reuseport: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_bad_variable_is_reported_by_name() {
        let vars = env(&[("A", "x"), ("B", "500"), ("C", "maybe")]);
        let mut e = Env::from_fn(|k| vars.get(k).cloned());
        let _: u32 = e.get("A", 1);
        let _: u32 = e.int_in("B", 1, 1..=100);
        let _ = e.bool("C", false);
        let _ = e.secret("D", 32, "hint");
        let err = e.finish().unwrap_err().to_string();
        for name in ["A=", "B=500", "C=", "D:"] {
            assert!(err.contains(name), "{name} missing from {err}");
        }
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let vars = env(&[("A", " ")]);
        let mut e = Env::from_fn(|k| vars.get(k).cloned());
        assert_eq!(e.get("A", 7u32), 7);
        assert_eq!(e.base_url("U", "http://x:1/"), "http://x:1");
        assert!(e.finish().is_ok());
    }

    #[test]
    fn secrets_never_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
