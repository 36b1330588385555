//! Carts in Postgres: one transaction per change, serialised per cart by a row lock.
//!
//! Every change locks the cart's row (`FOR UPDATE`), so concurrent requests on one cart
//! (several devices, retries) apply one after another against the latest state: two
//! concurrent adds both land, and the limits hold even when requests race for the last
//! allowed line. The rules themselves live in `domain::Cart::apply`; this module loads
//! the cart under the lock, applies the operation, and writes only its effect.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use domain::offline::{BatchOutcome, OfflineOp, OpId, OpStatus};
use domain::{
    Cart, CartError, CartId, CartLine, CartOp, Effect, Limits, MergeOutcome, MergeStrategy, Owner,
    ProductId, Quantity, UserId,
};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::caller::Caller;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `If-Match` named another version; carries the current cart for the client.
    #[error("the cart is at another version")]
    PreconditionFailed(Box<Cart>),
    #[error(transparent)]
    Limit(#[from] CartError),
    /// Another request with the same idempotency key is still being processed.
    #[error("a request with this idempotency key is in flight")]
    KeyInFlight,
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
        if matches!(e, sqlx::Error::PoolTimedOut) {
            svc_kit::metrics::pool_timed_out();
        }
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
    merged_into: Option<Uuid>,
}

/// Postgres keeps microseconds: round here so what we answer equals what a later read
/// returns.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A request's first outcome, as stored for its Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    pub request_hash: String,
    pub status: u16,
    pub etag: Option<String>,
    pub body: String,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A pooled connection; the wait for it is measured (pool saturation shows there
    /// first).
    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        let started = std::time::Instant::now();
        let conn = self.pool.acquire().await;
        svc_kit::metrics::pool_waited(started.elapsed());
        Ok(conn?)
    }

    async fn begin_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let conn = self.acquire().await?;
        Ok(Transaction::begin(conn, None).await?)
    }

    /// The caller's cart; an empty one if nothing was written yet.
    pub async fn read(&self, caller: &Caller) -> Result<Cart, StoreError> {
        let mut conn = self.acquire().await?;
        let row = match caller {
            Caller::Guest { cart_id, .. } => {
                // A guest cart merged at login answers with the cart it went into.
                sqlx::query_as!(
                    CartRow,
                    r#"SELECT c.cart_id, c.user_id, c.status, c.version, c.updated_at, c.merged_into
                     FROM cart.carts g
                     JOIN cart.carts c ON c.cart_id = COALESCE(g.merged_into, g.cart_id)
                     WHERE g.cart_id = $1"#,
                    cart_id.as_uuid()
                )
                .fetch_optional(&mut *conn)
                .await?
            }
            Caller::User { user_id } => {
                sqlx::query_as!(
                    CartRow,
                    "SELECT cart_id, user_id, status, version, updated_at, merged_into
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
                let mut tx = self.begin_tx().await?;
                let row = lock_user_cart(&mut tx, *user_id, now()).await?;
                let cart = load_lines(&mut tx, row, caller).await?;
                tx.commit().await?;
                Ok(cart)
            }
        }
    }

    /// Opens the unit of work of one change: a transaction holding the cart's row lock,
    /// with the cart loaded. With an idempotency key, first claims the key for the
    /// duration of the transaction (a second request with it meanwhile gets
    /// [`StoreError::KeyInFlight`] at once instead of waiting).
    pub async fn begin(
        &self,
        caller: &Caller,
        idempotency_key: Option<&str>,
    ) -> Result<CartTx, StoreError> {
        let now = now();
        let mut tx = self.begin_tx().await?;
        if let Some(key) = idempotency_key {
            let scope = match caller {
                Caller::Guest { cart_id, .. } => format!("cart:{cart_id}:{key}"),
                Caller::User { user_id } => format!("user:{user_id}:{key}"),
            };
            let claimed = sqlx::query_scalar!(
                r#"SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS "claimed!""#,
                scope
            )
            .fetch_one(&mut *tx)
            .await?;
            if !claimed {
                return Err(StoreError::KeyInFlight);
            }
        }
        let row = match caller {
            Caller::Guest {
                cart_id,
                token_hash,
            } => lock_guest_cart(&mut tx, *cart_id, token_hash.as_deref(), now).await?,
            Caller::User { user_id } => lock_user_cart(&mut tx, *user_id, now).await?,
        };
        let cart = load_lines(&mut tx, row, caller).await?;
        Ok(CartTx {
            tx,
            cart,
            now,
            effects: Vec::new(),
            decided_ops: Vec::new(),
            remembered: false,
        })
    }

    /// Applies one operation in its own unit of work, without idempotency.
    pub async fn change(
        &self,
        caller: &Caller,
        op: CartOp,
        precondition: &Precondition,
        limits: &Limits,
    ) -> Result<Changed, StoreError> {
        let mut tx = self.begin(caller, None).await?;
        tx.check(precondition)?;
        let effect = tx.apply(op, limits)?;
        let cart = tx.cart.clone();
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

/// What a login's merge did.
#[derive(Debug)]
pub struct Merged {
    /// The user's cart afterwards.
    pub cart: Cart,
    pub outcome: MergeResult,
}

#[derive(Debug)]
pub enum MergeResult {
    /// Nothing to merge: no guest cart given, it was never written, or it was merged
    /// already (a retried login).
    Nothing,
    /// The user had no cart: the guest cart became theirs.
    Adopted,
    /// The guest cart's lines went into the user's cart; the guest cart is closed.
    Merged(MergeOutcome),
}

impl Store {
    /// Merges a guest cart into the user's one active cart, exactly once: the guest cart
    /// is marked merged (or adopted) in the same transaction as the lines are written,
    /// so a retried login, or one that failed half way, can never merge twice.
    pub async fn merge(
        &self,
        user_id: UserId,
        guest: Option<CartId>,
        strategy: MergeStrategy,
        limits: &Limits,
    ) -> Result<Merged, StoreError> {
        let now = now();
        let mut tx = self.begin_tx().await?;
        // Two logins of one user (two devices at once) merge one after the other.
        let scope = format!("merge:{user_id}");
        sqlx::query!(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            scope
        )
        .execute(&mut *tx)
        .await?;
        let user = Caller::User { user_id };
        let guest_row = match guest {
            Some(id) => sqlx::query_as!(
                CartRow,
                "SELECT cart_id, user_id, status, version, updated_at, merged_into
                 FROM cart.carts WHERE cart_id = $1 FOR UPDATE",
                id.as_uuid()
            )
            .fetch_optional(&mut *tx)
            .await?
            .filter(|g| g.status == "active" && g.user_id.is_none()),
            None => None,
        };
        let Some(guest_row) = guest_row else {
            let row = lock_user_cart(&mut tx, user_id, now).await?;
            let cart = load_lines(&mut tx, row, &user).await?;
            tx.commit().await?;
            return Ok(Merged {
                cart,
                outcome: MergeResult::Nothing,
            });
        };
        let user_row = sqlx::query_as!(
            CartRow,
            "SELECT cart_id, user_id, status, version, updated_at, merged_into
             FROM cart.carts WHERE user_id = $1 AND status = 'active' FOR UPDATE",
            user_id.as_uuid()
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user_row) = user_row else {
            // The version moves: the representation's owner changes, so must its ETag.
            let row = sqlx::query_as!(
                CartRow,
                "UPDATE cart.carts
                 SET user_id = $2, guest_token_hash = NULL, version = version + 1, updated_at = $3
                 WHERE cart_id = $1
                 RETURNING cart_id, user_id, status, version, updated_at, merged_into",
                guest_row.cart_id,
                user_id.as_uuid(),
                now
            )
            .fetch_one(&mut *tx)
            .await?;
            let cart = load_lines(&mut tx, row, &user).await?;
            tx.commit().await?;
            return Ok(Merged {
                cart,
                outcome: MergeResult::Adopted,
            });
        };
        let as_guest = Caller::Guest {
            cart_id: CartId::from_uuid(guest_row.cart_id),
            token_hash: None,
        };
        let guest_cart = load_lines(&mut tx, guest_row, &as_guest).await?;
        let mut cart = load_lines(&mut tx, user_row, &user).await?;
        let outcome = cart.merge_from(&guest_cart.lines, strategy, limits, now);
        if !outcome.effects.is_empty() {
            let effects: Vec<(Effect, i64)> = outcome
                .effects
                .iter()
                .map(|e| (e.clone(), cart.version))
                .collect();
            write_lines(&mut tx, &cart, &effects).await?;
            sqlx::query!(
                "UPDATE cart.carts SET version = $2, updated_at = $3 WHERE cart_id = $1",
                cart.id.as_uuid(),
                cart.version,
                now
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query!(
            "UPDATE cart.carts
             SET status = 'merged', merged_into = $2, guest_token_hash = NULL, updated_at = $3
             WHERE cart_id = $1",
            guest_cart.id.as_uuid(),
            cart.id.as_uuid(),
            now
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Merged {
            cart,
            outcome: MergeResult::Merged(outcome),
        })
    }
}

/// A change (or no-op) and the cart after it.
#[derive(Debug)]
pub struct Changed {
    pub cart: Cart,
    pub effect: Effect,
}

/// One change in progress: the cart under its row lock, the operations applied to it so
/// far in memory, and what must be written. Nothing reaches Postgres before
/// [`CartTx::commit`]; dropping it rolls everything back.
pub struct CartTx {
    tx: Transaction<'static, Postgres>,
    pub cart: Cart,
    now: DateTime<Utc>,
    effects: Vec<(Effect, i64)>,
    decided_ops: Vec<(OpId, OpStatus)>,
    remembered: bool,
}

impl CartTx {
    /// `If-Match`: the cart must be at one of the named versions.
    pub fn check(&self, precondition: &Precondition) -> Result<(), StoreError> {
        if precondition.allows(self.cart.version) {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed(Box::new(self.cart.clone())))
        }
    }

    pub fn apply(&mut self, op: CartOp, limits: &Limits) -> Result<Effect, StoreError> {
        let effect = self.cart.apply(op, limits, self.now)?;
        if effect.changed() {
            self.effects.push((effect.clone(), self.cart.version));
        }
        Ok(effect)
    }

    /// Applies an offline batch (see `domain::offline`), reading which op ids the cart
    /// has seen and when each touched line last changed.
    pub async fn apply_offline(
        &mut self,
        base_version: i64,
        ops: Vec<OfflineOp>,
        limits: &Limits,
    ) -> Result<BatchOutcome, StoreError> {
        let cart_id = self.cart.id.as_uuid();
        let op_ids: Vec<String> = ops.iter().map(|o| o.op_id.as_str().to_owned()).collect();
        let products: Vec<String> = ops
            .iter()
            .map(|o| o.product_id.as_str().to_owned())
            .collect();
        let seen = sqlx::query_scalar!(
            "SELECT op_id FROM cart.applied_ops WHERE cart_id = $1 AND op_id = ANY($2)",
            cart_id,
            &op_ids
        )
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(|id| OpId::parse(&id, "op_id").map_err(|_| StoreError::Corrupt("op_id")))
        .collect::<Result<HashSet<_>, _>>()?;
        let changed_at = sqlx::query!(
            "SELECT product_id, changed_version FROM cart.line_changes
             WHERE cart_id = $1 AND product_id = ANY($2)",
            cart_id,
            &products
        )
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(|r| {
            ProductId::from_stored(&r.product_id)
                .map(|p| (p, r.changed_version))
                .ok_or(StoreError::Corrupt("product_id"))
        })
        .collect::<Result<HashMap<_, _>, _>>()?;
        let outcome =
            self.cart
                .apply_offline(base_version, ops, &seen, &changed_at, limits, self.now);
        self.effects.extend(outcome.effects.iter().cloned());
        self.decided_ops
            .extend(outcome.decided().map(|r| (r.op_id.clone(), r.status)));
        Ok(outcome)
    }

    /// The outcome stored for this key on this cart, if any.
    pub async fn stored_outcome(&mut self, key: &str) -> Result<Option<StoredOutcome>, StoreError> {
        let row = sqlx::query!(
            "SELECT request_hash, response_status, response_etag, response_body
             FROM cart.idempotency_keys WHERE cart_id = $1 AND idempotency_key = $2",
            self.cart.id.as_uuid(),
            key
        )
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.map(|r| StoredOutcome {
            request_hash: r.request_hash,
            status: u16::try_from(r.response_status).unwrap_or(500),
            etag: r.response_etag,
            body: r.response_body,
        }))
    }

    /// Stores this request's outcome for its key, in this transaction.
    pub async fn remember(&mut self, key: &str, outcome: &StoredOutcome) -> Result<(), StoreError> {
        sqlx::query!(
            "INSERT INTO cart.idempotency_keys
               (cart_id, idempotency_key, request_hash, response_status, response_etag, response_body, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            self.cart.id.as_uuid(),
            key,
            outcome.request_hash,
            i16::try_from(outcome.status).unwrap_or(500),
            outcome.etag,
            outcome.body,
            self.now
        )
        .execute(&mut *self.tx)
        .await?;
        self.remembered = true;
        Ok(())
    }

    /// True when committing changes the cart.
    pub fn changes_cart(&self) -> bool {
        !self.effects.is_empty()
    }

    /// Writes the net effect of everything applied (each touched line's final state,
    /// its change version, the cart's version), the decided op ids and the remembered
    /// outcome, atomically. With nothing to write it rolls back instead, so a no-op or a
    /// refused change leaves no trace (not even a new guest cart's row).
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.effects.is_empty() && self.decided_ops.is_empty() && !self.remembered {
            return Ok(());
        }
        let cart_id = self.cart.id.as_uuid();
        if !self.effects.is_empty() {
            write_lines(&mut self.tx, &self.cart, &self.effects).await?;
            sqlx::query!(
                "UPDATE cart.carts SET version = $2, updated_at = $3 WHERE cart_id = $1",
                cart_id,
                self.cart.version,
                self.now
            )
            .execute(&mut *self.tx)
            .await?;
        }
        if !self.decided_ops.is_empty() {
            let (ids, statuses): (Vec<String>, Vec<String>) = self
                .decided_ops
                .iter()
                .map(|(id, st)| (id.as_str().to_owned(), st.as_str().to_owned()))
                .unzip();
            sqlx::query!(
                "INSERT INTO cart.applied_ops (cart_id, op_id, status, applied_at)
                 SELECT $1, u.op_id, u.status, $4
                 FROM UNNEST($2::text[], $3::text[]) AS u(op_id, status)",
                cart_id,
                &ids,
                &statuses,
                self.now
            )
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

async fn lock_guest_cart(
    conn: &mut PgConnection,
    cart_id: CartId,
    token_hash: Option<&str>,
    now: DateTime<Utc>,
) -> Result<CartRow, StoreError> {
    // The row appears with the first change (ARCHITECTURE.md flow 1); concurrent first
    // changes race here harmlessly and then queue on the row lock below. No conflict
    // target: the racing inserts collide on the token-hash index as well as the key,
    // and a target naming only `cart_id` would let that second collision raise an error.
    sqlx::query!(
        "INSERT INTO cart.carts (cart_id, guest_token_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $3)
         ON CONFLICT DO NOTHING",
        cart_id.as_uuid(),
        token_hash,
        now
    )
    .execute(&mut *conn)
    .await?;
    lock_following_merges(conn, cart_id).await
}

/// Locks a cart's row; when the guest cart was merged into a user's cart at login,
/// locks that one instead, so a change that raced the login lands in the cart the
/// guest's lines went to rather than being refused or lost.
async fn lock_following_merges(
    conn: &mut PgConnection,
    cart_id: CartId,
) -> Result<CartRow, StoreError> {
    let mut id = cart_id.as_uuid();
    // A merged cart points at an active user cart; two hops would already be a bug.
    for _ in 0..3 {
        let row = sqlx::query_as!(
            CartRow,
            "SELECT cart_id, user_id, status, version, updated_at, merged_into
             FROM cart.carts WHERE cart_id = $1 FOR UPDATE",
            id
        )
        .fetch_one(&mut *conn)
        .await?;
        match row.merged_into {
            Some(target) if row.status == "merged" => id = target,
            _ => return Ok(row),
        }
    }
    Err(StoreError::Corrupt("merged_into chain"))
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
        "SELECT cart_id, user_id, status, version, updated_at, merged_into
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
        // The guest cart went into an account at login (adopted, or merged and
        // followed): the guest session is being replaced by the user's, and a request
        // that raced the login is served on the cart its lines now live in.
        (Caller::Guest { .. }, Some(owner)) => Owner::User(UserId::from_uuid(owner)),
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

/// Writes each touched line's final state (upserted if the cart holds it, deleted if
/// not) and the version at which it last changed: at most three statements, whatever
/// the number of operations applied.
async fn write_lines(
    conn: &mut PgConnection,
    cart: &Cart,
    effects: &[(Effect, i64)],
) -> Result<(), StoreError> {
    let mut touched: BTreeMap<&ProductId, i64> = BTreeMap::new();
    for (effect, version) in effects {
        match effect {
            Effect::Upsert(p) | Effect::Removed(p) => {
                touched.insert(p, *version);
            }
            Effect::Cleared(ps) => touched.extend(ps.iter().map(|p| (p, *version))),
            Effect::Unchanged => {}
        }
    }
    let cart_id = cart.id.as_uuid();
    let mut rows = LineRows::default();
    let mut removed: Vec<String> = Vec::new();
    for product in touched.keys() {
        match cart.line(product) {
            Some(line) => {
                rows.ids.push(Uuid::now_v7());
                rows.products.push(product.as_str().to_owned());
                rows.quantities.push(
                    i32::try_from(line.quantity.get())
                        .map_err(|_| StoreError::Corrupt("quantity"))?,
                );
                rows.added.push(line.added_at);
                rows.updated.push(line.updated_at);
            }
            None => removed.push(product.as_str().to_owned()),
        }
    }
    if !rows.products.is_empty() {
        sqlx::query!(
            "INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
             SELECT u.id, $1, u.product_id, u.quantity, u.added_at, u.updated_at
             FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::timestamptz[], $6::timestamptz[])
                  AS u(id, product_id, quantity, added_at, updated_at)
             ON CONFLICT (cart_id, product_id)
             DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = EXCLUDED.updated_at",
            cart_id,
            &rows.ids,
            &rows.products,
            &rows.quantities,
            &rows.added,
            &rows.updated
        )
        .execute(&mut *conn)
        .await?;
    }
    if !removed.is_empty() {
        sqlx::query!(
            "DELETE FROM cart.cart_items WHERE cart_id = $1 AND product_id = ANY($2)",
            cart_id,
            &removed
        )
        .execute(&mut *conn)
        .await?;
    }
    let (names, versions): (Vec<String>, Vec<i64>) = touched
        .iter()
        .map(|(p, v)| (p.as_str().to_owned(), *v))
        .unzip();
    sqlx::query!(
        "INSERT INTO cart.line_changes (cart_id, product_id, changed_version)
         SELECT $1, u.product_id, u.version FROM UNNEST($2::text[], $3::int8[]) AS u(product_id, version)
         ON CONFLICT (cart_id, product_id) DO UPDATE SET changed_version = EXCLUDED.changed_version",
        cart_id,
        &names,
        &versions
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Column arrays for one multi-row upsert of lines.
#[derive(Default)]
struct LineRows {
    ids: Vec<Uuid>,
    products: Vec<String>,
    quantities: Vec<i32>,
    added: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
}
