//! Access-token verification at the edge. The gateway checks JWTs itself against the
//! public keys auth-svc publishes (JWKS), fetched and cached: no call to auth-svc per
//! request. The algorithm is pinned to EdDSA (so `alg: none`, HS256 "signed" with the
//! public key, or any other algorithm is refused before a key is even chosen), and
//! `iss`, `aud` and `exp` are checked. An unknown `kid` triggers a refetch (a key
//! rotation), at most once per configured interval so forged `kid`s cannot turn every
//! request into a call to auth-svc.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
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

pub struct Verifier {
    auth: Peer,
    settings: JwtSettings,
    validation: Validation,
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
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
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetched: tokio::sync::Mutex::new(None),
        }
    }

    /// The claims of a valid access token, or 401. 503 when no key can be had because
    /// auth-svc is unreachable and nothing is cached.
    pub async fn verify(&self, token: &str, request_id: Option<&str>) -> Result<Claims, Problem> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused())?;
        if header.alg != Algorithm::EdDSA {
            return Err(refused());
        }
        let kid = header.kid.ok_or_else(refused)?;
        let key = match self.cached(&kid) {
            Some(k) => k,
            None => self
                .refetch_for(&kid, request_id)
                .await?
                .ok_or_else(refused)?,
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|_| refused())?;
        let c = data.claims;
        let sid_ok = c.sid.len() == 64 && c.sid.bytes().all(|b| b.is_ascii_hexdigit());
        if !sid_ok || c.sub.parse::<uuid::Uuid>().is_err() {
            return Err(refused());
        }
        Ok(c)
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.read().ok()?.clone();
        keys.get(kid).cloned()
    }

    /// Fetches the JWKS if the last fetch is old enough, then looks `kid` up again.
    async fn refetch_for(
        &self,
        kid: &str,
        request_id: Option<&str>,
    ) -> Result<Option<DecodingKey>, Problem> {
        let mut fetched = self.fetched.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(k) = self.cached(kid) {
            return Ok(Some(k));
        }
        let recent = fetched.is_some_and(|t| t.elapsed() < self.settings.refetch_interval);
        if recent {
            return Ok(None);
        }
        let keys = self.fetch(request_id).await?;
        *fetched = Some(Instant::now());
        let found = keys.get(kid).cloned();
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::new(keys);
        }
        Ok(found)
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
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Arc::new(keys);
                }
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
