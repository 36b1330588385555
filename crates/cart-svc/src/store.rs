//! Carts in Postgres: one transaction per change, serialised per cart by a row lock.
//!
//! Every change locks the cart's row (`FOR UPDATE`), so concurrent requests on one cart
//! (several devices, retries) apply one after another against the latest state: two
//! concurrent adds both land, and the limits hold even when requests race for the last
//! allowed line. The rules themselves live in `domain::Cart::apply`; this module loads
//! the cart under the lock, applies the operation, and writes only its effect.

use chrono::{DateTime, SubsecRound, Utc};
use domain::{
    Cart, CartError, CartId, CartLine, CartOp, Effect, Limits, Owner, ProductId, Quantity, UserId,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::caller::Caller;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `If-Match` named another version; carries the current cart for the client.
    #[error("the cart is at another version")]
    PreconditionFailed(Box<Cart>),
    #[error(transparent)]
    Limit(#[from] CartError),
    /// The cart was merged into an account or closed; its guest session should be gone.
    #[error("the cart is no longer active")]
    NotActive,
    /// Postgres is unreachable, overloaded or too slow: worth a retry later.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Db(#[source] sqlx::Error),
    #[error("a stored row breaks the model: {0}")]
    Corrupt(&'static str),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let transient = match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
            // 57014: statement timeout; 53300: too many connections; 57P0x: shutdown.
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                matches!(c.as_ref(), "57014" | "53300" | "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        };
        if transient {
            StoreError::Unavailable(e)
        } else {
            StoreError::Db(e)
        }
    }
}

/// Which versions a conditional request accepts (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No `If-Match`, or `If-Match: *`.
    None,
    /// Applies only if the cart is at one of these versions.
    Versions(Vec<i64>),
}

impl Precondition {
    pub fn allows(&self, version: i64) -> bool {
        match self {
            Precondition::None => true,
            Precondition::Versions(v) => v.contains(&version),
        }
    }
}

/// A committed (or no-op) change and the cart after it.
#[derive(Debug)]
pub struct Changed {
    pub cart: Cart,
    pub effect: Effect,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

struct CartRow {
    cart_id: Uuid,
    user_id: Option<Uuid>,
    status: String,
    version: i64,
    updated_at: DateTime<Utc>,
}

/// Postgres keeps microseconds: round here so what we answer equals what a later read
/// returns.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The caller's cart; an empty one if nothing was written yet.
    pub async fn read(&self, caller: &Caller) -> Result<Cart, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row = match caller {
            Caller::Guest { cart_id, .. } => {
                sqlx::query_as!(
                    CartRow,
                    "SELECT cart_id, user_id, status, version, updated_at
                     FROM cart.carts WHERE cart_id = $1",
                    cart_id.as_uuid()
                )
                .fetch_optional(&mut *conn)
                .await?
            }
            Caller::User { user_id } => {
                sqlx::query_as!(
                    CartRow,
                    "SELECT cart_id, user_id, status, version, updated_at
                     FROM cart.carts WHERE user_id = $1 AND status = 'active'",
                    user_id.as_uuid()
                )
                .fetch_optional(&mut *conn)
                .await?
            }
        };
        match (row, caller) {
            (Some(row), _) => load_lines(&mut conn, row, caller).await,
            (None, Caller::Guest { cart_id, .. }) => Ok(Cart::empty(*cart_id, Owner::Guest)),
            // A user's cart gets its id on first sight, so every device reads the same id
            // even before anything is added.
            (None, Caller::User { user_id }) => {
                let mut tx = self.pool.begin().await?;
                let row = lock_user_cart(&mut tx, *user_id, now()).await?;
                let cart = load_lines(&mut tx, row, caller).await?;
                tx.commit().await?;
                Ok(cart)
            }
        }
    }

    /// Applies `op` to the caller's cart in one transaction. A no-op or a refused
    /// change writes nothing (not even the cart row of a brand-new guest cart).
    pub async fn change(
        &self,
        caller: &Caller,
        op: CartOp,
        precondition: &Precondition,
        limits: &Limits,
    ) -> Result<Changed, StoreError> {
        let now = now();
        let mut tx = self.pool.begin().await?;
        let row = match caller {
            Caller::Guest {
                cart_id,
                token_hash,
            } => lock_guest_cart(&mut tx, *cart_id, token_hash.as_deref(), now).await?,
            Caller::User { user_id } => lock_user_cart(&mut tx, *user_id, now).await?,
        };
        let mut cart = load_lines(&mut tx, row, caller).await?;
        if !precondition.allows(cart.version) {
            return Err(StoreError::PreconditionFailed(Box::new(cart)));
        }
        let effect = cart.apply(op, limits, now)?;
        if !effect.changed() {
            // Dropping the transaction rolls it back.
            return Ok(Changed { cart, effect });
        }
        write_effect(&mut tx, &cart, &effect).await?;
        sqlx::query!(
            "UPDATE cart.carts SET version = $2, updated_at = $3 WHERE cart_id = $1",
            cart.id.as_uuid(),
            cart.version,
            now
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Changed { cart, effect })
    }

    /// The active guest cart that a cart token (by its hash) recovers, if any.
    pub async fn find_by_token_hash(&self, token_hash: &str) -> Result<Option<CartId>, StoreError> {
        let id = sqlx::query_scalar!(
            "SELECT cart_id FROM cart.carts
             WHERE guest_token_hash = $1 AND status = 'active' AND user_id IS NULL",
            token_hash
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(CartId::from_uuid))
    }
}

