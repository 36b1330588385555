//! The shared vocabulary of the platform: identifiers, validated newtypes, the cart
//! model and its pure operations, and the names of the headers that carry a caller's
//! identity between services.
//!
//! Nothing in here does I/O, and nothing here is `Serialize`: wire formats live at the
//! edge of each service and convert into these types, so a change to a JSON field can
//! never silently change the model (and vice versa).

pub mod cart;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod merge;
pub mod offline;
pub mod product;
pub mod quantity;
pub mod token;

pub use cart::{Cart, CartError, CartLine, CartOp, Effect, Owner};
pub use ids::{CartId, UserId};
pub use limits::Limits;
pub use merge::{MergeOutcome, MergeStrategy};
pub use product::ProductId;
pub use quantity::{Quantity, SetQuantity};

/// A value that failed validation: which field, and a message a frontend developer can
/// show or act on. Maps to one entry of a problem+json `errors` array.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
