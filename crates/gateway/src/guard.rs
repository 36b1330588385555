//! What stands between a request and a backend: admission control with priorities, a
//! circuit breaker, and retries within a budget. One [`Guard`] per upstream.
//!
//! **Admission.** Each upstream admits at most `max_in_flight` calls at once. A call
//! that finds it full waits at most `max_wait`, then is shed with 503 + `Retry-After` at
//! once: the queue in front of a saturated backend never grows beyond what `max_wait`
//! allows, so admitted requests keep their latency and the excess learns immediately.
//! Priorities share the capacity unequally (see [`Priority`]): when a sale pushes a
//! backend to its limit, new sessions and logins are shed first, then reads, and cart
//! changes of shoppers already mid-purchase last.
//!
//! **Breaker.** After `failures_to_open` consecutive transport failures (connect
//! refused, timeout) the breaker opens: calls fail fast with 503 for `cooldown`, then one
//! trial call is let through (half-open); its success closes the breaker.
//!
//! **Retries.** Only a call that is safe to repeat (GET, or a request carrying an
//! `Idempotency-Key`) is retried, at most once, only after a transport failure (never
//! after the backend answered), and only while the retry budget allows: every first
//! attempt earns `budget_percent` % of a retry, capped at a small burst, so retries can
//! never multiply the load on a struggling backend by more than that share.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use svc_kit::metrics::Metrics;
use svc_kit::Problem;
use tokio::sync::Notify;

/// How much of an upstream's capacity a request may use (API.md and the sale-spike
/// goal: a shopper who is buying is served before a newcomer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Cart changes (add, set, remove, clear, offline sync): all of the capacity.
    Critical,
    /// Cart reads, who-am-i, refresh, logout: up to 90 %.
    Normal,
    /// New sessions, registrations, logins: up to 70 %.
    Low,
}

impl Priority {
    pub fn share(self) -> usize {
        match self {
            Priority::Critical => 100,
            Priority::Normal => 90,
            Priority::Low => 70,
        }
    }

