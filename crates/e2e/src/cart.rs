use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// A cart as API.md represents it, checked field by field while parsing.
#[derive(Debug, Clone)]
pub struct CartView {
    pub cart_id: Uuid,
    pub version: i64,
    pub owner: String,
    pub items: Vec<CartLine>,
    pub item_count: i64,
    pub line_count: i64,
    pub updated_at: Option<DateTime<Utc>>,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub product_id: String,
    pub quantity: i64,
    pub added_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CartView {
    /// Parses API.md's cart representation; fails naming the first field that is
    /// missing, mistyped or inconsistent (counts that do not add up).
    #[track_caller]
    pub fn parse(body: &Value, what: &str) -> CartView {
        let field = |name: &str| {
            body.get(name)
                .unwrap_or_else(|| panic!("{what}: the cart has no `{name}`: {body}"))
        };
        let cart_id = field("cart_id")
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(|| panic!("{what}: `cart_id` is not a UUID: {body}"));
        let version = field("version")
            .as_i64()
            .filter(|v| *v >= 0)
            .unwrap_or_else(|| panic!("{what}: `version` is not a non-negative integer: {body}"));
        let owner = field("owner")
            .as_str()
            .filter(|o| matches!(*o, "guest" | "user"))
            .unwrap_or_else(|| panic!("{what}: `owner` is not \"guest\" or \"user\": {body}"))
            .to_owned();
        let items: Vec<CartLine> = field("items")
            .as_array()
            .unwrap_or_else(|| panic!("{what}: `items` is not an array: {body}"))
            .iter()
            .map(|item| CartLine::parse(item, what))
            .collect();
        let item_count = field("item_count")
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: `item_count` is not an integer: {body}"));
        let line_count = field("line_count")
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: `line_count` is not an integer: {body}"));
        let updated_at = match field("updated_at") {
            Value::Null => None,
            other => Some(rfc3339_utc(other, "updated_at", what)),
        };
        assert_eq!(
            item_count,
            items.iter().map(|i| i.quantity).sum::<i64>(),
            "{what}: `item_count` must be the sum of the quantities: {body}"
        );
        assert_eq!(
            line_count,
            items.len() as i64,
            "{what}: `line_count` must be the number of lines: {body}"
        );
        CartView {
            cart_id,
            version,
            owner,
            items,
            item_count,
            line_count,
            updated_at,
            raw: body.clone(),
        }
    }

    pub fn line(&self, product_id: &str) -> Option<&CartLine> {
        self.items.iter().find(|l| l.product_id == product_id)
    }

    pub fn quantity_of(&self, product_id: &str) -> Option<i64> {
        self.line(product_id).map(|l| l.quantity)
    }

    /// `(product_id, quantity)` of every line, sorted by product id.
    pub fn lines(&self) -> Vec<(String, i64)> {
        let mut lines: Vec<(String, i64)> = self
            .items
            .iter()
            .map(|l| (l.product_id.clone(), l.quantity))
            .collect();
        lines.sort();
        lines
    }

    /// Fails unless `stored` (what Postgres holds) is this cart: no row while it was
    /// never changed, else an active row at the same version with the same lines,
    /// owned by nobody for a guest cart.
    #[track_caller]
    pub fn assert_stored_as(&self, stored: Option<&DbCart>, when: &str) {
        if self.version == 0 {
            assert!(
                stored.is_none(),
                "{when}: cart {} was never changed (version 0), yet Postgres has a row: {stored:?}",
                self.cart_id
            );
            return;
        }
        let stored = stored.unwrap_or_else(|| {
            panic!(
                "{when}: cart {} is at version {}, yet cart.carts has no row for it",
                self.cart_id, self.version
            )
        });
        assert_eq!(
            stored.version, self.version,
            "{when}: cart.carts.version differs from the response's version"
        );
        assert_eq!(
            stored.status, "active",
            "{when}: cart.carts.status of a cart in use"
        );
        if self.owner == "guest" {
            assert_eq!(
                stored.user_id, None,
                "{when}: a guest cart must have no user_id in cart.carts"
            );
        } else {
            assert!(
                stored.user_id.is_some(),
                "{when}: a user's cart must have a user_id in cart.carts"
            );
        }
        assert_eq!(
            stored.lines,
            self.lines(),
            "{when}: cart.cart_items differs from the response's items"
        );
    }
}

impl CartLine {
    #[track_caller]
    fn parse(item: &Value, what: &str) -> CartLine {
        let product_id = item
            .get("product_id")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{what}: an item without a string `product_id`: {item}"))
            .to_owned();
        let quantity = item
            .get("quantity")
            .and_then(Value::as_i64)
            .filter(|q| *q >= 1)
            .unwrap_or_else(|| {
                panic!("{what}: an item whose `quantity` is not an integer ≥ 1: {item}")
            });
        let added_at = rfc3339_utc(
            item.get("added_at").unwrap_or(&Value::Null),
            "added_at",
            what,
        );
        let updated_at = rfc3339_utc(
            item.get("updated_at").unwrap_or(&Value::Null),
            "updated_at",
            what,
        );
        CartLine {
            product_id,
            quantity,
            added_at,
            updated_at,
        }
    }
}

/// An RFC 3339 timestamp in UTC (API.md: "Times are RFC 3339 UTC strings").
#[track_caller]
pub fn rfc3339_utc(value: &Value, name: &str, what: &str) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{name}` is not a string: {value}"));
    let parsed = DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{what}: `{name}` = {text:?} is not RFC 3339 ({e})"));
    assert_eq!(
        parsed.offset().local_minus_utc(),
        0,
        "{what}: `{name}` = {text:?} is not in UTC"
    );
    parsed.with_timezone(&Utc)
}

/// The 200 body of `POST /api/v1/cart/ops`: the resulting cart and one result per op,
/// in the order of the ops.
#[derive(Debug, Clone)]
pub struct OpsReply {
    pub cart: CartView,
    pub results: Vec<OpResult>,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpResult {
    pub op_id: String,
    /// `applied`, `duplicate`, `conflict` or `rejected`.
    pub status: String,
    pub detail: Option<String>,
}

impl OpsReply {
    #[track_caller]
    pub fn parse(body: &Value, what: &str) -> OpsReply {
        let cart = CartView::parse(
            body.get("cart")
                .unwrap_or_else(|| panic!("{what}: no `cart` in {body}")),
            &format!("{what}: `cart`"),
        );
        let results = body
            .get("results")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{what}: `results` is not an array: {body}"))
            .iter()
            .map(|r| {
                let op_id = r
                    .get("op_id")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{what}: a result without a string `op_id`: {r}"))
                    .to_owned();
                let status = r
                    .get("status")
                    .and_then(Value::as_str)
                    .filter(|s| matches!(*s, "applied" | "duplicate" | "conflict" | "rejected"))
                    .unwrap_or_else(|| {
                        panic!(
                            "{what}: a result whose `status` is not applied, duplicate, \
                             conflict or rejected: {r}"
                        )
                    })
                    .to_owned();
                let detail = match r.get("detail") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(d)) => Some(d.clone()),
                    Some(other) => panic!("{what}: a result's `detail` is not a string: {other}"),
                };
                OpResult {
                    op_id,
                    status,
                    detail,
                }
            })
            .collect();
        OpsReply {
            cart,
            results,
            raw: body.clone(),
        }
    }

    /// `(op_id, status)` of every result, in order.
    pub fn statuses(&self) -> Vec<(String, String)> {
        self.results
            .iter()
            .map(|r| (r.op_id.clone(), r.status.clone()))
            .collect()
    }
}

/// A cart as Postgres holds it (`cart.carts` and `cart.cart_items`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbCart {
    pub version: i64,
    pub status: String,
    pub user_id: Option<Uuid>,
    /// `(product_id, quantity)`, sorted by product id.
    pub lines: Vec<(String, i64)>,
}

impl DbCart {
    pub async fn load(db: &PgPool, cart_id: Uuid) -> Option<DbCart> {
        let row: Option<(i64, String, Option<Uuid>)> =
            sqlx::query_as("SELECT version, status, user_id FROM cart.carts WHERE cart_id = $1")
                .bind(cart_id)
                .fetch_optional(db)
                .await
                .unwrap_or_else(|e| panic!("cannot read cart.carts: {e}"));
        let (version, status, user_id) = row?;
        let lines: Vec<(String, i32)> = sqlx::query_as(
            "SELECT product_id, quantity FROM cart.cart_items \
             WHERE cart_id = $1 ORDER BY product_id",
        )
        .bind(cart_id)
        .fetch_all(db)
        .await
        .unwrap_or_else(|e| panic!("cannot read cart.cart_items: {e}"));
        let mut lines: Vec<(String, i64)> =
            lines.into_iter().map(|(p, q)| (p, i64::from(q))).collect();
        // Sorted like `CartView::lines` (byte order, whatever the database collation).
        lines.sort();
        Some(DbCart {
            version,
            status,
            user_id,
            lines,
        })
    }
}
