use std::fmt;

use crate::FieldError;

/// How many of one product a cart line holds: always at least 1 (a line of 0 does not
/// exist; setting 0 removes the line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

/// What a `PUT` asks for: a new quantity, or the removal of the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetQuantity {
    Remove,
    To(Quantity),
}

impl Quantity {
    pub const ONE: Self = Self(1);

    /// A quantity to add (`POST`): an integer of at least 1. Values above the line limit
    /// are valid here and refused by the cart operation (422, not 400), because the
    /// request is well-formed and only the cart's state makes it impossible.
    pub fn parse_add(raw: i64) -> Result<Self, FieldError> {
        if raw < 1 {
            return Err(FieldError::new(
                "quantity",
                "must be an integer of at least 1",
            ));
        }
        Ok(Self(saturate(raw)))
    }

    /// A quantity to set (`PUT`): an integer of at least 0; 0 removes the line.
    pub fn parse_set(raw: i64) -> Result<SetQuantity, FieldError> {
        match raw {
            0 => Ok(SetQuantity::Remove),
            n if n < 0 => Err(FieldError::new(
                "quantity",
                "must be an integer of at least 0",
            )),
            n => Ok(SetQuantity::To(Self(saturate(n)))),
        }
    }

    /// A quantity read back from storage, where a CHECK constraint keeps it positive.
    pub fn from_stored(raw: i32) -> Option<Self> {
        u32::try_from(raw).ok().filter(|n| *n >= 1).map(Self)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// Anything beyond `u32` is far beyond any line limit; keep the value "too large"
/// rather than wrapping it.
fn saturate(raw: i64) -> u32 {
    u32::try_from(raw).unwrap_or(u32::MAX)
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
