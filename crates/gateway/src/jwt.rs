//! Access-token verification at the edge. The gateway checks JWTs itself against the
//! public keys auth-svc publishes (JWKS), fetched and cached: no call to auth-svc per
//! request. The algorithm is pinned to EdDSA (so `alg: none`, HS256 "signed" with the
//! public key, or any other algorithm is refused before a key is even chosen), and
//! `iss`, `aud` and `exp` are checked. An unknown `kid` triggers a refetch (a key
//! rotation), at most once per configured interval so forged `kid`s cannot turn every
//! request into a call to auth-svc.
//!
//! A signature check costs ~600,000 instructions (Ed25519), more than the rest of a
//! proxied request, and a client presents the same token on every request for its
//! lifetime. So a token that passed is remembered (by its SHA-256) with its claims, in
//! the key set that verified it: a repeat costs a hash and a look-up, and only `exp`
//! (the one check whose answer changes with time) is checked again. Replacing the key
//! set (a refetch or a periodic refresh) forgets every remembered token, so a key
//! removed from the JWKS stops being accepted exactly as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use svc_kit::internal::Peer;
use svc_kit::Problem;

#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// The least time between two JWKS fetches caused by unknown `kid`s.
    pub refetch_interval: Duration,
    /// Keys are refetched when older than this, so a removed key stops being accepted.
    pub max_age: Duration,
}

/// What a token carries beyond [`Claims`] that decides how long it may be remembered.
#[derive(Deserialize)]
struct Checked {
    #[serde(flatten)]
    claims: Claims,
    /// Required and validated by `jsonwebtoken`; kept as a number of any JSON shape so
    /// this struct never refuses a token the library accepts.
    #[serde(default)]
    exp: Option<serde_json::Number>,
}

/// The most verified tokens one key set remembers: one per active client is plenty, and
/// only tokens with a valid signature get in, so the bound is against memory, not abuse.
const MAX_REMEMBERED: usize = 20_000;

/// The keys of one JWKS fetch, and the tokens verified with them (SHA-256 of the
/// token → its claims and `exp`).
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    verified: Mutex<HashMap<[u8; 32], (Claims, u64)>>,
}

