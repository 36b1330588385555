//! Every cart-svc failure becomes a problem+json here, and only here.

use actix_web::http::StatusCode;
use domain::CartError;
use svc_kit::Problem;

use crate::store::StoreError;
use crate::view;

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PreconditionFailed(cart) => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            )
            .detail(format!(
                "the cart is at version {}, not the one in If-Match; the current cart is in `cart`",
                cart.version
            ))
            .with_etag(view::etag(cart.version))
            .extension("cart", view::to_json(&cart)),
            StoreError::Limit(CartError::LineQuantityExceeded { max, requested, .. }) => {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "cart-limit-exceeded",
                    "Cart limit exceeded",
                )
                .detail(format!(
                    "a line may hold at most {max}; this change would make it {requested}"
                ))
                .field(
                    "quantity",
                    format!("the line would exceed the limit of {max}"),
                )
            }
            StoreError::Limit(CartError::TooManyLines { max }) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "cart-limit-exceeded",
                "Cart limit exceeded",
            )
            .detail(format!("a cart may hold at most {max} distinct lines"))
            .field("product_id", format!("the cart already holds {max} lines")),
            StoreError::KeyInFlight => Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request in progress",
            )
            .detail("a request with this Idempotency-Key is still being processed; retry shortly")
            .retry_after(1),
            StoreError::NotActive => {
                Problem::new(StatusCode::CONFLICT, "cart-not-active", "Cart not active")
                    .detail("this cart was merged into an account or closed; start a new session")
            }
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "postgres unavailable");
                Problem::unavailable(1)
            }
            StoreError::Db(e) => {
                tracing::error!(error = %e, "database error");
                Problem::internal()
            }
            StoreError::Corrupt(what) => {
                tracing::error!(what, "stored cart breaks the model");
                Problem::internal()
            }
        }
    }
}
