//! What the run measured: latency histograms per request kind and per second, answers by
//! status code, and the summary the JSON and HTML reports are made of.
//!
//! Answers fall in three classes. *ok*: 2xx, and 412 (a precondition a client sent
//! and the server enforced: the protocol working, not a failure). *shed*: 429 and 503,
//! the platform protecting itself, counted apart so a spike's shedding is visible and
//! judged by its own latency. *failed*: everything else, transport errors included.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::profile::Phase;
use crate::threshold::Metric;

/// Latencies are recorded in microseconds, up to 5 minutes.
const MAX_US: u64 = 300_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok,
    Shed,
    Failed,
}

pub fn classify(status: Option<u16>) -> Class {
    match status {
        Some(200..=299 | 412) => Class::Ok,
        Some(429 | 503) => Class::Shed,
        _ => Class::Failed,
    }
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, sigfig)
        .expect("constant bounds and 2 or 3 significant digits are valid")
}

struct KindStats {
    admitted: Histogram<u64>,
    shed: Histogram<u64>,
    ok: u64,
    shed_n: u64,
    failed: u64,
    by_code: BTreeMap<u16, u64>,
    by_error: BTreeMap<&'static str, u64>,
}

impl KindStats {
    fn new() -> Self {
        Self {
            admitted: histogram(3),
            shed: histogram(3),
            ok: 0,
            shed_n: 0,
            failed: 0,
            by_code: BTreeMap::new(),
            by_error: BTreeMap::new(),
        }
    }

    fn by_status(&self) -> BTreeMap<String, u64> {
        let codes = self.by_code.iter().map(|(c, n)| (c.to_string(), *n));
        let errors = self.by_error.iter().map(|(e, n)| ((*e).to_owned(), *n));
        codes.chain(errors).collect()
    }
}

struct Second {
    offered: u64,
    ok: u64,
    shed: u64,
    failed: u64,
    admitted: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self {
            offered: 0,
            ok: 0,
            shed: 0,
            failed: 0,
            admitted: histogram(2),
        }
    }
}

struct Inner {
    kinds: BTreeMap<&'static str, KindStats>,
    seconds: Vec<Second>,
    dropped: u64,
    checks_failed: BTreeMap<&'static str, u64>,
    /// From the moment a request was due to the moment the generator started sending
    /// it: the generator's own delay, included in every latency figure.
    lag: Histogram<u64>,
}

pub struct Recorder {
    pub start: Instant,
    /// Every answer, warm-up included (what the processes' CPU time is divided by).
    answered: std::sync::atomic::AtomicU64,
    /// Requests due before this offset warm the platform up and are not counted.
    warmup: Duration,
    inner: Mutex<Inner>,
}

