//! Sessions in Redis. One hash per session under `session:<sha256 of token>`, always
//! with a TTL: the TTL *is* the idle timeout, so an abandoned session disappears by
//! itself and nothing has to sweep it. The token itself is never stored.
//!
//! Every operation is one round trip: creation and the sliding touch are Lua scripts, so
//! a session can never exist without its TTL, and a touch reads the identity and slides
//! the expiry atomically.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use deadpool_redis::redis::{self, Script};
use deadpool_redis::Pool;
use domain::{CartId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("redis is unavailable")]
    Unavailable(String),
    #[error("a stored session breaks the model: {0}")]
    Corrupt(&'static str),
}

/// What a session says about its holder.
#[derive(Debug, Clone)]
pub struct Session {
    pub kind: Kind,
    pub cart_id: CartId,
    /// Hash of the guest's cart token (guests only).
    pub cart_token_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_active: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Guest,
    User(UserId),
}

/// A new session's record.
pub struct NewSession {
    pub kind: Kind,
    pub cart_id: CartId,
    pub cart_token_hash: Option<String>,
    pub idle: Duration,
    /// Absolute end of life, for user sessions.
    pub absolute: Option<Duration>,
}

/// Writes a session with its TTL; a user session also joins its user's index (a sorted
/// set scored by absolute expiry, itself with a TTL that covers its newest member).
/// KEYS: session, user index (unused for guests). ARGV: kind, user_id, cart_id,
/// cart_token_hash, now, abs_exp, idle_ms, ttl_ms, token_hash.
const CREATE: &str = r"
redis.call('HSET', KEYS[1],
  'kind', ARGV[1], 'user_id', ARGV[2], 'cart_id', ARGV[3], 'cart_token_hash', ARGV[4],
  'created_at', ARGV[5], 'last_active', ARGV[5], 'abs_exp', ARGV[6], 'idle_ms', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
if ARGV[1] == 'user' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[9])
  local keep = tonumber(ARGV[6]) - tonumber(ARGV[5])
  if redis.call('PTTL', KEYS[2]) < keep then redis.call('PEXPIRE', KEYS[2], keep) end
end
return 1
";

/// Rotation at login: the guest session ends and a new user session begins, atomically,
/// or nothing happens when the guest session is already gone. KEYS: old session, new
/// session, user index. ARGV as CREATE.
const BIND: &str = r"
if redis.call('HGET', KEYS[1], 'kind') ~= 'guest' then return false end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2],
  'kind', ARGV[1], 'user_id', ARGV[2], 'cart_id', ARGV[3], 'cart_token_hash', ARGV[4],
  'created_at', ARGV[5], 'last_active', ARGV[5], 'abs_exp', ARGV[6], 'idle_ms', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[9])
local keep = tonumber(ARGV[6]) - tonumber(ARGV[5])
if redis.call('PTTL', KEYS[3]) < keep then redis.call('PEXPIRE', KEYS[3], keep) end
return 1
";

/// Ends one session and takes it out of its user's index. KEYS: session. ARGV: key
/// prefix, token hash.
const REVOKE: &str = r"
local user = redis.call('HGET', KEYS[1], 'user_id')
local n = redis.call('DEL', KEYS[1])
if user and user ~= '' then
  redis.call('ZREM', ARGV[1] .. 'user-sessions:' .. user, ARGV[2])
end
return n
";

/// Ends every session of a user. KEYS: user index. ARGV: key prefix.
const REVOKE_ALL: &str = r"
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local n = 0
for _, h in ipairs(members) do
  n = n + redis.call('DEL', ARGV[1] .. 'session:' .. h)
end
redis.call('DEL', KEYS[1])
return n
";

/// Slides the TTL to `min(idle, absolute deadline - now)` and returns the identity, or
/// nil when the session is unknown or past its absolute deadline.
const TOUCH: &str = r"
local v = redis.call('HMGET', KEYS[1], 'kind', 'user_id', 'cart_id', 'cart_token_hash',
                     'created_at', 'abs_exp', 'idle_ms')
