use std::fmt;

use crate::{FieldError, Limits};

/// A product identifier: 1 to `max_product_id_len` characters of `[A-Za-z0-9._:-]`.
///
/// The alphabet keeps ids safe in URL paths, Redis keys and logs without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductId(String);

impl ProductId {
    pub fn parse(raw: &str, limits: &Limits) -> Result<Self, FieldError> {
        let len = raw.chars().count();
        if len == 0 {
            return Err(FieldError::new("product_id", "must not be empty"));
        }
        if len > limits.max_product_id_len {
            return Err(FieldError::new(
                "product_id",
                format!(
                    "must be at most {} characters long",
                    limits.max_product_id_len
                ),
            ));
        }
        if !raw.bytes().all(Self::allowed) {
            return Err(FieldError::new(
                "product_id",
                "may contain only letters, digits and . _ : -",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A product id read back from storage, where a CHECK constraint enforces the
    /// alphabet. Only the hard ceiling on length applies: a lowered configured limit
    /// must not make existing lines unreadable.
    pub fn from_stored(raw: &str) -> Option<Self> {
        let ceiling = Limits {
            max_product_id_len: Limits::CEILING_PRODUCT_ID_LEN,
            ..Limits::default()
        };
        Self::parse(raw, &ceiling).ok()
    }

    fn allowed(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ProductId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
