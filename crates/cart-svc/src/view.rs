//! The cart as API.md shows it. The only place the wire shape of a cart is defined.

use chrono::{DateTime, Utc};
use domain::{Cart, Owner};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct CartView<'a> {
    pub cart_id: String,
    pub version: i64,
    pub owner: &'static str,
    pub items: Vec<ItemView<'a>>,
    pub item_count: u64,
    pub line_count: usize,
    /// `null` until the first change is written.
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct ItemView<'a> {
    pub product_id: &'a str,
    pub quantity: u32,
    pub added_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Cart> for CartView<'a> {
    fn from(c: &'a Cart) -> Self {
        Self {
            cart_id: c.id.to_string(),
            version: c.version,
            owner: match c.owner {
                Owner::Guest => "guest",
                Owner::User(_) => "user",
            },
            items: c
                .lines
                .iter()
                .map(|l| ItemView {
                    product_id: l.product_id.as_str(),
                    quantity: l.quantity.get(),
                    added_at: l.added_at,
                    updated_at: l.updated_at,
                })
                .collect(),
            item_count: c.item_count(),
            line_count: c.line_count(),
            updated_at: c.updated_at,
        }
    }
}

/// The strong ETag of a cart version: `"7"`.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

pub fn to_json(cart: &Cart) -> serde_json::Value {
    serde_json::to_value(CartView::from(cart)).unwrap_or_default()
}
