//! Password hashing: argon2id, run on a bounded set of blocking threads. Hashing is
//! deliberately expensive (tens of milliseconds of CPU), so it never runs on the async
//! runtime, at most `concurrency` run at once, and when `max_waiting` requests already
//! wait, or a request waited `max_wait`, it is shed (503) instead of queued without
//! bound: a login storm must not take the cart traffic's CPU or pile up latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use prometheus::{Histogram, HistogramOpts, IntGauge};
use svc_kit::metrics::Metrics;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy)]
pub struct HashSettings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub concurrency: usize,
    pub max_waiting: usize,
    pub max_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Too many hashes in flight or waiting: answer 503 + Retry-After.
    #[error("password hashing is saturated")]
    Saturated,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
    /// A hash of a random password: unknown emails are verified against it so they
    /// cost what a wrong password costs.
    dummy: String,
    duration: Histogram,
    in_use: IntGauge,
    queued: IntGauge,
}

impl Hasher {
    pub fn new(s: HashSettings, metrics: &Metrics) -> Result<Self, HashError> {
        let params = Params::new(s.memory_kib, s.iterations, s.parallelism, None)
            .map_err(|e| HashError::Failed(e.to_string()))?;
        let random: [u8; 32] = rand::random();
        let dummy = hash_with(&params, &hex::encode(random))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(s.concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: s.max_waiting,
            max_wait: s.max_wait,
            dummy,
            duration: metrics.register(
                &Histogram::with_opts(
                    HistogramOpts::new(
                        "auth_password_hash_duration_seconds",
                        "Time to hash or verify one password (argon2id), excluding the wait for a thread.",
                    )
                    .buckets(vec![0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0]),
                )
                .expect("static metric definition is valid"),
            ),
            in_use: metrics.register(
                &IntGauge::new(
                    "auth_password_hash_in_flight",
                    "Password hashes being computed now.",
                )
                .expect("static metric definition is valid"),
            ),
            queued: metrics.register(
                &IntGauge::new(
                    "auth_password_hash_waiting",
                    "Requests waiting for a password-hashing thread.",
                )
                .expect("static metric definition is valid"),
            ),
        })
    }

    /// True when a new hash would be shed right away: lets a login refuse before it
    /// spends anything else (a shed login must be cheap, or shedding cannot protect).
    pub fn saturated(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) >= self.max_waiting
    }

    /// A PHC string for a new password.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let params = self.params.clone();
        self.run(move || hash_with(&params, &password)).await?
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown email), verifies
    /// against the dummy hash and answers false, in the same time.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy.clone());
        let matched = self
            .run(move || {
                let parsed =
                    PasswordHash::new(&phc).map_err(|e| HashError::Failed(e.to_string()))?;
                Ok::<_, HashError>(
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok(),
                )
            })
            .await??;
        Ok(known && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(HashError::Saturated);
        }
        self.queued.inc();
        let permit =
            tokio::time::timeout(self.max_wait, Arc::clone(&self.permits).acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.queued.dec();
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => return Err(HashError::Saturated),
        };
        self.in_use.inc();
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await;
        self.in_use.dec();
        self.duration.observe(started.elapsed().as_secs_f64());
        out.map_err(|e| HashError::Failed(e.to_string()))
    }
}

fn hash_with(params: &Params, password: &str) -> Result<String, HashError> {
    let random: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&random).map_err(|e| HashError::Failed(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(concurrency: usize, max_waiting: usize) -> HashSettings {
        HashSettings {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
            concurrency,
            max_waiting,
            max_wait: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let h = Hasher::new(settings(1, 4), &Metrics::new("t")).unwrap();
        let phc = h.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h
            .verify("correct horse".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!h.verify("wrong horse".into(), Some(phc)).await.unwrap());
        assert!(!h.verify("correct horse".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn excess_work_is_shed_not_queued() {
        let h = Arc::new(Hasher::new(settings(1, 1), &Metrics::new("t")).unwrap());
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let h = Arc::clone(&h);
                tokio::spawn(async move { h.hash("password1".into()).await })
            })
            .collect();
        let mut shed = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Err(HashError::Saturated)) {
                shed += 1;
            }
        }
        assert!(
            shed >= 3,
            "only {shed} of 6 shed with one thread and one waiting slot"
        );
    }
}