impl KeySet {
    fn new(keys: HashMap<String, DecodingKey>) -> Self {
        Self {
            keys,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// A token verified before, unless it has expired since: the same test as
    /// `jsonwebtoken`'s (`exp < now - leeway` is expired).
    fn recall(&self, fingerprint: &[u8; 32], now: u64, leeway: u64) -> Option<Claims> {
        let verified = self.verified.lock().ok()?;
        let (claims, exp) = verified.get(fingerprint)?;
        (*exp >= now.saturating_sub(leeway)).then(|| claims.clone())
    }

    fn remember(&self, fingerprint: [u8; 32], claims: &Claims, exp: u64, now: u64, leeway: u64) {
        let Ok(mut verified) = self.verified.lock() else {
            return;
        };
        if verified.len() >= MAX_REMEMBERED {
            verified.retain(|_, (_, exp)| *exp >= now.saturating_sub(leeway));
            if verified.len() >= MAX_REMEMBERED {
                verified.clear();
            }
        }
        verified.insert(fingerprint, (claims.clone(), exp));
    }
}

pub struct Verifier {
    auth: Peer,
    settings: JwtSettings,
    validation: Validation,
    keys: RwLock<Arc<KeySet>>,
    /// When the keys were last fetched (single flight: held while fetching).
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

fn refused() -> Problem {
    Problem::unauthorized("the access token is invalid or expired")
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x: Option<String>,
}

impl Verifier {
    pub fn new(auth: Peer, settings: JwtSettings) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Self {
            auth,
            settings,
            validation,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetched: tokio::sync::Mutex::new(None),
        }
    }

    /// The claims of a valid access token, or 401. 503 when no key can be had because
    /// auth-svc is unreachable and nothing is cached.
    pub async fn verify(&self, token: &str, request_id: Option<&str>) -> Result<Claims, Problem> {
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.validation.leeway;
        let set = self.key_set();
        if let Some(claims) = set
            .as_ref()
            .and_then(|s| s.recall(&fingerprint, now, leeway))
        {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused())?;
        if header.alg != Algorithm::EdDSA {
            return Err(refused());
        }
        let kid = header.kid.ok_or_else(refused)?;
        let (set, key) = match set.and_then(|s| s.keys.get(&kid).cloned().map(|k| (s, k))) {
            Some(found) => found,
            None => self
                .refetch_for(&kid, request_id)
                .await?
                .ok_or_else(refused)?,
        };
        let data = jsonwebtoken::decode::<Checked>(token, &key, &self.validation)
            .map_err(|_| refused())?;
        let Checked { claims: c, exp } = data.claims;
        let sid_ok = c.sid.len() == 64 && c.sid.bytes().all(|b| b.is_ascii_hexdigit());
        if !sid_ok || c.sub.parse::<uuid::Uuid>().is_err() {
            return Err(refused());
        }
        // An `exp` that is not a whole number of seconds is rare enough to re-verify.
        if let Some(exp) = exp.and_then(|e| e.as_u64()) {
            set.remember(fingerprint, &c, exp, now, leeway);
        }
        Ok(c)
    }

    fn key_set(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().map(|k| Arc::clone(&k))
    }

    fn install(&self, keys: HashMap<String, DecodingKey>) -> Arc<KeySet> {
        let set = Arc::new(KeySet::new(keys));
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::clone(&set);
        }
        set
    }

    /// Fetches the JWKS if the last fetch is old enough, then looks `kid` up again.
    async fn refetch_for(
        &self,
        kid: &str,
        request_id: Option<&str>,
    ) -> Result<Option<(Arc<KeySet>, DecodingKey)>, Problem> {
        let mut fetched = self.fetched.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(set) = self.key_set() {
            if let Some(k) = set.keys.get(kid).cloned() {
                return Ok(Some((set, k)));
            }
        }
        let recent = fetched.is_some_and(|t| t.elapsed() < self.settings.refetch_interval);
        if recent {
            return Ok(None);
        }
        let keys = self.fetch(request_id).await?;
        *fetched = Some(Instant::now());
        let set = self.install(keys);
        Ok(set.keys.get(kid).cloned().map(|k| (set, k)))
    }

    /// Refreshes the keys when they are older than `max_age` (run periodically).
    pub async fn refresh_if_stale(&self) {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|t| t.elapsed() < self.settings.max_age) {
            return;
        }
        match self.fetch(None).await {
            Ok(keys) => {
                *fetched = Some(Instant::now());
                self.install(keys);
            }
            Err(_) => tracing::warn!("could not refresh the JWKS; keeping the cached keys"),
        }
    }

    async fn fetch(
        &self,
        request_id: Option<&str>,
    ) -> Result<HashMap<String, DecodingKey>, Problem> {
        let res = self
            .auth
            .request(reqwest::Method::GET, "/.well-known/jwks.json", request_id)
            .send()
            .await
            .map_err(|e| crate::upstream::failure(self.auth.name, &e))?;
        if !res.status().is_success() {
            tracing::warn!(status = res.status().as_u16(), "auth-svc refused the JWKS");
            return Err(Problem::unavailable(1));
        }
        let set: JwkSet = res
            .json()
            .await
            .map_err(|e| crate::upstream::failure(self.auth.name, &e))?;
        let mut keys = HashMap::new();
        for k in set.keys {
            // Only the one kind of key we sign with; anything else in the set is ignored.
            if k.kty != "OKP" || k.crv != "Ed25519" {
                continue;
            }
            if let (Some(kid), Some(x)) = (k.kid, k.x) {
                if let Ok(key) = DecodingKey::from_ed_components(&x) {
                    keys.insert(kid, key);
                }
            }
        }
        tracing::info!(keys = keys.len(), "JWKS fetched");
        Ok(keys)
    }
}
