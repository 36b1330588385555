//! The worker's settings, every one read and checked at start-up (README, Configuration).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{NaiveTime, Timelike};
use svc_kit::config::{Common, ConfigError, Env};
use svc_kit::datastores::{PgSettings, RedisSettings};

/// API.md, Lifetimes: a user cart is kept at least 30 days after its last change, so a
/// shorter configured retention is a mistake we refuse rather than obey.
pub const MIN_USER_CART_RETENTION_DAYS: u64 = 30;
/// API.md, Lifetimes: idempotency records are kept at least 24 hours (a client may retry
/// that long); the same floor protects applied offline op ids.
pub const MIN_IDEMPOTENCY_RETENTION_HOURS: u64 = 24;
/// "CLNP" in ASCII: one number every replica of one deployment agrees on (small enough
/// to survive YAML and JSON tooling as an exact integer).
pub const DEFAULT_LOCK_KEY: i64 = 0x434c_4e50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forever, one pass per interval (a Deployment).
    Run,
    /// One full pass, then exit 0 (a Kubernetes CronJob).
    Once,
    /// Counts what one pass would delete, deletes nothing, exits 0.
    DryRun,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "run" => Ok(Self::Run),
            "once" => Ok(Self::Once),
            "dry-run" => Ok(Self::DryRun),
            _ => Err("expected run, once or dry-run".to_owned()),
        }
    }
}

/// A daily UTC window (`01:00-05:00`; `22:00-04:00` spans midnight) outside which a
/// `run` worker starts no pass and stops a running one after its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u32,
    end: u32,
}

impl Window {
    fn minute_of_day(t: NaiveTime) -> u32 {
        t.hour() * 60 + t.minute()
    }

    pub fn contains(&self, t: NaiveTime) -> bool {
        let m = Self::minute_of_day(t);
        if self.start <= self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// How long from `t` until the window opens (zero inside it).
    pub fn until_open(&self, t: NaiveTime) -> Duration {
        if self.contains(t) {
            return Duration::ZERO;
        }
        let now_secs = t.num_seconds_from_midnight();
        let start_secs = self.start * 60;
        let wait = (start_secs + 86_400 - now_secs) % 86_400;
        Duration::from_secs(u64::from(wait))
    }
}

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hint = "expected HH:MM-HH:MM in UTC, e.g. 01:00-05:00";
        let (a, b) = s.split_once('-').ok_or(hint)?;
        let parse = |x: &str| NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|_| hint);
        let (start, end) = (parse(a)?, parse(b)?);
        if start == end {
            return Err("start and end are equal: the window would be empty".to_owned());
        }
        Ok(Self {
            start: Self::minute_of_day(start),
            end: Self::minute_of_day(end),
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// How long each kind of data is kept past its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub guest_cart: Duration,
    pub user_cart: Duration,
    pub merged_cart: Duration,
    pub idempotency: Duration,
    pub applied_ops: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            guest_cart: days(14),
            user_cart: days(90),
            merged_cart: hours(24),
            idempotency: hours(24),
            applied_ops: hours(24),
        }
    }
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

pub fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3_600)
}

/// What one pass does and how fast.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub retention: Retention,
    pub batch_size: u32,
    pub max_rows_per_second: u32,
    /// Prefix of every Redis key (the session indexes and cart cache entries).
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub pg: PgSettings,
    pub redis: RedisSettings,
    pub mode: Mode,
    pub interval: Duration,
    pub window: Option<Window>,
    pub lock_key: i64,
    pub jobs: Jobs,
}

