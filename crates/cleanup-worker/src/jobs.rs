//! What is deleted, and the SQL and Redis commands that delete it safely.
//!
//! Every Postgres kind is removed in batches of at most `n` rows picked with
//! `FOR UPDATE SKIP LOCKED LIMIT n`: a row another transaction is changing is skipped,
//! never waited on, so the worker cannot add latency to a shopper's request. The
//! expiry predicate is evaluated again by the `DELETE` itself, so a row changed after it
//! was selected (its clock refreshed) is kept.

use std::time::Duration;

use deadpool_redis::redis;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Retention;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    GuestCarts,
    UserCarts,
    MergedCarts,
    IdempotencyKeys,
    AppliedOps,
    RefreshTokens,
    LoginThrottle,
    SessionIndexMembers,
}

impl Kind {
    /// In pass order: carts first (the bulk, and what the cache entries follow).
    pub const ALL: [Kind; 8] = [
        Kind::GuestCarts,
        Kind::UserCarts,
        Kind::MergedCarts,
        Kind::IdempotencyKeys,
        Kind::AppliedOps,
        Kind::RefreshTokens,
        Kind::LoginThrottle,
        Kind::SessionIndexMembers,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::GuestCarts => "guest_carts",
            Kind::UserCarts => "user_carts",
            Kind::MergedCarts => "merged_carts",
            Kind::IdempotencyKeys => "idempotency_keys",
            Kind::AppliedOps => "applied_ops",
            Kind::RefreshTokens => "refresh_tokens",
            Kind::LoginThrottle => "login_throttle",
            Kind::SessionIndexMembers => "session_index_members",
        }
    }

    pub fn is_cart(self) -> bool {
        matches!(self, Kind::GuestCarts | Kind::UserCarts | Kind::MergedCarts)
    }

    /// The Postgres table and expiry rule of a kind; `None` for the Redis one.
    pub fn table(self, retention: &Retention) -> Option<Table> {
        const DAY: Duration = Duration::from_secs(86_400);
        let t = |name, key, clock, keep: Duration, extra| Table {
            name,
            key,
            clock,
            keep_secs: keep.as_secs_f64(),
            extra,
        };
        Some(match self {
            Kind::GuestCarts => t(
                "cart.carts",
                "cart_id",
                "updated_at",
                retention.guest_cart,
                "user_id IS NULL AND status = 'active'",
            ),
            Kind::UserCarts => t(
                "cart.carts",
                "cart_id",
                "updated_at",
                retention.user_cart,
                "user_id IS NOT NULL AND status = 'active'",
            ),
            // Merged into an account at login (or closed): nothing reads them once the
            // guest session that could still point at them is gone.
            Kind::MergedCarts => t(
                "cart.carts",
                "cart_id",
                "updated_at",
                retention.merged_cart,
                "status IN ('merged', 'closed')",
            ),
            Kind::IdempotencyKeys => t(
                "cart.idempotency_keys",
                "cart_id, idempotency_key",
                "created_at",
                retention.idempotency,
                "true",
            ),
            Kind::AppliedOps => t(
                "cart.applied_ops",
                "cart_id, op_id",
                "applied_at",
                retention.applied_ops,
                "true",
            ),
            Kind::RefreshTokens => t(
                "auth.refresh_tokens",
                "token_hash",
                "expires_at",
                Duration::ZERO,
                "true",
            ),
            // A row still blocking logins is the throttle doing its job: kept.
            Kind::LoginThrottle => t(
                "auth.login_throttle",
                "email",
                "updated_at",
                DAY,
                "(blocked_until IS NULL OR blocked_until < now())",
            ),
            Kind::SessionIndexMembers => return None,
        })
    }
}

/// One Postgres kind: rows of `name` whose `clock` is older than `keep_secs` and that
/// match `extra` have expired. Every string is a constant of this file.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub key: &'static str,
    pub clock: &'static str,
    pub keep_secs: f64,
    pub extra: &'static str,
}

impl Table {
    /// The expiry predicate; `$1` is `keep_secs`. Its columns are unqualified: in a
    /// `DELETE … WHERE key IN (subquery) AND <predicate>` they name the row being deleted,
    /// inside the subquery the row being picked.
    fn expired(&self) -> String {
        format!(
            "{} < now() - make_interval(secs => $1) AND {}",
            self.clock, self.extra
        )
    }

    /// Whether the table exists (its schema's owner may not have migrated it yet).
    pub async fn exists(&self, pg: &PgPool) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
            .bind(self.name)
            .fetch_one(pg)
            .await
    }

    /// How many rows have expired, and how far past its deadline the oldest is.
    pub async fn count_expired(&self, pg: &PgPool) -> Result<(i64, f64), sqlx::Error> {
        let sql = format!(
            "SELECT count(*), coalesce(extract(epoch FROM now() - make_interval(secs => $1) - min({clock}))::float8, 0)
               FROM {name} WHERE {pred}",
            clock = self.clock,
            name = self.name,
            pred = self.expired(),
        );
        sqlx::query_as(&sql)
            .bind(self.keep_secs)
            .fetch_one(pg)
            .await
    }

    /// How far past its deadline the oldest expired row is (0 when none).
    pub async fn oldest_expired_age(&self, pg: &PgPool) -> Result<f64, sqlx::Error> {
        let sql = format!(
            "SELECT coalesce(extract(epoch FROM now() - make_interval(secs => $1) - min({clock}))::float8, 0)
               FROM {name} WHERE {pred}",
            clock = self.clock,
            name = self.name,
            pred = self.expired(),
        );
        sqlx::query_scalar(&sql)
            .bind(self.keep_secs)
            .fetch_one(pg)
            .await
    }

    /// Deletes at most `limit` expired rows in one statement; the number deleted.
    pub async fn delete_batch(&self, pg: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "DELETE FROM {name}
              WHERE ({key}) IN (SELECT {key} FROM {name}
                                   WHERE {pred}
                                   ORDER BY {clock}
                                   LIMIT $2
                                   FOR UPDATE SKIP LOCKED)
                AND {pred}",
            name = self.name,
            key = self.key,
            clock = self.clock,
            pred = self.expired(),
        );
        Ok(sqlx::query(&sql)
            .bind(self.keep_secs)
            .bind(limit)
            .execute(pg)
            .await?
            .rows_affected())
    }
}