if not v[1] then return false end
local now = tonumber(ARGV[1])
local ttl = tonumber(v[7])
local abs = tonumber(v[6])
if abs > 0 then
  local left = abs - now
  if left <= 0 then
    redis.call('DEL', KEYS[1])
    return false
  end
  if left < ttl then ttl = left end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[1], 'last_active', ARGV[1])
return {v[1], v[2], v[3], v[4], v[5], tostring(ttl)}
";

#[derive(Clone)]
pub struct Store {
    redis: svc_kit::datastores::SharedRedis,
    prefix: String,
    timeout: Duration,
    create: std::sync::Arc<Script>,
    touch: std::sync::Arc<Script>,
    bind: std::sync::Arc<Script>,
    revoke: std::sync::Arc<Script>,
    revoke_all: std::sync::Arc<Script>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Store {
    pub fn new(pool: Pool, prefix: String, timeout: Duration) -> Self {
        Self {
            redis: svc_kit::datastores::SharedRedis::new(pool),
            prefix,
            timeout,
            create: std::sync::Arc::new(Script::new(CREATE)),
            touch: std::sync::Arc::new(Script::new(TOUCH)),
            bind: std::sync::Arc::new(Script::new(BIND)),
            revoke: std::sync::Arc::new(Script::new(REVOKE)),
            revoke_all: std::sync::Arc::new(Script::new(REVOKE_ALL)),
        }
    }

    pub fn key(&self, token_hash: &str) -> String {
        format!("{}session:{}", self.prefix, token_hash)
    }

    /// The index of a user's sessions. Note for Redis Cluster: the scripts touch a
    /// session and its user's index together, which needs both in one slot; there the
    /// index would move to a hash tag shared with the sessions' keys.
    pub fn user_index_key(&self, user_id: UserId) -> String {
        format!("{}user-sessions:{}", self.prefix, user_id)
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, SessionError> {
        self.redis
            .conn()
            .await
            .map_err(|e| SessionError::Unavailable(e.to_string()))
    }

    /// Runs one Redis call with the configured deadline: a stalled Redis must turn into
    /// a quick 503, not a request that hangs.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SessionError> {
        let span = svc_kit::telemetry::redis_span();
        match tokio::time::timeout(self.timeout, tracing::Instrument::instrument(fut, span)).await {
            Ok(Ok(v)) => {
                svc_kit::metrics::redis_call("ok");
                Ok(v)
            }
            Ok(Err(e)) => {
                svc_kit::metrics::redis_call("error");
                self.redis.discard();
                Err(SessionError::Unavailable(e.to_string()))
            }
            Err(_) => {
                svc_kit::metrics::redis_call("timeout");
                self.redis.discard();
                Err(SessionError::Unavailable("timed out".to_owned()))
            }
        }
    }

    pub async fn create(&self, token_hash: &str, s: &NewSession) -> Result<Session, SessionError> {
        let w = Write::new(s);
        let mut conn = self.conn().await?;
        let user = match s.kind {
            Kind::User(u) => self.user_index_key(u),
            Kind::Guest => self.key("unused-index"),
        };
        let mut inv = self.create.key(self.key(token_hash));
        inv.key(user);
        w.args(&mut inv, s, token_hash);
        self.bounded(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(w.session(s))
    }

    /// Ends the guest session `old_hash` and starts the user session `new_hash` in its
    /// place, in one step. `None` when the guest session is already gone (expired,
    /// revoked, or rotated by an earlier attempt of the same login).
    pub async fn bind(
        &self,
        old_hash: &str,
        new_hash: &str,
        s: &NewSession,
    ) -> Result<Option<Session>, SessionError> {
        let Kind::User(user) = s.kind else {
            return Err(SessionError::Corrupt("bind needs a user session"));
        };
        let w = Write::new(s);
        let mut conn = self.conn().await?;
        let mut inv = self.bind.key(self.key(old_hash));
        inv.key(self.key(new_hash)).key(self.user_index_key(user));
        w.args(&mut inv, s, new_hash);
        let done: Option<i64> = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(done.map(|_| w.session(s)))
    }

    /// Ends every session of `user`; how many there were.
    pub async fn revoke_all(&self, user: UserId) -> Result<u64, SessionError> {
        let mut conn = self.conn().await?;
        let mut inv = self.revoke_all.key(self.user_index_key(user));
        inv.arg(&self.prefix);
        self.bounded(inv.invoke_async::<u64>(&mut conn)).await
    }

    /// The live session for this token hash, its idle clock restarted; `None` when it
    /// has expired or never existed.
    pub async fn touch(&self, token_hash: &str) -> Result<Option<Session>, SessionError> {
        let now = now_ms();
        let mut conn = self.conn().await?;
        let mut inv = self.touch.key(self.key(token_hash));
        inv.arg(now);
        let reply: Option<Vec<String>> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let Some(v) = reply else { return Ok(None) };
        let [kind, user_id, cart_id, cart_token_hash, created_at, ttl] = v.as_slice() else {
            return Err(SessionError::Corrupt("touch reply shape"));
        };
        let kind = match kind.as_str() {
            "guest" => Kind::Guest,
            "user" => Kind::User(
                user_id
                    .parse()
                    .map_err(|_| SessionError::Corrupt("user_id"))?,
            ),
            _ => return Err(SessionError::Corrupt("kind")),
        };
        let ttl: i64 = ttl.parse().map_err(|_| SessionError::Corrupt("ttl"))?;
        Ok(Some(Session {
            kind,
            cart_id: cart_id
                .parse()
                .map_err(|_| SessionError::Corrupt("cart_id"))?,
            cart_token_hash: Some(cart_token_hash.clone()).filter(|h| !h.is_empty()),
            created_at: at_ms(
                created_at
                    .parse()
                    .map_err(|_| SessionError::Corrupt("created_at"))?,
            ),
            last_active: at_ms(now),
            expires_at: at_ms(now + ttl),
        }))
    }

    /// Ends a session. `true` if it existed.
    pub async fn revoke(&self, token_hash: &str) -> Result<bool, SessionError> {
        let mut conn = self.conn().await?;
        let mut inv = self.revoke.key(self.key(token_hash));
        inv.arg(&self.prefix).arg(token_hash);
        let removed: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(removed > 0)
    }
}

/// The timestamps and TTL of one session write.
struct Write {
    now: i64,
    idle_ms: i64,
    abs_exp: i64,
    ttl: i64,
}

impl Write {
    fn new(s: &NewSession) -> Self {
        let now = now_ms();
        let idle_ms = i64::try_from(s.idle.as_millis()).unwrap_or(i64::MAX);
        let abs_exp = s.absolute.map_or(0, |a| {
            now.saturating_add(i64::try_from(a.as_millis()).unwrap_or(i64::MAX))
        });
        let ttl = if abs_exp > 0 {
            idle_ms.min(abs_exp - now)
        } else {
            idle_ms
        };
        Self {
            now,
            idle_ms,
            abs_exp,
            ttl,
        }
    }

    fn args(&self, inv: &mut redis::ScriptInvocation<'_>, s: &NewSession, token_hash: &str) {
        let (kind, user_id) = match s.kind {
            Kind::Guest => ("guest", String::new()),
            Kind::User(u) => ("user", u.to_string()),
        };
        inv.arg(kind)
            .arg(user_id)
            .arg(s.cart_id.to_string())
            .arg(s.cart_token_hash.as_deref().unwrap_or(""))
            .arg(self.now)
            .arg(self.abs_exp)
            .arg(self.idle_ms)
            .arg(self.ttl)
            .arg(token_hash);
    }

    fn session(&self, s: &NewSession) -> Session {
        Session {
            kind: s.kind,
            cart_id: s.cart_id,
            cart_token_hash: s.cart_token_hash.clone(),
            created_at: at_ms(self.now),
            last_active: at_ms(self.now),
            expires_at: at_ms(self.now + self.ttl),
        }
    }
}
