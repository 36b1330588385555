//! Passes, pacing, the advisory lock and the modes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

use crate::config::{Jobs, Mode, Window};
use crate::jobs::{self, Kind};
use crate::metrics::WorkerMetrics;

/// Set once a stop was asked for (SIGTERM/SIGINT): the current batch finishes, nothing
/// new starts.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps `d`, or less when a stop arrives; whether it was stopped.
    pub async fn sleep(&self, d: Duration) -> bool {
        let mut rx = self.0.clone();
        let stopped = async move {
            // With its sender gone no stop can come: only the time counts.
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stopped => {}
        }
        self.is_stopped()
    }
}

/// Keeps deletions under `rows_per_second` over any stretch of time (give or take one
/// batch): each batch earns the next one a start `rows / rate` seconds later, so a batch
/// that found little work is followed by a short sleep, a full one by a longer one, and
/// time lost in a slow batch is never "caught up" with a burst.
pub struct Pacer {
    per_row: Duration,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(rows_per_second: u32) -> Self {
        Self {
            per_row: Duration::from_secs_f64(1.0 / f64::from(rows_per_second.max(1))),
            next: None,
        }
    }

    /// Records `rows` deleted by a batch that started at `started`; how long to wait
    /// before the next batch.
    pub fn record(&mut self, rows: u64, started: Instant) -> Duration {
        let base = self.next.map_or(started, |n| n.max(started));
        let next = base + self.per_row.mul_f64(rows as f64);
        self.next = Some(next);
        next.saturating_duration_since(Instant::now())
    }
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassResult {
    Ok,
    /// A job failed (logged); the others ran.
    Error,
    /// Stopped before the end: a stop signal, the lock lost, or the window closed.
    Interrupted,
}

impl PassResult {
    pub fn label(self) -> &'static str {
        match self {
            PassResult::Ok => "ok",
            PassResult::Error => "error",
            PassResult::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Deleted (or, in a dry run, found expired) per kind.
    pub rows: BTreeMap<Kind, u64>,
    pub result: Option<PassResult>,
}

impl PassReport {
    pub fn rows(&self, kind: Kind) -> u64 {
        self.rows.get(&kind).copied().unwrap_or(0)
    }
}

/// Why a pass should stop between two batches, if it should.
pub trait Keep: Send {
    fn go_on(&mut self) -> impl std::future::Future<Output = bool> + Send;
}

/// Only a stop signal ends the pass early (tests, `once`, `dry-run`).
pub struct UntilStopped(pub Stop);

impl Keep for UntilStopped {
    async fn go_on(&mut self) -> bool {
        !self.0.is_stopped()
    }
}

pub struct Worker {
    pub pg: PgPool,
    pub redis: deadpool_redis::Pool,
    pub jobs: Jobs,
    pub metrics: WorkerMetrics,
}

impl Worker {
    /// One pass over every kind. `dry_run` only counts.
    pub async fn pass(&self, dry_run: bool, keep: &mut impl Keep, stop: &Stop) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();
        let mut failed = false;
        let mut interrupted = false;
        let mut pacer = Pacer::new(self.jobs.max_rows_per_second);
        let mut cache = CacheDeletes::default();
        for kind in Kind::ALL {
            if !keep.go_on().await {
                interrupted = true;
                break;
            }
            let outcome = if dry_run {
                self.count(kind).await
            } else {
                self.delete(kind, keep, stop, &mut pacer, &mut cache).await
            };
            match outcome {
                Ok((rows, complete)) => {
                    report.rows.insert(kind, rows);
                    if !complete {
                        interrupted = true;
                        break;
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::error!(
                        kind = kind.label(),
                        error = format!("{e:#}"),
                        "cleanup job failed"
                    );
                }
            }
        }
        if !cache.finish(self).await {
            failed = true;
        }
        let result = if interrupted {
            PassResult::Interrupted
        } else if failed {
            PassResult::Error
        } else {
            PassResult::Ok
        };
        self.metrics
            .passes
            .with_label_values(&[result.label()])
            .inc();
        if result == PassResult::Ok {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            self.metrics.last_pass_completed.set(now);
        }
        let counts: BTreeMap<&str, u64> =
            report.rows.iter().map(|(k, n)| (k.label(), *n)).collect();
        tracing::info!(
            dry_run,
            result = result.label(),
            took_ms = started.elapsed().as_millis() as u64,
            rows = ?counts,
            "cleanup pass finished"
        );
        report.result = Some(result);
        report
    }

