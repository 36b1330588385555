//! The caller, as the gateway vouches for it in identity headers. Only requests that
//! passed the internal-credential check get here.

use actix_web::HttpRequest;
use domain::identity::{CART_ID_HEADER, CART_TOKEN_HASH_HEADER, KIND_HEADER, USER_ID_HEADER};
use domain::{CartId, UserId};
use svc_kit::Problem;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A guest session: its cart id, and the hash of its cart token (stored on the cart
    /// at its first write so the token can recover it later).
    Guest {
        cart_id: CartId,
        token_hash: Option<String>,
    },
    /// A logged-in user: their one active cart, whatever its id.
    User { user_id: UserId },
}

impl Caller {
    pub fn from_request(req: &HttpRequest) -> Result<Self, Problem> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        // A malformed identity means the gateway is broken or bypassed: refuse, don't guess.
        let missing =
            || Problem::unauthorized("no caller identity was forwarded with this request");
        match header(KIND_HEADER) {
            Some("guest") => {
                let cart_id = header(CART_ID_HEADER)
                    .and_then(|v| v.parse::<CartId>().ok())
                    .ok_or_else(missing)?;
                let token_hash = header(CART_TOKEN_HASH_HEADER)
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(str::to_ascii_lowercase);
                Ok(Caller::Guest {
                    cart_id,
                    token_hash,
                })
            }
            Some("user") => {
                let user_id = header(USER_ID_HEADER)
                    .and_then(|v| v.parse::<UserId>().ok())
                    .ok_or_else(missing)?;
                Ok(Caller::User { user_id })
            }
            _ => Err(missing()),
        }
    }

    /// The cart id the gateway forwards from the caller's session. For a user it is
    /// only a hint (their cart is their one active cart, whatever its id): it locates
    /// the cache entry to try first.
    pub fn session_cart(req: &HttpRequest) -> Option<CartId> {
        req.headers()
            .get(CART_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<CartId>().ok())
    }
}
