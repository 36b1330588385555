//! The cart and its pure operations. Services load a cart, apply an operation here, and
//! persist the returned [`Effect`]; the rules (limits, no-ops, version bumps) therefore
//! live in exactly one place and are property-tested below.

use chrono::{DateTime, Utc};

use crate::quantity::SetQuantity;
use crate::{CartId, Limits, ProductId, Quantity, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Guest,
    User(UserId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub added_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    pub id: CartId,
    pub owner: Owner,
    /// Grows by exactly one with every change that alters the cart; a no-op keeps it.
    pub version: i64,
    /// In the order the lines were first added.
    pub lines: Vec<CartLine>,
    /// `None` until the first change is written.
    pub updated_at: Option<DateTime<Utc>>,
}

/// One change a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartOp {
    /// Relative: add to the line (create it when absent).
    Add(ProductId, Quantity),
    /// Absolute: set the line (remove it on 0).
    Set(ProductId, SetQuantity),
    Remove(ProductId),
    Clear,
}

/// What an operation did, so storage can write only that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A no-op: nothing to write, version unchanged.
    Unchanged,
    /// The line now holds the quantity found in the cart (created or updated).
    Upsert(ProductId),
    /// The line is gone.
    Removed(ProductId),
    /// Every line is gone: these were the lines.
    Cleared(Vec<ProductId>),
}

impl Effect {
    pub fn changed(&self) -> bool {
        !matches!(self, Effect::Unchanged)
    }
}

/// A well-formed request that the cart's current state makes impossible (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("line {product_id} would hold {requested}, above the limit of {max} per line")]
    LineQuantityExceeded {
        product_id: ProductId,
        requested: u64,
        max: u32,
    },
    #[error("the cart already holds the maximum of {max} distinct lines")]
    TooManyLines { max: usize },
}

impl Cart {
    pub fn empty(id: CartId, owner: Owner) -> Self {
        Self {
            id,
            owner,
            version: 0,
            lines: Vec::new(),
            updated_at: None,
        }
    }

    pub fn line(&self, product_id: &ProductId) -> Option<&CartLine> {
        self.lines.iter().find(|l| &l.product_id == product_id)
    }

    fn position(&self, product_id: &ProductId) -> Option<usize> {
        self.lines.iter().position(|l| &l.product_id == product_id)
    }