    /// The priority of a public request, from its method and path alone (the front
    /// door knows nothing more; the cart proxy uses the same rule).
    pub fn of_request(method: &actix_web::http::Method, path: &str) -> Self {
        let auth_entry = path.starts_with("/api/v1/auth/")
            && path != "/api/v1/auth/refresh"
            && path != "/api/v1/auth/logout";
        if path == "/api/v1/sessions" || auth_entry {
            Priority::Low
        } else if method == actix_web::http::Method::GET || !path.starts_with("/api/v1/cart") {
            Priority::Normal
        } else {
            Priority::Critical
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GuardSettings {
    pub max_in_flight: usize,
    pub max_wait: Duration,
    pub failures_to_open: u32,
    pub cooldown: Duration,
    pub budget_percent: u32,
}

/// Metrics of every guard, labelled by upstream.
#[derive(Clone)]
pub struct GuardMetrics {
    in_flight: IntGaugeVec,
    shed: IntCounterVec,
    calls: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    breaker_open: IntGaugeVec,
}

impl GuardMetrics {
    pub fn new(m: &Metrics) -> Self {
        let valid = "static metric definition is valid";
        Self {
            in_flight: m.register(
                &IntGaugeVec::new(
                    Opts::new("gateway_upstream_in_flight", "Calls to an upstream in flight."),
                    &["upstream"],
                )
                .expect(valid),
            ),
            shed: m.register(
                &IntCounterVec::new(
                    Opts::new(
                        "gateway_upstream_shed_total",
                        "Calls answered 503 without reaching the upstream, by reason (full, breaker_open) and priority.",
                    ),
                    &["upstream", "reason", "priority"],
                )
                .expect(valid),
            ),
            calls: m.register(
                &IntCounterVec::new(
                    Opts::new(
                        "gateway_upstream_requests_total",
                        "Calls to an upstream, by outcome (answered, connect_error, timeout, error).",
                    ),
                    &["upstream", "outcome"],
                )
                .expect(valid),
            ),
            duration: m.register(
                &HistogramVec::new(
                    HistogramOpts::new(
                        "gateway_upstream_request_duration_seconds",
                        "Time from sending a call to an upstream until its response headers (or failure).",
                    )
                    .buckets(svc_kit::metrics::LATENCY_BUCKETS.to_vec()),
                    &["upstream"],
                )
                .expect(valid),
            ),
            retries: m.register(
                &IntCounterVec::new(
                    Opts::new(
                        "gateway_upstream_retries_total",
                        "Retries, by result (sent, denied_by_budget).",
                    ),
                    &["upstream", "result"],
                )
                .expect(valid),
            ),
            breaker_open: m.register(
                &IntGaugeVec::new(
                    Opts::new(
                        "gateway_upstream_breaker_open",
                        "1 while the upstream's circuit breaker is open.",
                    ),
                    &["upstream"],
                )
                .expect(valid),
            ),
        }
    }
}

pub struct Guard {
    pub name: &'static str,
    settings: GuardSettings,
    in_flight: AtomicUsize,
    freed: Notify,
    consecutive_failures: AtomicU32,
    /// While now < this (ms since `epoch`), the breaker is open.
    open_until_ms: AtomicU64,
    /// One trial at a time when half-open.
    trial_in_flight: AtomicU32,
    /// Retry tokens, in thousandths of a retry.
    budget: AtomicI64,
    epoch: Instant,
    metrics: GuardMetrics,
    /// This upstream's series of the per-call metrics, looked up once rather than by
    /// label on every call.
    in_flight_gauge: prometheus::IntGauge,
    duration: prometheus::Histogram,
    answered: prometheus::IntCounter,
}

/// An admitted call's slot; frees it when dropped.
pub struct Admitted {
    guard: Arc<Guard>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.guard.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.guard.in_flight_gauge.dec();
        self.guard.freed.notify_waiters();
    }
}

/// The most retries that can be saved up (a burst after a quiet period).
const BUDGET_CAP: i64 = 10_000;

impl Guard {
    pub fn new(name: &'static str, settings: GuardSettings, metrics: GuardMetrics) -> Arc<Self> {
        metrics.breaker_open.with_label_values(&[name]).set(0);
        metrics.in_flight.with_label_values(&[name]).set(0);
        // Every series exists from the start, so rates and alerts see 0, not nothing.
        for reason in ["full", "breaker_open"] {
            for p in [Priority::Critical, Priority::Normal, Priority::Low] {
                metrics.shed.with_label_values(&[name, reason, p.as_str()]);
            }
        }
        for result in ["sent", "denied_by_budget"] {
            metrics.retries.with_label_values(&[name, result]);
        }
        for outcome in ["answered", "connect_error", "timeout", "error"] {
            metrics.calls.with_label_values(&[name, outcome]);
        }
        let in_flight_gauge = metrics.in_flight.with_label_values(&[name]);
        let duration = metrics.duration.with_label_values(&[name]);
        let answered = metrics.calls.with_label_values(&[name, "answered"]);
        Arc::new(Self {
            in_flight_gauge,
            duration,
            answered,
            name,
            settings,
            in_flight: AtomicUsize::new(0),
            freed: Notify::new(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            trial_in_flight: AtomicU32::new(0),
            budget: AtomicI64::new(BUDGET_CAP),
            epoch: Instant::now(),
            metrics,
        })
    }

    fn limit(&self, p: Priority) -> usize {
        (self.settings.max_in_flight * p.share() / 100).max(1)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn shed(&self, reason: &str, p: Priority) -> Problem {
        self.metrics
            .shed
            .with_label_values(&[self.name, reason, p.as_str()])
            .inc();
        Problem::unavailable(1).detail(match reason {
            "breaker_open" => "a backend service is failing; retry in a moment",
            _ => "the service is at capacity; retry in a moment",
        })
    }

    /// Waits (at most `max_wait`) for a slot under this priority's share.
    pub async fn admit(self: &Arc<Self>, p: Priority) -> Result<Admitted, Problem> {
        let limit = self.limit(p);
        let deadline = tokio::time::Instant::now() + self.settings.max_wait;
        loop {
            // Registered before the check, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let current = self.in_flight.load(Ordering::Acquire);
            if current < limit {
                if self
                    .in_flight
                    .compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.in_flight_gauge.inc();
                    return Ok(Admitted {
                        guard: Arc::clone(self),
                    });
                }
                continue;
            }
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep_until(deadline) => return Err(self.shed("full", p)),
            }
        }
    }

    /// Whether the breaker lets a call through now (`Err` = fail fast).
    fn breaker_allows(&self, p: Priority) -> Result<bool, Problem> {
        let open_until = self.open_until_ms.load(Ordering::Acquire);
        if open_until == 0 {
            return Ok(false);
        }
        if self.now_ms() < open_until {
            return Err(self.shed("breaker_open", p));
        }
        // Half-open: one trial call at a time.
        if self
            .trial_in_flight
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Ok(true)
        } else {
            Err(self.shed("breaker_open", p))
        }
    }

    fn record(&self, ok: bool, trial: bool) {
        if trial {
            self.trial_in_flight.store(0, Ordering::Release);
        }
        if ok {
            self.consecutive_failures.store(0, Ordering::Release);
            if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
                tracing::info!(upstream = self.name, "circuit breaker closed");
                self.metrics
                    .breaker_open
                    .with_label_values(&[self.name])
                    .set(0);
            }
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if trial || failures >= self.settings.failures_to_open {
            let cooldown = u64::try_from(self.settings.cooldown.as_millis()).unwrap_or(u64::MAX);
            let was = self.open_until_ms.swap(
                self.now_ms().saturating_add(cooldown).max(1),
                Ordering::AcqRel,
            );
            if was == 0 {
                tracing::warn!(upstream = self.name, failures, "circuit breaker opened");
            }
            self.metrics
                .breaker_open
                .with_label_values(&[self.name])
                .set(1);
        }
    }

    fn earn_retry(&self) {
        let earn = i64::from(self.settings.budget_percent) * 10;
        let _ = self
            .budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b + earn).min(BUDGET_CAP))
            });
    }

    fn spend_retry(&self) -> bool {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }

    /// Sends one call through admission, the breaker and (when `retry_safe`) one
    /// budgeted retry. `send` builds and sends the request afresh for each attempt.
    pub async fn call<F, Fut>(
        self: &Arc<Self>,
        p: Priority,
        retry_safe: bool,
        send: F,
    ) -> Result<reqwest::Response, Problem>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<reqwest::Response, reqwest::Error>>,
    {
        let _slot = self.admit(p).await?;
        self.earn_retry();
        let mut attempt = 0;
        loop {
            let trial = self.breaker_allows(p)?;
            let started = Instant::now();
            let result = send().await;
            self.duration.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(res) => {
                    self.answered.inc();
                    self.record(true, trial);
                    return Ok(res);
                }
                Err(e) => {
                    let outcome = if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect_error"
                    } else {
                        "error"
                    };
                    self.metrics
                        .calls
                        .with_label_values(&[self.name, outcome])
                        .inc();
                    self.record(false, trial);
                    if retry_safe && attempt == 0 {
                        if self.spend_retry() {
                            self.metrics
                                .retries
                                .with_label_values(&[self.name, "sent"])
                                .inc();
                            attempt += 1;
                            tracing::info!(upstream = self.name, outcome, "retrying once");
                            continue;
                        }
                        self.metrics
                            .retries
                            .with_label_values(&[self.name, "denied_by_budget"])
                            .inc();
                    }
                    return Err(crate::upstream::failure(self.name, &e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: usize, wait_ms: u64) -> Arc<Guard> {
        Guard::new(
            "test",
            GuardSettings {
                max_in_flight: max,
                max_wait: Duration::from_millis(wait_ms),
                failures_to_open: 2,
                cooldown: Duration::from_millis(200),
                budget_percent: 10,
            },
            GuardMetrics::new(&Metrics::new("t")),
        )
    }

    #[tokio::test]
    async fn a_full_upstream_sheds_after_the_wait_and_low_priority_first() {
        let g = guard(10, 50);
        let mut held = Vec::new();
        for _ in 0..7 {
            held.push(g.admit(Priority::Low).await.unwrap());
        }
        let t = Instant::now();
        assert!(g.admit(Priority::Low).await.is_err(), "low gets 70 %");
        assert!(t.elapsed() >= Duration::from_millis(45));
        assert!(t.elapsed() < Duration::from_millis(500));
        for _ in 0..2 {
            held.push(g.admit(Priority::Normal).await.unwrap());
        }
        assert!(g.admit(Priority::Normal).await.is_err(), "normal gets 90 %");
        held.push(g.admit(Priority::Critical).await.unwrap());
        assert!(
            g.admit(Priority::Critical).await.is_err(),
            "never above the bound"
        );
        // A freed slot is taken by a waiter at once.
        let g2 = Arc::clone(&g);
        let waiter = tokio::spawn(async move { g2.admit(Priority::Critical).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        held.pop();
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn the_budget_allows_about_the_configured_share_of_retries() {
        let g = guard(10, 10);
        // Spend the initial burst.
        while g.spend_retry() {}
        let mut retries = 0;
        for _ in 0..1000 {
            g.earn_retry();
            if g.spend_retry() {
                retries += 1;
            }
        }
        assert!(
            (95..=105).contains(&retries),
            "{retries} retries per 1000 calls"
        );
    }

    #[test]
    fn the_breaker_opens_fails_fast_and_closes_after_a_good_trial() {
        let g = guard(10, 10);
        assert_eq!(g.breaker_allows(Priority::Normal).ok(), Some(false));
        g.record(false, false);
        assert!(
            g.breaker_allows(Priority::Normal).is_ok(),
            "one failure keeps it closed"
        );
        g.record(false, false);
        assert!(
            g.breaker_allows(Priority::Normal).is_err(),
            "open after two"
        );
        std::thread::sleep(Duration::from_millis(220));
        let trial = g.breaker_allows(Priority::Normal).unwrap();
        assert!(trial, "half-open: a trial");
        assert!(
            g.breaker_allows(Priority::Normal).is_err(),
            "one trial at a time"
        );
        g.record(true, trial);
        assert_eq!(
            g.breaker_allows(Priority::Normal).ok(),
            Some(false),
            "closed"
        );
    }
}