    /// Counts what `kind` would lose.
    async fn count(&self, kind: Kind) -> anyhow::Result<(u64, bool)> {
        let k = [kind.label()];
        let (n, oldest) = match kind.table(&self.jobs.retention) {
            Some(table) => {
                if !self.table_exists(kind).await? {
                    return Ok((0, true));
                }
                let (n, age) = table.count_expired(&self.pg).await?;
                (u64::try_from(n).unwrap_or(0), age)
            }
            None => {
                let mut conn = self.redis.get().await.context("connecting to Redis")?;
                let mut cursor = 0;
                let mut total = 0;
                let mut oldest: Option<i64> = None;
                let now_ms = chrono::Utc::now().timestamp_millis();
                loop {
                    let (next, n, o) = jobs::clean_session_index_page(
                        &mut conn,
                        &self.jobs.key_prefix,
                        cursor,
                        now_ms,
                        true,
                    )
                    .await?;
                    total += n;
                    oldest = min_opt(oldest, o);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                (total, oldest.map_or(0.0, |o| (now_ms - o) as f64 / 1000.0))
            }
        };
        self.metrics
            .rows_would_delete
            .with_label_values(&k)
            .inc_by(n);
        self.metrics
            .oldest_expired_age
            .with_label_values(&k)
            .set(oldest.max(0.0));
        tracing::info!(kind = kind.label(), would_delete = n, "dry run: counted");
        Ok((n, true))
    }

    async fn table_exists(&self, kind: Kind) -> anyhow::Result<bool> {
        let Some(table) = kind.table(&self.jobs.retention) else {
            return Ok(true);
        };
        let exists = table
            .exists(&self.pg)
            .await
            .with_context(|| format!("checking that {} exists", table.name))?;
        if !exists {
            // The auth schema belongs to auth-svc: a deployment without it (or before
            // its first migration) simply has nothing of that kind to clean.
            tracing::warn!(
                kind = kind.label(),
                table = table.name,
                "table missing (its service has not migrated it): skipped"
            );
        }
        Ok(exists)
    }

    /// Deletes every expired row of `kind`, batch by batch. `(rows, complete)`.
    async fn delete(
        &self,
        kind: Kind,
        keep: &mut impl Keep,
        stop: &Stop,
        pacer: &mut Pacer,
        cache: &mut CacheDeletes,
    ) -> anyhow::Result<(u64, bool)> {
        let k = [kind.label()];
        let batch = i64::from(self.jobs.batch_size);
        let mut total = 0;
        let table = kind.table(&self.jobs.retention);
        if let Some(table) = &table {
            if !self.table_exists(kind).await? {
                self.metrics
                    .oldest_expired_age
                    .with_label_values(&k)
                    .set(0.0);
                return Ok((0, true));
            }
            let age = table.oldest_expired_age(&self.pg).await?;
            self.metrics
                .oldest_expired_age
                .with_label_values(&k)
                .set(age.max(0.0));
        } else {
            self.metrics
                .oldest_expired_age
                .with_label_values(&k)
                .set(0.0);
        }
        let mut redis_conn = None;
        let mut cursor = 0;
        let now_ms = chrono::Utc::now().timestamp_millis();
        loop {
            if !keep.go_on().await {
                return Ok((total, false));
            }
            let started = Instant::now();
            let (found, deleted) = match &table {
                Some(table) if kind.is_cart() => {
                    let candidates = table.select_expired_carts(&self.pg, batch).await?;
                    let age = candidates.first().map_or(0.0, |c| c.overdue_secs);
                    self.metrics
                        .oldest_expired_age
                        .with_label_values(&k)
                        .set(age.max(0.0));
                    if candidates.is_empty() {
                        break;
                    }
                    let ids: Vec<_> = candidates.iter().map(|c| c.cart_id).collect();
                    let gone = table.delete_carts(&self.pg, &ids).await?;
                    let keys = gone
                        .iter()
                        .map(|id| jobs::cart_cache_key(&self.jobs.key_prefix, *id))
                        .collect();
                    cache.delete(self, keys).await;
                    (candidates.len() as u64, gone.len() as u64)
                }
                Some(table) => {
                    let n = table.delete_batch(&self.pg, batch).await?;
                    (n, n)
                }
                None => {
                    let conn = match &mut redis_conn {
                        Some(c) => c,
                        None => redis_conn
                            .insert(self.redis.get().await.context("connecting to Redis")?),
                    };
                    let (next, n, oldest) = jobs::clean_session_index_page(
                        conn,
                        &self.jobs.key_prefix,
                        cursor,
                        now_ms,
                        false,
                    )
                    .await?;
                    cursor = next;
                    if let Some(o) = oldest {
                        let age = (chrono::Utc::now().timestamp_millis() - o) as f64 / 1000.0;
                        let gauge = self.metrics.oldest_expired_age.with_label_values(&k);
                        gauge.set(gauge.get().max(age));
                    }
                    // A SCAN page may be empty while the walk goes on: only the cursor
                    // says when it is done.
                    (
                        if next == 0 {
                            0
                        } else {
                            u64::from(self.jobs.batch_size)
                        },
                        n,
                    )
                }
            };
            total += deleted;
            if deleted > 0 {
                self.metrics
                    .rows_deleted
                    .with_label_values(&k)
                    .inc_by(deleted);
                self.metrics.batches.with_label_values(&k).inc();
                self.metrics
                    .batch_duration
                    .with_label_values(&k)
                    .observe(started.elapsed().as_secs_f64());
            }
            let wait = pacer.record(deleted, started);
            if stop.sleep(wait).await {
                return Ok((total, false));
            }
            // Fewer than a batch found: this was the last. Nothing deleted of a full
            // batch: every candidate is held by another transaction; try next pass.
            if found < u64::from(self.jobs.batch_size) || deleted == 0 && table.is_some() {
                break;
            }
        }
        match &table {
            Some(table) => {
                let age = table.oldest_expired_age(&self.pg).await?;
                self.metrics
                    .oldest_expired_age
                    .with_label_values(&k)
                    .set(age.max(0.0));
            }
            None => self
                .metrics
                .oldest_expired_age
                .with_label_values(&k)
                .set(0.0),
        }
        Ok((total, true))
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Cache entries of deleted carts. Each batch's keys are deleted right after its commit
/// and once more one batch later: a cart-svc read that loaded the cart from Postgres just
/// before the commit may write its snapshot back after the first delete, and an entry
/// for a cart that no longer exists would shadow a new cart under the same id (the
/// cache's compare-and-set never replaces a newer version with an older one). Keys whose
/// delete failed (Redis down) are retried until the pass ends.
#[derive(Default)]
struct CacheDeletes {
    again: Vec<String>,
    failed: Vec<String>,
}

impl CacheDeletes {
    /// Deletes `keys` now and schedules them for the second delete.
    async fn delete(&mut self, worker: &Worker, keys: Vec<String>) {
        let mut all = std::mem::take(&mut self.again);
        all.append(&mut std::mem::take(&mut self.failed));
        all.extend(keys.iter().cloned());
        if let Err(e) = try_delete(worker, &all).await {
            tracing::warn!(error = %e, keys = all.len(), "cannot delete cart cache entries yet; will retry");
            // A failed first delete also needs its second one: keep them all.
            self.failed = all;
        } else {
            self.again = keys;
        }
    }

    /// Deletes whatever is left, after a pause long enough for a racing read to land.
    /// Whether every cache entry of a deleted cart is gone.
    async fn finish(&mut self, worker: &Worker) -> bool {
        let mut all = std::mem::take(&mut self.again);
        all.append(&mut self.failed);
        if all.is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match try_delete(worker, &all).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    keys = all.len(),
                    "cart cache entries of deleted carts could not be deleted; they expire with their TTL"
                );
                false
            }
        }
    }
}

async fn try_delete(worker: &Worker, keys: &[String]) -> anyhow::Result<()> {
    let mut conn = worker.redis.get().await.context("connecting to Redis")?;
    for chunk in keys.chunks(1000) {
        jobs::delete_keys(&mut conn, chunk).await?;
    }
    Ok(())
}

/// The session-level advisory lock that makes one worker the only one deleting. It
/// lives on a connection of its own, outside the pool: Postgres releases it the moment
/// that connection ends, so a worker that dies (even SIGKILL) hands over at once.
pub struct Lock {
    conn: PgConnection,
}

impl Lock {
    /// Waits until the lock is ours, trying every second; `None` when stopped first.
    pub async fn acquire(
        pg: &PgPool,
        key: i64,
        stop: &Stop,
        metrics: &WorkerMetrics,
    ) -> Option<Lock> {
        let mut waiting_logged = false;
        loop {
            if stop.is_stopped() {
                return None;
            }
            match Self::try_acquire(pg, key).await {
                Ok(Some(lock)) => {
                    metrics.lock_held.set(1);
                    tracing::info!(lock_key = key, "cleanup lock acquired: this worker deletes");
                    return Some(lock);
                }
                Ok(None) if !waiting_logged => {
                    tracing::info!(
                        lock_key = key,
                        "another worker holds the cleanup lock: waiting"
                    );
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot try the cleanup lock"),
            }
            if stop.sleep(Duration::from_secs(1)).await {
                return None;
            }
        }
    }

    async fn try_acquire(pg: &PgPool, key: i64) -> anyhow::Result<Option<Lock>> {
        let mut conn = pg
            .acquire()
            .await
            .context("connecting to Postgres")?
            .detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .context("pg_try_advisory_lock")?;
        if got {
            Ok(Some(Lock { conn }))
        } else {
            conn.close().await.ok();
            Ok(None)
        }
    }

    /// Whether the lock is still ours: its connection still answers (a lost connection
    /// means Postgres has released it).
    pub async fn held(&mut self) -> bool {
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
    }

    pub async fn release(self, metrics: &WorkerMetrics) {
        metrics.lock_held.set(0);
        // Closing the session releases the lock.
        self.conn.close().await.ok();
    }
}

/// Go on while not stopped, the lock is still ours and the window (if any) is open.
struct WhileLeader<'a> {
    stop: Stop,
    lock: &'a mut Lock,
    window: Option<Window>,
    lost: bool,
}

impl Keep for WhileLeader<'_> {
    async fn go_on(&mut self) -> bool {
        if self.stop.is_stopped() {
            return false;
        }
        if let Some(w) = self.window {
            if !w.contains(chrono::Utc::now().time()) {
                tracing::info!(window = %w, "off-peak window closed: pass paused until it opens");
                return false;
            }
        }
        if !self.lock.held().await {
            tracing::warn!("lost the cleanup lock (its connection ended): pass stopped");
            self.lost = true;
            return false;
        }
        true
    }
}

/// What the process runs besides its ops endpoints.
pub struct Schedule {
    pub mode: Mode,
    pub interval: Duration,
    pub window: Option<Window>,
    pub lock_key: i64,
}

impl Worker {
    /// Runs the mode until done (`once`, `dry-run`) or stopped (`run`).
    pub async fn run(&self, schedule: &Schedule, stop: Stop) -> anyhow::Result<()> {
        match schedule.mode {
            Mode::DryRun => {
                // Counting deletes nothing, so it needs no lock and may run beside the
                // real worker.
                let report = self
                    .pass(true, &mut UntilStopped(stop.clone()), &stop)
                    .await;
                match report.result {
                    Some(PassResult::Error) => {
                        anyhow::bail!("the dry run could not count every kind")
                    }
                    _ => Ok(()),
                }
            }
            Mode::Once => {
                let Some(mut lock) =
                    Lock::acquire(&self.pg, schedule.lock_key, &stop, &self.metrics).await
                else {
                    tracing::info!("stopped before the cleanup lock was acquired");
                    return Ok(());
                };
                let mut keep = WhileLeader {
                    stop: stop.clone(),
                    lock: &mut lock,
                    window: None,
                    lost: false,
                };
                let report = self.pass(false, &mut keep, &stop).await;
                let lost = keep.lost;
                lock.release(&self.metrics).await;
                match report.result {
                    Some(PassResult::Error) => {
                        anyhow::bail!("the cleanup pass failed (see the errors above)")
                    }
                    _ if lost => anyhow::bail!("the cleanup lock was lost during the pass"),
                    _ => Ok(()),
                }
            }
            Mode::Run => {
                self.run_forever(schedule, stop).await;
                Ok(())
            }
        }
    }

