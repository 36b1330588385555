//! Cache-aside for cart reads in Redis; Postgres stays the source of truth.
//!
//! Each entry is a hash `cart:<cart_id>` holding the cart's version (`v`), its JSON
//! representation (`b`), served as-is on a hit, and the user who owns it (`u`, empty for
//! a guest cart).
//!
//! A guest names its cart by id. A user names only themselves: their cart is "the one
//! active cart of this user" in Postgres. The gateway also forwards the cart id of the
//! user's session, the cart they were given at login, and a user's read is served from
//! that cart's entry when the entry says it belongs to this user. That is the same
//! cart: a user's active cart is replaced only when the retention job deletes it (then
//! the entry is deleted too) or never existed, and an entry's owner changes only from
//! guest to user (adoption at login, which writes `u` with the new version). When
//! Postgres answers a user with another cart than the session's, the session's entry is
//! deleted, so a stale one cannot keep answering. Entries are written only through a Lua
//! compare-and-set that refuses to replace a newer version with an older one, so a slow
//! reader that loaded version 5 can never overwrite the version 6 a writer just cached:
//! the cache never holds an older version than the last one written to it, and a client
//! reads its own writes.
//!
//! Redis is optional for correctness. Every call has a short deadline, errors fall back
//! to Postgres, and a circuit breaker stops calling a failing Redis for a cooldown (one
//! log line and a gauge change per transition), then lets one probe through. A cart
//! whose snapshot could not be refreshed after a commit (Redis failing, or the breaker
//! open) is remembered as *suspect*: its reads bypass the cache until its entry has been
//! deleted or rewritten, so a Redis outage cannot serve a stale cart to the client that
//! changed it. (The suspect set is per process: another replica may still read an entry
//! it did not know was stale until the entry's TTL ends. Keep `CART_CACHE_TTL_SECS`
//! short when replicas are many and Redis partitions are likely.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use deadpool_redis::redis::{self, Script};
use deadpool_redis::Pool;
use domain::{CartId, UserId};
use prometheus::{IntCounterVec, IntGauge, Opts};
use svc_kit::metrics::Metrics;

const PUT_IF_NEWER: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'b', ARGV[2], 'u', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// The raw `HMGET v b u` reply.
type Entry = (Option<i64>, Option<Vec<u8>>, Option<String>);

/// A cached cart: its version, the JSON body to send, and its owner when a user owns it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: i64,
    pub body: Bytes,
    pub user: Option<UserId>,
}

#[derive(Clone)]
pub struct Cache {
    redis: svc_kit::datastores::SharedRedis,
    prefix: String,
    ttl_secs: u64,
    timeout: Duration,
    put: Arc<Script>,
    suspect: Arc<Mutex<HashSet<CartId>>>,
    breaker: Arc<Mutex<Breaker>>,
    cooldown: Duration,
    results: IntCounterVec,
    breaker_open: IntGauge,
}

/// Consecutive failures that open the breaker.
const FAILURES_TO_OPEN: u32 = 2;

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    /// While set and in the future, Redis is not called at all.
    open_until: Option<Instant>,
    /// After the cooldown, one call is let through to probe Redis.
    probing: bool,
}

impl Cache {
    pub fn new(
        pool: Pool,
        prefix: String,
        ttl_secs: u64,
        timeout: Duration,
        cooldown: Duration,
        metrics: &Metrics,
    ) -> Self {
        let results = metrics.register(
            &IntCounterVec::new(
                Opts::new(
                    "cart_cache_requests_total",
                    "Cart cache operations by kind (get, put, delete) and result (hit, miss, stored, stale, error).",
                ),
                &["op", "result"],
            )
            .expect("static metric definition is valid"),
        );
        let breaker_open = metrics.register(
            &IntGauge::new(
                "cart_cache_breaker_open",
                "1 while the cart cache's circuit breaker keeps Redis out of the request path.",
            )
            .expect("static metric definition is valid"),
        );
        Self {
            redis: svc_kit::datastores::SharedRedis::new(pool),
            prefix,
            ttl_secs,
            timeout,
            put: Arc::new(Script::new(PUT_IF_NEWER)),
            suspect: Arc::new(Mutex::new(HashSet::new())),
            breaker: Arc::new(Mutex::new(Breaker::default())),
            cooldown,
            results,
            breaker_open,
        }
    }

    /// Whether Redis may be called now.
    fn allow(&self) -> bool {
        let Ok(mut b) = self.breaker.lock() else {
            return false;
        };
        match b.open_until {
            None => true,
            Some(until) if Instant::now() < until => false,
            Some(_) if b.probing => false,
            Some(_) => {
                b.probing = true;
                true
            }
        }
    }