    /// Total units over all lines.
    pub fn item_count(&self) -> u64 {
        self.lines.iter().map(|l| u64::from(l.quantity.get())).sum()
    }

    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// Applies `op` at time `now`. On error the cart is left exactly as it was.
    pub fn apply(
        &mut self,
        op: CartOp,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Effect, CartError> {
        let effect = match op {
            CartOp::Add(p, q) => self.add(p, q, limits, now)?,
            CartOp::Set(p, SetQuantity::To(q)) => self.set(p, q, limits, now)?,
            CartOp::Set(p, SetQuantity::Remove) | CartOp::Remove(p) => self.remove(p),
            CartOp::Clear => self.clear(),
        };
        if effect.changed() {
            self.version += 1;
            self.updated_at = Some(now);
        }
        Ok(effect)
    }

    fn add(
        &mut self,
        product_id: ProductId,
        quantity: Quantity,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Effect, CartError> {
        let current = self.line(&product_id).map_or(0, |l| l.quantity.get());
        let requested = u64::from(current) + u64::from(quantity.get());
        let new_quantity = within_line_limit(&product_id, requested, limits)?;
        self.put_line(product_id, new_quantity, limits, now)
    }

    fn set(
        &mut self,
        product_id: ProductId,
        quantity: Quantity,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Effect, CartError> {
        let new_quantity = within_line_limit(&product_id, u64::from(quantity.get()), limits)?;
        if self.line(&product_id).map(|l| l.quantity) == Some(new_quantity) {
            return Ok(Effect::Unchanged);
        }
        self.put_line(product_id, new_quantity, limits, now)
    }

    fn put_line(
        &mut self,
        product_id: ProductId,
        quantity: Quantity,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Result<Effect, CartError> {
        match self.position(&product_id) {
            Some(i) => {
                let line = &mut self.lines[i];
                line.quantity = quantity;
                line.updated_at = now;
            }
            None => {
                if self.lines.len() >= limits.max_lines {
                    return Err(CartError::TooManyLines {
                        max: limits.max_lines,
                    });
                }
                self.lines.push(CartLine {
                    product_id: product_id.clone(),
                    quantity,
                    added_at: now,
                    updated_at: now,
                });
            }
        }
        Ok(Effect::Upsert(product_id))
    }

    fn remove(&mut self, product_id: ProductId) -> Effect {
        match self.position(&product_id) {
            Some(i) => {
                self.lines.remove(i);
                Effect::Removed(product_id)
            }
            None => Effect::Unchanged,
        }
    }

    fn clear(&mut self) -> Effect {
        if self.lines.is_empty() {
            Effect::Unchanged
        } else {
            Effect::Cleared(self.lines.drain(..).map(|l| l.product_id).collect())
        }
    }
}

fn within_line_limit(
    product_id: &ProductId,
    requested: u64,
    limits: &Limits,
) -> Result<Quantity, CartError> {
    let too_many = || CartError::LineQuantityExceeded {
        product_id: product_id.clone(),
        requested,
        max: limits.max_line_quantity,
    };
    if requested > u64::from(limits.max_line_quantity) {
        return Err(too_many());
    }
    let raw = i64::try_from(requested).map_err(|_| too_many())?;
    Quantity::parse_add(raw).map_err(|_| too_many())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_line_quantity: 99,
            max_lines: 5,
            max_product_id_len: 64,
        }
    }

    fn pid(s: &str) -> ProductId {
        ProductId::parse(s, &Limits::default()).unwrap()
    }

    fn qty(n: i64) -> Quantity {
        Quantity::parse_add(n).unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn cart() -> Cart {
        Cart::empty(CartId::new(), Owner::Guest)
    }

    #[test]
    fn adding_twice_sums_and_bumps_version_each_time() {
        let mut c = cart();
        c.apply(CartOp::Add(pid("sku-1"), qty(2)), &limits(), at(1))
            .unwrap();
        let e = c
            .apply(CartOp::Add(pid("sku-1"), qty(3)), &limits(), at(2))
            .unwrap();
        assert_eq!(e, Effect::Upsert(pid("sku-1")));
        let line = c.line(&pid("sku-1")).unwrap();
        assert_eq!(line.quantity.get(), 5);
        assert_eq!(line.added_at, at(1));
        assert_eq!(line.updated_at, at(2));
        assert_eq!(c.version, 2);
        assert_eq!(c.updated_at, Some(at(2)));
    }

    #[test]
    fn adding_past_the_line_limit_is_refused_and_changes_nothing() {
        let mut c = cart();
        c.apply(CartOp::Add(pid("a"), qty(98)), &limits(), at(1))
            .unwrap();
        let before = c.clone();
        let err = c
            .apply(CartOp::Add(pid("a"), qty(2)), &limits(), at(2))
            .unwrap_err();
        assert_eq!(
            err,
            CartError::LineQuantityExceeded {
                product_id: pid("a"),
                requested: 100,
                max: 99
            }
        );
        assert_eq!(c, before);
        // 100 on an empty line is refused too.
        let err = c
            .apply(CartOp::Add(pid("b"), qty(100)), &limits(), at(3))
            .unwrap_err();
        assert!(matches!(err, CartError::LineQuantityExceeded { .. }));
    }

    #[test]
    fn huge_quantities_do_not_overflow() {
        let mut c = cart();
        c.apply(CartOp::Add(pid("a"), qty(50)), &limits(), at(1))
            .unwrap();
        let err = c
            .apply(CartOp::Add(pid("a"), qty(i64::MAX)), &limits(), at(2))
            .unwrap_err();
        assert!(matches!(err, CartError::LineQuantityExceeded { .. }));
        assert_eq!(c.line(&pid("a")).unwrap().quantity.get(), 50);
    }

    #[test]
    fn the_line_after_the_last_allowed_is_refused() {
        let mut c = cart();
        for i in 0..5 {
            c.apply(CartOp::Add(pid(&format!("p{i}")), qty(1)), &limits(), at(i))
                .unwrap();
        }
        let err = c
            .apply(CartOp::Add(pid("p5"), qty(1)), &limits(), at(9))
            .unwrap_err();
        assert_eq!(err, CartError::TooManyLines { max: 5 });
        // An existing line can still grow.
        c.apply(CartOp::Add(pid("p0"), qty(1)), &limits(), at(10))
            .unwrap();
        assert_eq!(c.line_count(), 5);
    }

    #[test]
    fn no_ops_keep_the_version() {
        let mut c = cart();
        assert_eq!(
            c.apply(CartOp::Remove(pid("a")), &limits(), at(1)).unwrap(),
            Effect::Unchanged
        );
        assert_eq!(
            c.apply(CartOp::Clear, &limits(), at(1)).unwrap(),
            Effect::Unchanged
        );
        c.apply(
            CartOp::Set(pid("a"), SetQuantity::To(qty(3))),
            &limits(),
            at(2),
        )
        .unwrap();
        assert_eq!(
            c.apply(
                CartOp::Set(pid("a"), SetQuantity::To(qty(3))),
                &limits(),
                at(3)
            )
            .unwrap(),
            Effect::Unchanged
        );
        assert_eq!(c.version, 1);
        assert_eq!(c.updated_at, Some(at(2)));
    }

    #[test]
    fn set_zero_removes_and_clear_empties() {
        let mut c = cart();
        c.apply(CartOp::Add(pid("a"), qty(1)), &limits(), at(1))
            .unwrap();
        c.apply(CartOp::Add(pid("b"), qty(1)), &limits(), at(1))
            .unwrap();
        let e = c
            .apply(CartOp::Set(pid("a"), SetQuantity::Remove), &limits(), at(2))
            .unwrap();
        assert_eq!(e, Effect::Removed(pid("a")));
        assert_eq!(
            c.apply(CartOp::Clear, &limits(), at(3)).unwrap(),
            Effect::Cleared(vec![pid("b")])
        );
        assert_eq!(c.line_count(), 0);
        assert_eq!(c.version, 4);
    }

    #[derive(Debug, Clone)]
    enum ModelOp {
        Add(usize, i64),
        Set(usize, i64),
        Remove(usize),
        Clear,
    }

    fn model_op() -> impl Strategy<Value = ModelOp> {
        prop_oneof![
            5 => (0..8usize, 1..120i64).prop_map(|(p, q)| ModelOp::Add(p, q)),
            3 => (0..8usize, 0..120i64).prop_map(|(p, q)| ModelOp::Set(p, q)),
            2 => (0..8usize).prop_map(ModelOp::Remove),
            1 => Just(ModelOp::Clear),
        ]
    }

    proptest! {
        /// The cart agrees with a naive map-based model after any sequence of
        /// operations, never breaks a limit, bumps the version once per real change,
        /// and leaves itself untouched when an operation is refused.
        #[test]
        fn cart_matches_a_naive_model(ops in proptest::collection::vec(model_op(), 0..60)) {
            let limits = limits();
            let mut c = cart();
            let mut model: BTreeMap<usize, u64> = BTreeMap::new();
            let mut changes = 0i64;
            for (t, op) in ops.into_iter().enumerate() {
                let before = c.clone();
                let now = at(t as i64);
                let (cart_op, expected): (CartOp, Result<Option<BTreeMap<usize, u64>>, ()>) = match op {
                    ModelOp::Add(p, q) => {
                        let mut m = model.clone();
                        let v = m.get(&p).copied().unwrap_or(0) + q as u64;
                        let ok = v <= 99 && (model.contains_key(&p) || model.len() < limits.max_lines);
                        m.insert(p, v);
                        (CartOp::Add(pid(&format!("p{p}")), qty(q)), if ok { Ok(Some(m)) } else { Err(()) })
                    }
                    ModelOp::Set(p, q) => {
                        let mut m = model.clone();
                        let set = Quantity::parse_set(q).unwrap();
                        let exp = if q == 0 {
                            if m.remove(&p).is_some() { Ok(Some(m)) } else { Ok(None) }
                        } else if q > 99 || (!model.contains_key(&p) && model.len() >= limits.max_lines) {
                            Err(())
                        } else if model.get(&p) == Some(&(q as u64)) {
                            Ok(None)
                        } else {
                            m.insert(p, q as u64);
                            Ok(Some(m))
                        };
                        (CartOp::Set(pid(&format!("p{p}")), set), exp)
                    }
                    ModelOp::Remove(p) => {
                        let mut m = model.clone();
                        let exp = if m.remove(&p).is_some() { Ok(Some(m)) } else { Ok(None) };
                        (CartOp::Remove(pid(&format!("p{p}"))), exp)
                    }
                    ModelOp::Clear => {
                        (CartOp::Clear, if model.is_empty() { Ok(None) } else { Ok(Some(BTreeMap::new())) })
                    }
                };
                let got = c.apply(cart_op, &limits, now);
                match expected {
                    Err(()) => {
                        prop_assert!(got.is_err());
                        prop_assert_eq!(&c, &before);
                    }
                    Ok(None) => {
                        prop_assert_eq!(got, Ok(Effect::Unchanged));
                        prop_assert_eq!(&c, &before);
                    }
                    Ok(Some(m)) => {
                        prop_assert!(got.unwrap().changed());
                        changes += 1;
                        model = m;
                        prop_assert_eq!(c.updated_at, Some(now));
                    }
                }
                prop_assert_eq!(c.version, changes);
                let actual: BTreeMap<usize, u64> = c.lines.iter()
                    .map(|l| (l.product_id.as_str()[1..].parse().unwrap(), u64::from(l.quantity.get())))
                    .collect();
                prop_assert_eq!(&actual, &model);
                prop_assert!(c.line_count() <= limits.max_lines);
                prop_assert!(c.lines.iter().all(|l| (1..=99).contains(&l.quantity.get())));
                prop_assert_eq!(c.item_count(), model.values().sum::<u64>());
            }
        }

        #[test]
        fn product_id_accepts_exactly_its_alphabet(s in "\\PC{0,80}") {
            let limits = Limits::default();
            let valid = !s.is_empty()
                && s.chars().count() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
            prop_assert_eq!(ProductId::parse(&s, &limits).is_ok(), valid);
        }

        #[test]
        fn valid_product_ids_round_trip(s in "[A-Za-z0-9._:-]{1,64}") {
            let p = ProductId::parse(&s, &Limits::default()).unwrap();
            prop_assert_eq!(p.as_str(), s.as_str());
        }

        #[test]
        fn quantities_parse_by_their_rules(n in any::<i64>()) {
            prop_assert_eq!(Quantity::parse_add(n).is_ok(), n >= 1);
            prop_assert_eq!(Quantity::parse_set(n).is_ok(), n >= 0);
            if n >= 1 {
                prop_assert!(Quantity::parse_add(n).unwrap().get() >= 1);
            }
        }
    }
}