    async fn run_forever(&self, schedule: &Schedule, stop: Stop) {
        // One leader until it dies: the lock is kept between passes, so a standby
        // replica stays a standby (lock gauge 0) instead of alternating.
        while let Some(mut lock) =
            Lock::acquire(&self.pg, schedule.lock_key, &stop, &self.metrics).await
        {
            loop {
                if let Some(w) = schedule.window {
                    let wait = w.until_open(chrono::Utc::now().time());
                    if !wait.is_zero() {
                        tracing::info!(window = %w, wait_secs = wait.as_secs(), "waiting for the off-peak window");
                        // Wake at least every minute to show the lock is still alive.
                        if stop.sleep(wait.min(Duration::from_secs(60))).await {
                            break;
                        }
                        if !lock.held().await {
                            break;
                        }
                        continue;
                    }
                }
                let mut keep = WhileLeader {
                    stop: stop.clone(),
                    lock: &mut lock,
                    window: schedule.window,
                    lost: false,
                };
                self.pass(false, &mut keep, &stop).await;
                if keep.lost || stop.is_stopped() {
                    break;
                }
                if stop.sleep(schedule.interval).await {
                    break;
                }
            }
            lock.release(&self.metrics).await;
            if stop.is_stopped() {
                break;
            }
        }
        tracing::info!("cleanup worker stopped");
    }
}