    fn succeeded(&self) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        if b.open_until.is_some() {
            tracing::info!("redis answers again: cart cache back in use");
            self.breaker_open.set(0);
        }
        *b = Breaker::default();
    }

    fn failed(&self, error: &str) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        b.failures += 1;
        if b.probing || b.failures >= FAILURES_TO_OPEN {
            if b.open_until.is_none() {
                tracing::warn!(
                    %error,
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "redis failing: cart cache bypassed, carts served from Postgres"
                );
                self.breaker_open.set(1);
            }
            b.open_until = Some(Instant::now() + self.cooldown);
            b.probing = false;
        }
    }

    pub fn key(&self, cart_id: CartId) -> String {
        format!("{}cart:{}", self.prefix, cart_id)
    }

    fn count(&self, op: &str, result: &str) {
        self.results.with_label_values(&[op, result]).inc();
    }

    fn is_suspect(&self, cart_id: CartId) -> bool {
        self.suspect
            .lock()
            .map(|s| s.contains(&cart_id))
            .unwrap_or(true)
    }

    fn set_suspect(&self, cart_id: CartId, suspect: bool) {
        if let Ok(mut s) = self.suspect.lock() {
            if suspect {
                s.insert(cart_id);
            } else {
                s.remove(&cart_id);
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<T, String> {
        let work = async {
            let mut conn = self.redis.conn().await.map_err(|e| e.to_string())?;
            let mut pipe = redis::pipe();
            f(&mut pipe);
            pipe.query_async::<T>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        self.guarded(work).await
    }

    /// Runs one bounded Redis call through the breaker.
    async fn guarded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        if !self.allow() {
            return Err("circuit open".to_owned());
        }
        let span = svc_kit::telemetry::redis_span();
        let result =
            tokio::time::timeout(self.timeout, tracing::Instrument::instrument(work, span))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
        svc_kit::metrics::redis_call(match &result {
            Ok(_) => "ok",
            Err(e) if e == "timed out" => "timeout",
            Err(_) => "error",
        });
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => {
                self.redis.discard();
                self.failed(e);
            }
        }
        result
    }

    /// The cached cart, if present and trustworthy. Any failure is a miss.
    pub async fn get(&self, cart_id: CartId) -> Option<Snapshot> {
        self.lookup(cart_id, None).await
    }

    /// The cached cart `cart_id` if it is `user`'s: an entry of another owner (or of no
    /// recorded owner) is a miss.
    pub async fn get_for_user(&self, cart_id: CartId, user: UserId) -> Option<Snapshot> {
        self.lookup(cart_id, Some(user)).await
    }

    async fn lookup(&self, cart_id: CartId, user: Option<UserId>) -> Option<Snapshot> {
        if self.is_suspect(cart_id) {
            // Its entry may be older than Postgres: delete it (which clears the mark) and
            // read Postgres this time.
            self.count("get", "bypass");
            self.delete(cart_id).await;
            return None;
        }
        let key = self.key(cart_id);
        let reply: Result<(Entry,), String> = self
            .run(|p| {
                p.cmd("HMGET").arg(&key).arg("v").arg("b").arg("u");
            })
            .await;
        match reply {
            Ok(((Some(version), Some(body), owner),)) => {
                let owner = owner
                    .filter(|u| !u.is_empty())
                    .and_then(|u| u.parse::<UserId>().ok());
                if user.is_some() && owner != user {
                    self.count("get", "miss");
                    return None;
                }
                self.count("get", "hit");
                Some(Snapshot {
                    version,
                    body: Bytes::from(body),
                    user: owner,
                })
            }
            Ok(_) => {
                self.count("get", "miss");
                None
            }
            Err(e) => {
                self.count("get", "error");
                tracing::debug!(error = %e, "cart cache read failed; reading Postgres");
                None
            }
        }
    }

    /// Stores `snapshot` unless the cache already holds that version or a newer one.
    /// After a commit (`after_write`), a failure marks the cart suspect and tries to
    /// delete the old entry.
    pub async fn put(&self, cart_id: CartId, snapshot: &Snapshot, after_write: bool) {
        let key = self.key(cart_id);
        let work = async {
            let mut conn = self.redis.conn().await.map_err(|e| e.to_string())?;
            let mut inv = self.put.key(&key);
            inv.arg(snapshot.version)
                .arg(snapshot.body.as_ref())
                .arg(self.ttl_secs)
                .arg(snapshot.user.map(|u| u.to_string()).unwrap_or_default());
            inv.invoke_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        let result = self.guarded(work).await;
        match result {
            Ok(stored) => {
                self.count("put", if stored == 1 { "stored" } else { "stale" });
                if after_write {
                    self.set_suspect(cart_id, false);
                }
            }
            Err(e) => {
                self.count("put", "error");
                tracing::debug!(error = %e, "cart cache write failed");
                if after_write {
                    self.set_suspect(cart_id, true);
                    self.delete(cart_id).await;
                }
            }
        }
    }

    /// Removes the entry (a suspect cart becomes trustworthy again once this succeeds).
    pub async fn delete(&self, cart_id: CartId) {
        let key = self.key(cart_id);
        let r: Result<(i64,), String> = self
            .run(|p| {
                p.cmd("DEL").arg(&key);
            })
            .await;
        match r {
            Ok(_) => {
                self.count("delete", "ok");
                self.set_suspect(cart_id, false);
            }
            Err(e) => {
                self.count("delete", "error");
                tracing::debug!(error = %e, "cart cache delete failed");
            }
        }
    }
}