impl Recorder {
    pub fn new(start: Instant, warmup: Duration) -> Self {
        Self {
            start,
            answered: std::sync::atomic::AtomicU64::new(0),
            warmup,
            inner: Mutex::new(Inner {
                kinds: BTreeMap::new(),
                seconds: Vec::new(),
                dropped: 0,
                checks_failed: BTreeMap::new(),
                lag: histogram(2),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while recording cannot leave the counters half-updated in a way that
        // matters more than losing the whole report.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offset of `at` from the measured start (after the warm-up), or None during warm-up.
    fn second_of(&self, at: Instant) -> Option<usize> {
        let since = at.checked_duration_since(self.start + self.warmup)?;
        usize::try_from(since.as_secs()).ok()
    }

    pub fn offered(&self, due: Instant, requests: u64) {
        if let Some(s) = self.second_of(due) {
            let mut g = self.lock();
            grow(&mut g.seconds, s).offered += requests;
        }
    }

    pub fn dropped(&self, due: Instant) {
        if self.second_of(due).is_some() {
            self.lock().dropped += 1;
        }
    }

    pub fn check_failed(&self, what: &'static str) {
        *self.lock().checks_failed.entry(what).or_default() += 1;
    }

    /// One answer (or transport failure, `status` None) to a request that was due at
    /// `due` and began to be sent at `sent`: its latency counts from `due`, so time the
    /// request spent waiting to be sent (an overloaded generator, a slow previous step)
    /// is not hidden.
    pub fn record(
        &self,
        kind: &'static str,
        due: Instant,
        sent: Instant,
        status: Option<u16>,
        error: &'static str,
    ) {
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(sec) = self.second_of(due) else {
            return;
        };
        let micros = |d: Duration| {
            u64::try_from(d.as_micros())
                .unwrap_or(MAX_US)
                .clamp(1, MAX_US)
        };
        let us = micros(due.elapsed());
        let lag = micros(sent.saturating_duration_since(due));
        let class = classify(status);
        let mut g = self.lock();
        g.lag.saturating_record(lag);
        let k = g.kinds.entry(kind).or_insert_with(KindStats::new);
        match status {
            Some(code) => *k.by_code.entry(code).or_default() += 1,
            None => *k.by_error.entry(error).or_default() += 1,
        }
        match class {
            Class::Ok => k.ok += 1,
            Class::Shed => k.shed_n += 1,
            Class::Failed => k.failed += 1,
        }
        let h = if class == Class::Shed {
            &mut k.shed
        } else {
            &mut k.admitted
        };
        h.saturating_record(us);
        let s = grow(&mut g.seconds, sec);
        match class {
            Class::Ok => s.ok += 1,
            Class::Shed => s.shed += 1,
            Class::Failed => s.failed += 1,
        }
        if class != Class::Shed {
            s.admitted.saturating_record(us);
        }
    }

    pub fn summarize(&self, meta: Meta) -> Summary {
        let g = self.lock();
        let mut all = KindStats::new();
        let mut kinds = BTreeMap::new();
        for (name, k) in &g.kinds {
            kinds.insert((*name).to_owned(), kind_summary(k, meta.measured_secs));
            // Same bounds, so adding cannot fail.
            let _ = all.admitted.add(&k.admitted);
            let _ = all.shed.add(&k.shed);
            all.ok += k.ok;
            all.shed_n += k.shed_n;
            all.failed += k.failed;
            for (c, n) in &k.by_code {
                *all.by_code.entry(*c).or_default() += n;
            }
            for (e, n) in &k.by_error {
                *all.by_error.entry(e).or_default() += n;
            }
        }
        let timeline: Vec<SecondSummary> = g
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| SecondSummary {
                t: i as f64 + meta.warmup_secs,
                offered: s.offered,
                ok: s.ok,
                shed: s.shed,
                failed: s.failed,
                p50_ms: ms(s.admitted.value_at_quantile(0.5), s.admitted.len()),
                p99_ms: ms(s.admitted.value_at_quantile(0.99), s.admitted.len()),
                max_ms: ms(s.admitted.max(), s.admitted.len()),
            })
            .collect();
        let recovery_secs = recovery(&timeline, &meta.phases);
        let lag = &g.lag;
        let generator_lag_ms = Lag {
            p50: ms(lag.value_at_quantile(0.5), lag.len()),
            p99: ms(lag.value_at_quantile(0.99), lag.len()),
            max: ms(lag.max(), lag.len()),
        };
        Summary {
            overall: kind_summary(&all, meta.measured_secs),
            kinds,
            dropped: g.dropped,
            checks_failed: g
                .checks_failed
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            recovery_secs,
            generator_lag_ms,
            requests_with_warmup: self.answered.load(std::sync::atomic::Ordering::Relaxed),
            timeline,
            meta,
            audit: None,
            cpu: None,
            verdicts: Vec::new(),
        }
    }
}

fn grow(v: &mut Vec<Second>, i: usize) -> &mut Second {
    while v.len() <= i {
        v.push(Second::new());
    }
    &mut v[i]
}

fn ms(us: u64, n: u64) -> Option<f64> {
    (n > 0).then_some(us as f64 / 1000.0)
}

fn kind_summary(k: &KindStats, secs: f64) -> KindSummary {
    let h = &k.admitted;
    let n = h.len();
    let q = |x: f64| ms(h.value_at_quantile(x), n);
    let s = &k.shed;
    let sn = s.len();
    let total = k.ok + k.shed_n + k.failed;
    let pct = |x: u64| {
        if total == 0 {
            0.0
        } else {
            x as f64 * 100.0 / total as f64
        }
    };
    KindSummary {
        requests: total,
        ok: k.ok,
        shed: k.shed_n,
        failed: k.failed,
        error_percent: pct(k.failed),
        shed_percent: pct(k.shed_n),
        ok_per_second: if secs > 0.0 { k.ok as f64 / secs } else { 0.0 },
        by_status: k.by_status(),
        latency_ms: Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: ms(h.max(), n),
            mean: (n > 0).then(|| h.mean() / 1000.0),
        },
        shed_latency_ms: Latency {
            p50: ms(s.value_at_quantile(0.5), sn),
            p90: ms(s.value_at_quantile(0.9), sn),
            p99: ms(s.value_at_quantile(0.99), sn),
            p999: ms(s.value_at_quantile(0.999), sn),
            max: ms(s.max(), sn),
            mean: (sn > 0).then(|| s.mean() / 1000.0),
        },
    }
}

/// Seconds from the end of the spike until every later second's p99 is back within
/// what the seconds before the spike showed: at most 1.1 × their worst p99 + 5 ms (the
/// worst, not the median, because one second's p99 rests on few requests and varies
/// from second to second even at a steady rate). None without a spike.
fn recovery(timeline: &[SecondSummary], phases: &[Phase]) -> Option<f64> {
    let before = phases.iter().find(|p| p.name == "before")?;
    let spike = phases.iter().find(|p| p.name == "spike")?;
    let worst = timeline
        .iter()
        .filter(|s| s.t >= before.start && s.t + 1.0 <= before.end)
        .filter_map(|s| s.p99_ms)
        .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))))?;
    let normal = worst * 1.1 + 5.0;
    let after: Vec<&SecondSummary> = timeline.iter().filter(|s| s.t >= spike.end).collect();
    if after.is_empty() {
        return None;
    }
    // The last second that was not normal; recovered one second after it.
    let last_bad = after
        .iter()
        .rev()
        .find(|s| s.p99_ms.is_none_or(|p| p > normal) || s.failed > 0);
    Some(match last_bad {
        None => 0.0,
        Some(s) => s.t + 1.0 - spike.end,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

/// The generator's own delay in sending (see `Inner::lag`): if its p99 is a real share
/// of the latency p99, the generator, not the platform, is slow.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    pub requests: u64,
    pub ok: u64,
    pub shed: u64,
    pub failed: u64,
    pub error_percent: f64,
    pub shed_percent: f64,
    pub ok_per_second: f64,
    /// Status code (or transport error) → answers.
    pub by_status: BTreeMap<String, u64>,
    /// Admitted requests (everything but 429/503), from the moment each was due.
    pub latency_ms: Latency,
    /// 429 and 503 answers.
    pub shed_latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondSummary {
    pub t: f64,
    pub offered: u64,
    pub ok: u64,
    pub shed: u64,
    pub failed: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub tool: String,
    pub started_at: String,
    pub target: String,
    pub workload: String,
    pub profile: crate::profile::Profile,
    pub phases: Vec<Phase>,
    pub warmup_secs: f64,
    pub measured_secs: f64,
    pub source_addresses: Vec<String>,
    pub pool_users: usize,
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// CPU seconds (user + system) the load generator used during the run.
    pub generator_cpu_secs: f64,
    pub generator_us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Audit {
    /// (cart, product) lines the audited adds went to.
    pub lines: u64,
    /// Units acknowledged with 200.
    pub acknowledged_units: u64,
    /// Units whose outcome the client cannot know (timeout, 5xx after sending).
    pub uncertain_units: u64,
    /// Acknowledged units missing from Postgres.
    pub lost_units: u64,
    /// Units in Postgres beyond acknowledged + uncertain (a doubled change).
    pub excess_units: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub meta: Meta,
    pub overall: KindSummary,
    pub kinds: BTreeMap<String, KindSummary>,
    /// Arrivals the generator skipped because its own in-flight cap was reached: if not
    /// 0, the generator (not the platform) was the limit and the figures are a floor.
    pub dropped: u64,
    pub checks_failed: BTreeMap<String, u64>,
    pub recovery_secs: Option<f64>,
    pub generator_lag_ms: Lag,
    /// Requests answered over the whole run, warm-up included.
    pub requests_with_warmup: u64,
    pub audit: Option<Audit>,
    pub cpu: Option<Cpu>,
    pub verdicts: Vec<crate::threshold::Verdict>,
    pub timeline: Vec<SecondSummary>,
}

impl Summary {
    pub fn measure(&self, metric: Metric, kind: Option<&str>) -> Option<f64> {
        let k = match kind {
            Some(name) => self.kinds.get(name)?,
            None => &self.overall,
        };
        let l = &k.latency_ms;
        match metric {
            Metric::Latency(q) => {
                let pick = [
                    (0.5, l.p50),
                    (0.9, l.p90),
                    (0.99, l.p99),
                    (0.999, l.p999),
                    (1.0, l.max),
                ];
                pick.iter()
                    .find(|(x, _)| (x - q).abs() < 1e-9)
                    .map_or_else(|| None, |(_, v)| *v)
            }
            Metric::Mean => l.mean,
            Metric::ShedLatency(q) => {
                let s = &k.shed_latency_ms;
                // No shed answer at all: nothing was slow to shed.
                if k.shed == 0 {
                    return Some(0.0);
                }
                [
                    (0.5, s.p50),
                    (0.9, s.p90),
                    (0.99, s.p99),
                    (0.999, s.p999),
                    (1.0, s.max),
                ]
                .iter()
                .find(|(x, _)| (x - q).abs() < 1e-9)
                .map_or_else(|| None, |(_, v)| *v)
            }
            Metric::Errors => Some(k.error_percent),
            Metric::Shed => Some(k.shed_percent),
            Metric::Rps => Some(k.ok_per_second),
            Metric::Dropped => Some(self.dropped as f64),
            Metric::Recovery => self.recovery_secs,
            Metric::Lost => self.audit.as_ref().map(|a| a.lost_units as f64),
            Metric::Checks => Some(self.checks_failed.values().sum::<u64>() as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn meta(profile: Profile) -> Meta {
        Meta {
            tool: "t".into(),
            started_at: String::new(),
            target: String::new(),
            workload: String::new(),
            phases: profile.phases(),
            measured_secs: profile.duration(),
            profile,
            warmup_secs: 0.0,
            source_addresses: vec![],
            pool_users: 0,
            command: String::new(),
        }
    }

    #[test]
    fn classes_and_quantiles() {
        let start = Instant::now() - Duration::from_secs(1);
        let r = Recorder::new(start, Duration::ZERO);
        for _ in 0..98 {
            r.record("cart_read", start, start, Some(200), "");
        }
        r.record("cart_read", start, start, Some(503), "");
        r.record("cart_read", start, start, None, "timeout");
        let s = r.summarize(meta(Profile::Steady {
            rate: 1.0,
            duration: 1.0,
        }));
        let k = &s.kinds["cart_read"];
        assert_eq!((k.ok, k.shed, k.failed), (98, 1, 1));
        assert_eq!(k.by_status["timeout"], 1);
        assert!((k.error_percent - 1.0).abs() < 1e-9);
        // Latency counts from the due time: at least the second that has passed.
        assert!(k.latency_ms.p50.is_some_and(|p| p >= 1000.0));
        assert_eq!(s.measure(Metric::Shed, None), Some(1.0));
        assert_eq!(s.measure(Metric::Latency(0.5), Some("nope")), None);
    }

    #[test]
    fn recovery_counts_seconds_until_p99_is_back() {
        let mk = |t: f64, p99: f64| SecondSummary {
            t,
            offered: 1,
            ok: 1,
            shed: 0,
            failed: 0,
            p50_ms: Some(p99),
            p99_ms: Some(p99),
            max_ms: Some(p99),
        };
        let phases = Profile::Spike {
            rate: 1.0,
            factor: 5.0,
            before: 3.0,
            during: 2.0,
            after: 5.0,
        }
        .phases();
        let tl = vec![
            mk(0.0, 10.0),
            mk(1.0, 12.0),
            mk(2.0, 10.0),
            mk(3.0, 400.0),
            mk(4.0, 400.0),
            mk(5.0, 300.0),
            mk(6.0, 200.0),
            mk(7.0, 12.0),
            mk(8.0, 11.0),
            mk(9.0, 10.0),
        ];
        assert_eq!(recovery(&tl, &phases), Some(2.0));
        assert_eq!(recovery(&tl[..5], &phases), None);
        assert_eq!(recovery(&tl[..8], &phases), Some(2.0));
    }
}
