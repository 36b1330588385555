//! Hashing of bearer secrets (session tokens, cart tokens). The server keeps only these
//! hashes, so a leaked Redis dump or database backup cannot be replayed as a credential.
//! The secrets carry at least 128 bits of randomness, so a plain SHA-256 (no salt, no
//! stretching) is enough: there is nothing to guess offline.

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of a secret token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token as it may appear in a header or cookie: 16 to 256 URL-safe characters.
/// Anything else is rejected before it reaches a datastore.
pub fn is_plausible_token(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_hex() {
        let h = hash_token("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn plausible_tokens() {
        assert!(is_plausible_token("AAAAAAAAAAAAAAAAAAAAAA"));
        assert!(!is_plausible_token("short"));
        assert!(!is_plausible_token("has space in it here"));
        assert!(!is_plausible_token(&"a".repeat(257)));
    }
}
