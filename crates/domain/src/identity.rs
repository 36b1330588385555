//! Who the caller is, as the gateway tells the backends. Backends trust these headers
//! only on requests that also carry the internal credential; the gateway strips any
//! client-sent header with these prefixes so nobody can impersonate it.

/// The shared internal credential on every service-to-service call.
pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";
/// `guest` or `user`.
pub const KIND_HEADER: &str = "x-identity-kind";
/// The guest session's cart (guests only).
pub const CART_ID_HEADER: &str = "x-identity-cart-id";
/// Hash of the guest's cart token, stored on the cart at its first write so the token
/// can recover the cart after the session is gone.
pub const CART_TOKEN_HASH_HEADER: &str = "x-identity-cart-token-hash";
/// The authenticated user (users only).
pub const USER_ID_HEADER: &str = "x-identity-user-id";

/// Header-name prefixes reserved for internal use. Anything a client sends with these is
/// dropped at the edge.
pub const RESERVED_PREFIXES: [&str; 2] = ["x-identity-", "x-internal-"];

/// True when a header name (any case) belongs to the reserved internal namespace.
pub fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_any_case() {
        assert!(is_reserved_header("X-Identity-Kind"));
        assert!(is_reserved_header("x-internal-token"));
        assert!(!is_reserved_header("x-request-id"));
    }
}