impl Config {
    pub fn read(mut env: Env<'_>) -> Result<Self, ConfigError> {
        let e = &mut env;
        let common = Common::read(e, "CLEANUP_LISTEN", "127.0.0.1:8084");
        let pg = PgSettings::read(e);
        let redis = RedisSettings::read(e);
        let mode = e.get("CLEANUP_MODE", Mode::Run);
        let interval = e.secs("CLEANUP_INTERVAL_SECS", 300, 1..=86_400);
        let batch_size = e.int_in("CLEANUP_BATCH_SIZE", 500, 1..=10_000);
        let max_rows_per_second = e.int_in("CLEANUP_MAX_ROWS_PER_SECOND", 2_000, 1..=1_000_000);
        let guest_days = e.int_in("CLEANUP_GUEST_CART_RETENTION_DAYS", 14, 1..=3_650);
        let user_days = e.int_in("CLEANUP_USER_CART_RETENTION_DAYS", 90, 0..=3_650);
        if user_days < MIN_USER_CART_RETENTION_DAYS {
            e.invalid(format!(
                "CLEANUP_USER_CART_RETENTION_DAYS={user_days}: user carts must be kept at least \
                 {MIN_USER_CART_RETENTION_DAYS} days after their last change (API.md, Lifetimes); \
                 refusing to start rather than delete carts too early"
            ));
        }
        let merged_hours = e.int_in("CLEANUP_MERGED_CART_RETENTION_HOURS", 24, 1..=87_600);
        let mut at_least_a_day = |name: &str| {
            let h = e.int_in(name, 24, 0..=87_600);
            if h < MIN_IDEMPOTENCY_RETENTION_HOURS {
                e.invalid(format!(
                    "{name}={h}: must be at least {MIN_IDEMPOTENCY_RETENTION_HOURS} hours \
                     (API.md: a client may retry that long)"
                ));
            }
            h
        };
        let idempotency_hours = at_least_a_day("CLEANUP_IDEMPOTENCY_RETENTION_HOURS");
        let applied_ops_hours = at_least_a_day("CLEANUP_APPLIED_OPS_RETENTION_HOURS");
        let window = match e.string("CLEANUP_OFFPEAK_WINDOW", "").trim() {
            "" => None,
            raw => match raw.parse::<Window>() {
                Ok(w) => Some(w),
                Err(why) => {
                    e.invalid(format!("CLEANUP_OFFPEAK_WINDOW={raw:?}: {why}"));
                    None
                }
            },
        };
        let lock_key = e.get("CLEANUP_LOCK_KEY", DEFAULT_LOCK_KEY);
        let key_prefix = redis.key_prefix.clone();
        let cfg = Self {
            common,
            pg,
            redis,
            mode,
            interval,
            window,
            lock_key,
            jobs: Jobs {
                retention: Retention {
                    guest_cart: days(guest_days),
                    user_cart: days(user_days),
                    merged_cart: hours(merged_hours),
                    idempotency: hours(idempotency_hours),
                    applied_ops: hours(applied_ops_hours),
                },
                batch_size,
                max_rows_per_second,
                key_prefix,
            },
        };
        env.finish()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.insert("INTERNAL_TOKEN".into(), "x".repeat(32));
        Config::read(Env::from_fn(move |k| vars.get(k).cloned()))
    }

    #[test]
    fn defaults_follow_the_lifetimes_table() {
        let cfg = read(&[]).unwrap();
        assert_eq!(cfg.mode, Mode::Run);
        assert_eq!(cfg.jobs.retention, Retention::default());
        assert_eq!(cfg.jobs.retention.guest_cart, days(14));
        assert_eq!(cfg.jobs.retention.user_cart, days(90));
        assert!(cfg.window.is_none());
    }

    #[test]
    fn user_cart_retention_below_30_days_is_refused_by_name() {
        let err = read(&[("CLEANUP_USER_CART_RETENTION_DAYS", "29")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLEANUP_USER_CART_RETENTION_DAYS=29"), "{err}");
        assert!(err.contains("at least 30 days"), "{err}");
        assert!(read(&[("CLEANUP_USER_CART_RETENTION_DAYS", "30")]).is_ok());
    }

    #[test]
    fn idempotency_and_op_retention_below_a_day_are_refused() {
        let err = read(&[
            ("CLEANUP_IDEMPOTENCY_RETENTION_HOURS", "23"),
            ("CLEANUP_APPLIED_OPS_RETENTION_HOURS", "1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CLEANUP_IDEMPOTENCY_RETENTION_HOURS=23"),
            "{err}"
        );
        assert!(
            err.contains("CLEANUP_APPLIED_OPS_RETENTION_HOURS=1"),
            "{err}"
        );
    }

    #[test]
    fn bad_mode_and_window_are_named() {
        let err = read(&[
            ("CLEANUP_MODE", "sometimes"),
            ("CLEANUP_OFFPEAK_WINDOW", "1am-5am"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("CLEANUP_MODE=\"sometimes\""), "{err}");
        assert!(err.contains("CLEANUP_OFFPEAK_WINDOW=\"1am-5am\""), "{err}");
    }

    #[test]
    fn windows_may_span_midnight() {
        let t = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        let night: Window = "22:00-04:00".parse().unwrap();
        assert!(night.contains(t(23, 0)) && night.contains(t(3, 59)));
        assert!(!night.contains(t(4, 0)) && !night.contains(t(12, 0)));
        assert_eq!(night.until_open(t(21, 30)), Duration::from_secs(1800));
        let early: Window = "01:00-05:00".parse().unwrap();
        assert!(early.contains(t(1, 0)) && !early.contains(t(5, 0)));
        assert_eq!(early.until_open(t(6, 0)), Duration::from_secs(19 * 3600));
        assert_eq!(early.to_string(), "01:00-05:00");
        assert!("05:00-05:00".parse::<Window>().is_err());
    }
}
