//! Signing keys and access tokens. Keys are Ed25519 (JWT `alg: EdDSA`), read from PKCS#8
//! PEM files in one directory: every key there is published in the JWKS, and the newest
//! (the last file name in sort order) signs. Rotation is therefore: add a newer file,
//! restart (tokens signed with the old key stay valid while it is published), and
//! remove the old file once its last tokens have expired.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// The session this token belongs to: logging out ends it, and with it the token.
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

pub struct SigningKey {
    pub kid: String,
    /// The raw 32-byte public key, base64url (the JWK's `x`).
    pub x: String,
    encoding: EncodingKey,
}

pub struct KeyRing {
    /// Oldest first; the last one signs.
    keys: Vec<SigningKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not an Ed25519 PKCS#8 PEM key ({1})")]
    Invalid(PathBuf, String),
    #[error("no signing key in {0} (add an Ed25519 PKCS#8 PEM file, or set AUTH_GENERATE_SIGNING_KEY=true for local runs)")]
    None(PathBuf),
}

impl SigningKey {
    pub fn from_pem(path: &Path, text: &[u8]) -> Result<Self, KeyError> {
        let invalid = |m: String| KeyError::Invalid(path.to_owned(), m);
        let block = pem::parse(text).map_err(|e| invalid(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(invalid(format!("PEM block is {:?}", block.tag())));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents())
            .map_err(|e| invalid(e.to_string()))?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Self {
            kid: thumbprint(&x),
            x,
            encoding: EncodingKey::from_ed_der(block.contents()),
        })
    }
}

/// The RFC 7638 JWK thumbprint: a stable `kid` derived from the public key itself.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A new Ed25519 key as PKCS#8 PEM.
pub fn generate_pem() -> Result<String, KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|e| KeyError::Invalid(PathBuf::from("<generated>"), e.to_string()))?;
    Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref())))
}

impl KeyRing {
    /// Every `*.pem` in `dir`. With `generate`, a first key is created when there is
    /// none (local runs: generated once, kept, so tokens survive a restart).
    pub fn load(dir: &Path, generate: bool) -> Result<Self, KeyError> {
        let io = |e| KeyError::Io(dir.to_owned(), e);
        if generate {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut files = list_pems(dir)?;
        if files.is_empty() && generate {
            let path = dir.join(format!("{}.pem", Utc::now().format("%Y%m%dT%H%M%SZ")));
            write_private(&path, generate_pem()?.as_bytes())?;
            tracing::warn!(path = %path.display(), "generated a signing key for local use");
            files = list_pems(dir)?;
        }
        let keys = files
            .iter()
            .map(|p| {
                let text = std::fs::read(p).map_err(|e| KeyError::Io(p.clone(), e))?;
                SigningKey::from_pem(p, &text)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::None(dir.to_owned()));
        }
        Ok(Self { keys })
    }

    pub fn signing(&self) -> &SigningKey {
        // `load` refuses an empty ring.
        &self.keys[self.keys.len() - 1]
    }

    /// The public keys as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .keys
            .iter()
            .rev()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid,
                    "alg": "EdDSA", "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let key = self.signing();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
    }
}

fn list_pems(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(KeyError::Io(dir.to_owned(), e)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    files.sort();
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| KeyError::Io(path.to_owned(), e))?;
    f.write_all(bytes)
        .map_err(|e| KeyError::Io(path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    fn claims() -> Claims {
        let now = Utc::now().timestamp();
        Claims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "user".into(),
            sid: "sid".into(),
            iat: now,
            exp: now + 60,
            jti: "j".into(),
        }
    }

    #[test]
    fn generated_key_is_kept_and_the_newest_signs() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load(dir.path(), true).unwrap();
        let again = KeyRing::load(dir.path(), true).unwrap();
        assert_eq!(first.signing().kid, again.signing().kid, "generated once");
        std::fs::write(dir.path().join("99999999.pem"), generate_pem().unwrap()).unwrap();
        let rotated = KeyRing::load(dir.path(), false).unwrap();
        assert_ne!(rotated.signing().kid, first.signing().kid);
        let published: Vec<String> = rotated.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(published.len(), 2, "old tokens stay verifiable");
        assert!(published.contains(&first.signing().kid));
    }

    #[test]
    fn tokens_verify_with_the_published_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load(dir.path(), true).unwrap();
        let token = ring.sign(&claims()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(ring.signing().kid.as_str()));
        let key = DecodingKey::from_ed_components(&ring.signing().x).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["aud"]);
        let got = jsonwebtoken::decode::<Claims>(&token, &key, &v).unwrap();
        assert_eq!(got.claims, claims_without_time(&got.claims));
        let other = tempfile::tempdir().unwrap();
        let stranger = KeyRing::load(other.path(), true).unwrap();
        let foreign = stranger.sign(&claims()).unwrap();
        assert!(jsonwebtoken::decode::<Claims>(&foreign, &key, &v).is_err());
    }

    fn claims_without_time(c: &Claims) -> Claims {
        Claims {
            iat: c.iat,
            exp: c.exp,
            ..claims()
        }
    }

    #[test]
    fn missing_keys_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyRing::load(dir.path(), false).err().unwrap().to_string();
        assert!(err.contains("no signing key"), "{err}");
        std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
        assert!(KeyRing::load(dir.path(), false).is_err());
    }
}
