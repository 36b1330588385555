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

const CREATE: &str = r"
redis.call('HSET', KEYS[1],
  'kind', ARGV[1], 'user_id', ARGV[2], 'cart_id', ARGV[3], 'cart_token_hash', ARGV[4],
  'created_at', ARGV[5], 'last_active', ARGV[5], 'abs_exp', ARGV[6], 'idle_ms', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return 1
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
    pool: Pool,
    prefix: String,
    timeout: Duration,
    create: std::sync::Arc<Script>,
    touch: std::sync::Arc<Script>,
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
            pool,
            prefix,
            timeout,
            create: std::sync::Arc::new(Script::new(CREATE)),
            touch: std::sync::Arc::new(Script::new(TOUCH)),
        }
    }

    pub fn key(&self, token_hash: &str) -> String {
        format!("{}session:{}", self.prefix, token_hash)
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, SessionError> {
        self.pool
            .get()
            .await
            .map_err(|e| SessionError::Unavailable(e.to_string()))
    }

    /// Runs one Redis call with the configured deadline: a stalled Redis must turn into
    /// a quick 503, not a request that hangs.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SessionError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(SessionError::Unavailable(e.to_string())),
            Err(_) => Err(SessionError::Unavailable("timed out".to_owned())),
        }
    }

    pub async fn create(&self, token_hash: &str, s: &NewSession) -> Result<Session, SessionError> {
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
        let (kind, user_id) = match s.kind {
            Kind::Guest => ("guest", String::new()),
            Kind::User(u) => ("user", u.to_string()),
        };
        let mut conn = self.conn().await?;
        let mut inv = self.create.key(self.key(token_hash));
        inv.arg(kind)
            .arg(user_id)
            .arg(s.cart_id.to_string())
            .arg(s.cart_token_hash.as_deref().unwrap_or(""))
            .arg(now)
            .arg(abs_exp)
            .arg(idle_ms)
            .arg(ttl);
        self.bounded(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(Session {
            kind: s.kind,
            cart_id: s.cart_id,
            cart_token_hash: s.cart_token_hash.clone(),
            created_at: at_ms(now),
            last_active: at_ms(now),
            expires_at: at_ms(now + ttl),
        })
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
        let removed: i64 = self
            .bounded(
                redis::cmd("DEL")
                    .arg(self.key(token_hash))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(removed > 0)
    }
}
