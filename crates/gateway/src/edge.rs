//! Browser and abuse concerns at the edge: CORS with an exact-origin allow-list, and
//! per-client rate limits.
//!
//! **Rate limits** are GCRA token buckets (one Lua call to Redis per request, so every
//! gateway replica shares them). Each request is charged to one client: its access
//! token, else its session token (both by hash), else its IP address. `register` and
//! `login` are charged to the IP address under a separate, stricter policy (password
//! guessing and account creation are where abuse goes). When Redis does not answer, the
//! gateway falls back to an in-process bucket of the same shape for a second, so a Redis
//! outage degrades the limit to per-replica instead of removing it or failing requests.
//! Answers carry the IETF draft's `RateLimit-Policy` and `RateLimit` fields; a refusal
//! is 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};
use deadpool_redis::redis::Script;
use prometheus::{IntCounterVec, Opts};
use svc_kit::metrics::Metrics;
use svc_kit::Problem;

use crate::AppState;

/// One bucket shape: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub name: &'static str,
    pub per_second: f64,
    pub burst: u32,
}

impl Policy {
    /// Microseconds between two requests at the sustained rate.
    fn interval_us(&self) -> f64 {
        1_000_000.0 / self.per_second.max(1e-6)
    }

    /// `RateLimit-Policy`: `burst` requests per `w` seconds (the time to refill).
    fn header(&self) -> String {
        let w = (f64::from(self.burst) / self.per_second.max(1e-6))
            .ceil()
            .max(1.0);
        format!("\"{}\";q={};w={}", self.name, self.burst, w)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    pub client: Policy,
    pub auth: Policy,
    /// Take the client address from the last `X-Forwarded-For` hop (behind a trusted
    /// ingress) instead of the TCP peer.
    pub trust_forwarded_for: bool,
}

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    /// Microseconds until a refused request would be allowed.
    pub retry_after_us: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
}

/// GCRA: the bucket is a "theoretical arrival time" (TAT). KEYS[1] the bucket; ARGV
/// now (µs), interval (µs), burst. Returns allowed, remaining, retry-after, reset.
const GCRA: &str = r"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + t
local allow_at = new_tat - burst * t
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / t), 0, math.ceil(new_tat - now)}
";

fn gcra_local(tat: Option<f64>, now: f64, p: &Policy) -> (Decision, Option<f64>) {
    let t = p.interval_us();
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + t;
    let allow_at = new_tat - f64::from(p.burst) * t;
    if now < allow_at {
        let d = Decision {
            allowed: false,
            remaining: 0,
            retry_after_us: (allow_at - now).ceil() as u64,
            reset_us: (tat - now).ceil() as u64,
        };
        return (d, None);
    }
    let d = Decision {
        allowed: true,
        remaining: ((now - allow_at) / t).floor() as u64,
        retry_after_us: 0,
        reset_us: (new_tat - now).ceil() as u64,
    };
    (d, Some(new_tat))
}

pub struct RateLimiter {
    pub settings: RateLimitSettings,
    redis: svc_kit::datastores::SharedRedis,
    prefix: String,
    timeout: Duration,
    script: Script,
    local: Mutex<HashMap<String, f64>>,
    /// Until when (µs since `epoch`) Redis is left alone after a failure.
    redis_down_until: AtomicU64,
    epoch: Instant,
    limited: IntCounterVec,
    fallback: IntCounterVec,
}