async fn lock_guest_cart(
    conn: &mut PgConnection,
    cart_id: CartId,
    token_hash: Option<&str>,
    now: DateTime<Utc>,
) -> Result<CartRow, StoreError> {
    // The row appears with the first change (ARCHITECTURE.md flow 1); concurrent first
    // changes race here harmlessly and then queue on the row lock below.
    sqlx::query!(
        "INSERT INTO cart.carts (cart_id, guest_token_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $3)
         ON CONFLICT (cart_id) DO NOTHING",
        cart_id.as_uuid(),
        token_hash,
        now
    )
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query_as!(
        CartRow,
        "SELECT cart_id, user_id, status, version, updated_at
         FROM cart.carts WHERE cart_id = $1 FOR UPDATE",
        cart_id.as_uuid()
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(row)
}

async fn lock_user_cart(
    conn: &mut PgConnection,
    user_id: UserId,
    now: DateTime<Utc>,
) -> Result<CartRow, StoreError> {
    sqlx::query!(
        "INSERT INTO cart.carts (cart_id, user_id, created_at, updated_at)
         VALUES ($1, $2, $3, $3)
         ON CONFLICT (user_id) WHERE status = 'active' AND user_id IS NOT NULL DO NOTHING",
        CartId::new().as_uuid(),
        user_id.as_uuid(),
        now
    )
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query_as!(
        CartRow,
        "SELECT cart_id, user_id, status, version, updated_at
         FROM cart.carts WHERE user_id = $1 AND status = 'active' FOR UPDATE",
        user_id.as_uuid()
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(row)
}

async fn load_lines(
    conn: &mut PgConnection,
    row: CartRow,
    caller: &Caller,
) -> Result<Cart, StoreError> {
    let owner = match (caller, row.user_id) {
        (Caller::Guest { .. }, None) => Owner::Guest,
        (Caller::User { user_id }, Some(owner)) if owner == user_id.as_uuid() => {
            Owner::User(*user_id)
        }
        // The guest cart now belongs to an account (merged at login): the guest
        // session that points at it must not read or change it any more.
        _ => return Err(StoreError::NotActive),
    };
    if row.status != "active" {
        return Err(StoreError::NotActive);
    }
    let items = sqlx::query!(
        "SELECT product_id, quantity, added_at, updated_at
         FROM cart.cart_items WHERE cart_id = $1
         ORDER BY added_at, cart_item_id",
        row.cart_id
    )
    .fetch_all(&mut *conn)
    .await?;
    let lines = items
        .into_iter()
        .map(|i| {
            Ok(CartLine {
                product_id: ProductId::from_stored(&i.product_id)
                    .ok_or(StoreError::Corrupt("product_id"))?,
                quantity: Quantity::from_stored(i.quantity)
                    .ok_or(StoreError::Corrupt("quantity"))?,
                added_at: i.added_at,
                updated_at: i.updated_at,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Cart {
        id: CartId::from_uuid(row.cart_id),
        owner,
        version: row.version,
        lines,
        // A row exists only once something was written.
        updated_at: (row.version > 0).then_some(row.updated_at),
    })
}

async fn write_effect(
    conn: &mut PgConnection,
    cart: &Cart,
    effect: &Effect,
) -> Result<(), StoreError> {
    let cart_id = cart.id.as_uuid();
    match effect {
        Effect::Unchanged => {}
        Effect::Upsert(product_id) => {
            let line = cart
                .line(product_id)
                .ok_or(StoreError::Corrupt("upserted line missing"))?;
            let quantity =
                i32::try_from(line.quantity.get()).map_err(|_| StoreError::Corrupt("quantity"))?;
            sqlx::query!(
                "INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (cart_id, product_id)
                 DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = EXCLUDED.updated_at",
                Uuid::now_v7(),
                cart_id,
                product_id.as_str(),
                quantity,
                line.added_at,
                line.updated_at
            )
            .execute(&mut *conn)
            .await?;
        }
        Effect::Removed(product_id) => {
            sqlx::query!(
                "DELETE FROM cart.cart_items WHERE cart_id = $1 AND product_id = $2",
                cart_id,
                product_id.as_str()
            )
            .execute(&mut *conn)
            .await?;
        }
        Effect::Cleared => {
            sqlx::query!("DELETE FROM cart.cart_items WHERE cart_id = $1", cart_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}