/// A cart picked for deletion and how long past its deadline it is.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub cart_id: Uuid,
    pub overdue_secs: f64,
}

/// Carts go in two steps so a cart touched in between is provably kept: pick the oldest
/// expired ones (a plain index read that locks nothing), then delete those that, locked
/// now, are *still* expired.
impl Table {
    pub async fn select_expired_carts(
        &self,
        pg: &PgPool,
        limit: i64,
    ) -> Result<Vec<Candidate>, sqlx::Error> {
        let sql = format!(
            "SELECT cart_id, extract(epoch FROM now() - make_interval(secs => $1) - updated_at)::float8
               FROM cart.carts WHERE {pred}
              ORDER BY updated_at
              LIMIT $2",
            pred = self.expired(),
        );
        let rows: Vec<(Uuid, f64)> = sqlx::query_as(&sql)
            .bind(self.keep_secs)
            .bind(limit)
            .fetch_all(pg)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(cart_id, overdue_secs)| Candidate {
                cart_id,
                overdue_secs,
            })
            .collect())
    }

    /// Deletes those of `ids` that are still expired, skipping any another transaction
    /// holds (a shopper's change in flight); their lines and line changes go with them
    /// (ON DELETE CASCADE). Returns the ids deleted.
    pub async fn delete_carts(&self, pg: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
        let sql = format!(
            "DELETE FROM cart.carts
              WHERE cart_id IN (SELECT cart_id FROM cart.carts
                                   WHERE cart_id = ANY($2) AND {pred}
                                   LIMIT $3
                                   FOR UPDATE SKIP LOCKED)
                AND {pred}
          RETURNING cart_id",
            pred = self.expired(),
        );
        sqlx::query_scalar(&sql)
            .bind(self.keep_secs)
            .bind(ids)
            .bind(i64::try_from(ids.len()).unwrap_or(i64::MAX))
            .fetch_all(pg)
            .await
    }
}

/// The cart cache entry of a cart (cart-svc's `cache.rs`).
pub fn cart_cache_key(prefix: &str, cart_id: Uuid) -> String {
    format!("{prefix}cart:{cart_id}")
}

/// Removes the dangling members of one per-user session index in one atomic step: the
/// member's absolute expiry (its score, unix ms) has passed, or its session hash is
/// gone. Redis deletes a sorted set whose last member is removed, so an index left empty
/// disappears with it. ARGV: now (ms), the session key prefix, "1" to only count.
/// Returns {dangling members, the oldest past score or -1}.
const CLEAN_INDEX: &str = r"
local now = tonumber(ARGV[1])
local found, oldest = 0, -1
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local member, score = members[i], tonumber(members[i + 1])
  if score < now or redis.call('EXISTS', ARGV[2] .. member) == 0 then
    found = found + 1
    if score < now and (oldest < 0 or score < oldest) then oldest = score end
    if ARGV[3] ~= '1' then redis.call('ZREM', KEYS[1], member) end
  end
end
return {found, oldest}
";

/// One page of the session-index walk: the next SCAN cursor (0 when done), how many
/// dangling members were found (and removed unless `dry_run`), and the oldest expiry
/// among them (unix ms).
pub async fn clean_session_index_page(
    conn: &mut deadpool_redis::Connection,
    prefix: &str,
    cursor: u64,
    now_ms: i64,
    dry_run: bool,
) -> Result<(u64, u64, Option<i64>), redis::RedisError> {
    // SCAN, never KEYS: it walks the keyspace a page at a time without blocking Redis.
    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(format!("{prefix}user-sessions:*"))
        .arg("COUNT")
        .arg(200)
        .query_async(conn)
        .await?;
    if keys.is_empty() {
        return Ok((next, 0, None));
    }
    let mut pipe = redis::pipe();
    let session_prefix = format!("{prefix}session:");
    for key in &keys {
        pipe.cmd("EVAL")
            .arg(CLEAN_INDEX)
            .arg(1)
            .arg(key)
            .arg(now_ms)
            .arg(&session_prefix)
            .arg(if dry_run { "1" } else { "0" });
    }
    let replies: Vec<(u64, i64)> = pipe.query_async(conn).await?;
    let found = replies.iter().map(|(n, _)| n).sum();
    let oldest = replies.iter().map(|(_, o)| *o).filter(|o| *o >= 0).min();
    Ok((next, found, oldest))
}

/// Deletes cache entries; the number of keys that existed.
pub async fn delete_keys(
    conn: &mut deadpool_redis::Connection,
    keys: &[String],
) -> Result<u64, redis::RedisError> {
    if keys.is_empty() {
        return Ok(0);
    }
    redis::cmd("DEL").arg(keys).query_async(conn).await
}