/// The in-process buckets are bounded: past this many clients, expired ones are purged.
const LOCAL_MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(
        settings: RateLimitSettings,
        redis: deadpool_redis::Pool,
        prefix: String,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Self {
        let valid = "static metric definition is valid";
        let this = Self {
            settings,
            redis: svc_kit::datastores::SharedRedis::new(redis),
            prefix,
            timeout,
            script: Script::new(GCRA),
            local: Mutex::new(HashMap::new()),
            redis_down_until: AtomicU64::new(0),
            epoch: Instant::now(),
            limited: metrics.register(
                &IntCounterVec::new(
                    Opts::new("gateway_rate_limited_total", "Requests refused with 429, by policy."),
                    &["policy"],
                )
                .expect(valid),
            ),
            fallback: metrics.register(
                &IntCounterVec::new(
                    Opts::new(
                        "gateway_rate_limit_fallback_total",
                        "Rate-limit checks decided in process because Redis did not answer, by policy.",
                    ),
                    &["policy"],
                )
                .expect(valid),
            ),
        };
        // Every series exists from the start, so rates and alerts see 0, not nothing.
        for p in [settings.client.name, settings.auth.name] {
            this.limited.with_label_values(&[p]);
            this.fallback.with_label_values(&[p]);
        }
        this
    }

    fn since_epoch_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub async fn check(&self, policy: &Policy, client: &str) -> Decision {
        let now_us = chrono::Utc::now().timestamp_micros() as f64;
        if self.since_epoch_us() >= self.redis_down_until.load(Ordering::Acquire) {
            match self.check_redis(policy, client, now_us).await {
                Ok(d) => return d,
                Err(e) => {
                    tracing::warn!(error = %e, "rate limiting falls back to in-process buckets");
                    let retry_at = self.since_epoch_us() + 1_000_000;
                    self.redis_down_until.store(retry_at, Ordering::Release);
                }
            }
        }
        self.fallback.with_label_values(&[policy.name]).inc();
        self.check_local(policy, client, now_us)
    }

    async fn check_redis(&self, p: &Policy, client: &str, now_us: f64) -> Result<Decision, String> {
        let key = format!("{}rl:{}:{}", self.prefix, p.name, client);
        let call = async {
            let mut conn = self.redis.conn().await.map_err(|e| e.to_string())?;
            let mut inv = self.script.key(key);
            inv.arg(format!("{now_us:.0}"))
                .arg(format!("{:.3}", p.interval_us()))
                .arg(p.burst);
            inv.invoke_async::<(i64, i64, i64, i64)>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r);
        if answer.is_err() {
            self.redis.discard();
        }
        let (allowed, remaining, retry, reset) = answer?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Decision {
            allowed: allowed == 1,
            remaining: u(remaining),
            retry_after_us: u(retry),
            reset_us: u(reset),
        })
    }

    fn check_local(&self, p: &Policy, client: &str, now_us: f64) -> Decision {
        let Ok(mut map) = self.local.lock() else {
            // A poisoned lock only means a panic elsewhere: let the request through.
            return Decision {
                allowed: true,
                remaining: 0,
                retry_after_us: 0,
                reset_us: 0,
            };
        };
        if map.len() > LOCAL_MAX_BUCKETS {
            map.retain(|_, tat| *tat > now_us);
        }
        let key = format!("{}:{}", p.name, client);
        let (d, new_tat) = gcra_local(map.get(&key).copied(), now_us, p);
        if let Some(t) = new_tat {
            map.insert(key, t);
        }
        d
    }
}

fn client_ip(req: &ServiceRequest, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for {
        let last = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        if let Some(ip) = last {
            return ip.to_string();
        }
    }
    req.peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string())
}

fn short_hash(secret: &str) -> String {
    domain::token::hash_token(secret)[..32].to_owned()
}

/// Which policy and client a request is charged to.
fn classify(req: &ServiceRequest, s: &RateLimitSettings) -> (Policy, String) {
    let path = req.path();
    if path == "/api/v1/auth/login" || path == "/api/v1/auth/register" {
        return (
            s.auth,
            format!("ip:{}", client_ip(req, s.trust_forwarded_for)),
        );
    }
    let headers = req.headers();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, t)| t.trim()))
    {
        return (s.client, format!("t:{}", short_hash(token)));
    }
    let session = headers
        .get(crate::caller::SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            req.cookie(crate::caller::SESSION_COOKIE)
                .map(|c| c.value().to_owned())
        });
    match session {
        Some(t) if !t.is_empty() => (s.client, format!("s:{}", short_hash(&t))),
        _ => (
            s.client,
            format!("ip:{}", client_ip(req, s.trust_forwarded_for)),
        ),
    }
}

fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000).max(1)
}

fn rate_headers(p: &Policy, d: &Decision) -> [(HeaderName, String); 2] {
    [
        (HeaderName::from_static("ratelimit-policy"), p.header()),
        (
            HeaderName::from_static("ratelimit"),
            format!(
                "\"{}\";r={};t={}",
                p.name,
                d.remaining,
                secs_ceil(d.reset_us)
            ),
        ),
    ]
}

/// The rate-limit middleware (public API routes only).
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limiter = req
        .app_data::<web::Data<AppState>>()
        .and_then(|st| st.limiter.clone());
    let Some(limiter) = limiter.filter(|_| req.path().starts_with("/api/")) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let (policy, client) = classify(&req, &limiter.settings);
    let d = limiter.check(&policy, &client).await;
    let headers = rate_headers(&policy, &d);
    if !d.allowed {
        limiter.limited.with_label_values(&[policy.name]).inc();
        let problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .detail("this client sent too many requests; retry after Retry-After seconds")
        .retry_after(secs_ceil(d.retry_after_us));
        let mut res: HttpResponse = problem.error_response();
        for (name, value) in headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                res.headers_mut().insert(name, v);
            }
        }
        return Ok(req.into_response(res));
    }
    let mut res = next.call(req).await?.map_into_boxed_body();
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
    Ok(res)
}

/// Response headers a browser script may read.
const EXPOSED: &str =
    "ETag, Retry-After, X-Request-Id, Idempotent-Replayed, RateLimit, RateLimit-Policy";
/// Request headers a browser script may send.
const ALLOWED_HEADERS: &str =
    "Content-Type, Authorization, X-Session-Token, If-Match, Idempotency-Key, X-Request-Id, traceparent, tracestate";

/// CORS for the origins on `ALLOWED_ORIGINS` (exact match; credentials allowed, so never
/// `*`). Preflights from an allowed origin are answered here (204); from any other
/// origin they get 403, and actual requests from it get no CORS headers (the browser
/// then withholds the response).
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase());
    let allowed = match (&origin, req.app_data::<web::Data<AppState>>()) {
        (Some(o), Some(st)) => st.cfg.allowed_origins.contains(o),
        _ => false,
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight && origin.is_some() {
        let mut res = if allowed {
            HttpResponse::NoContent()
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "GET, POST, PUT, DELETE",
                ))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .finish()
        } else {
            Problem::forbidden("this origin may not call the API from a browser").error_response()
        };
        add_cors(res.headers_mut(), origin.as_deref().filter(|_| allowed));
        return Ok(req.into_response(res));
    }
    let mut res = next.call(req).await?.map_into_boxed_body();
    add_cors(res.headers_mut(), origin.as_deref().filter(|_| allowed));
    Ok(res)
}

fn add_cors(h: &mut actix_web::http::header::HeaderMap, origin: Option<&str>) {
    // Responses differ by Origin, so caches must key on it, allowed or not.
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let p = Policy {
            name: "t",
            per_second: 10.0,
            burst: 5,
        };
        let mut tat = None;
        let now = 1_000_000_000.0;
        for i in 0..5 {
            let (d, t) = gcra_local(tat, now, &p);
            assert!(d.allowed, "request {i} of the burst");
            assert_eq!(d.remaining, 4 - i);
            tat = t;
        }
        let (d, t) = gcra_local(tat, now, &p);
        assert!(!d.allowed);
        assert!(t.is_none());
        assert_eq!(d.retry_after_us, 100_000, "one interval at 10/s");
        let (d, _) = gcra_local(tat, now + 100_000.0, &p);
        assert!(d.allowed, "after one interval, one more");
    }
}
