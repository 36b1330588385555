//! Offline sync: a batch of operations a client queued while offline, applied in order
//! onto the current cart (API.md "Offline sync").
//!
//! - Every `op_id` takes effect at most once ever: one already seen (in an earlier batch
//!   or earlier in this one) is a `Duplicate`, so replaying a batch changes nothing.
//! - Relative adds are rebased onto the current cart: another device's changes never
//!   make them fail (only the limits can).
//! - An absolute `set` or a `remove` of a line that changed after the client's
//!   `base_version` would silently overwrite someone else's change: it is a `Conflict`
//!   and is not applied.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};

use crate::cart::{CartOp, Effect};
use crate::quantity::SetQuantity;
use crate::{Cart, FieldError, Limits, ProductId, Quantity};

/// A client-chosen operation id: 1 to 64 visible ASCII characters (a UUID is best).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(String);

impl OpId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(FieldError::new(
                field,
                "must be 1 to 64 visible ASCII characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineChange {
    Add(Quantity),
    Set(SetQuantity),
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineOp {
    pub op_id: OpId,
    pub product_id: ProductId,
    pub change: OfflineChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Applied,
    Duplicate,
    Conflict,
    Rejected,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Applied => "applied",
            OpStatus::Duplicate => "duplicate",
            OpStatus::Conflict => "conflict",
            OpStatus::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpResult {
    pub op_id: OpId,
    pub status: OpStatus,
    pub detail: Option<String>,
}

/// What a batch did: one result per op, in order, and the changes to persist, each with
/// the cart version it produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub results: Vec<OpResult>,
    pub effects: Vec<(Effect, i64)>,
}

impl BatchOutcome {
    /// The ops that took a decision now (everything but duplicates): these op ids must
    /// be remembered so they never take effect again.
    pub fn decided(&self) -> impl Iterator<Item = &OpResult> {
        self.results
            .iter()
            .filter(|r| r.status != OpStatus::Duplicate)
    }
}

impl Cart {
    /// Applies `ops` in order. `seen` holds the op ids this cart has already recorded;
    /// `changed_at` the version at which each line last changed (created, updated,
    /// removed or cleared), as it stood before this batch.
    pub fn apply_offline(
        &mut self,
        base_version: i64,
        ops: Vec<OfflineOp>,
        seen: &HashSet<OpId>,
        changed_at: &HashMap<ProductId, i64>,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let mut seen_now: HashSet<OpId> = HashSet::new();
        for op in ops {
            if seen.contains(&op.op_id) || !seen_now.insert(op.op_id.clone()) {
                out.results.push(OpResult {
                    op_id: op.op_id,
                    status: OpStatus::Duplicate,
                    detail: Some("this op_id was already processed for this cart".to_owned()),
                });
                continue;
            }
            let absolute = !matches!(op.change, OfflineChange::Add(_));
            let changed = changed_at.get(&op.product_id).copied();
            if absolute && changed.is_some_and(|v| v > base_version) {
                out.results.push(OpResult {
                    op_id: op.op_id,
                    status: OpStatus::Conflict,
                    detail: Some(format!(
                        "line {} changed at version {} after base_version {base_version}; re-read the cart and decide again",
                        op.product_id,
                        changed.unwrap_or_default()
                    )),
                });
                continue;
            }
            let cart_op = match op.change {
                OfflineChange::Add(q) => CartOp::Add(op.product_id, q),
                OfflineChange::Set(q) => CartOp::Set(op.product_id, q),
                OfflineChange::Remove => CartOp::Remove(op.product_id),
            };
            match self.apply(cart_op, limits, now) {
                Ok(effect) => {
                    if effect.changed() {
                        out.effects.push((effect, self.version));
                    }
                    out.results.push(OpResult {
                        op_id: op.op_id,
                        status: OpStatus::Applied,
                        detail: None,
                    });
                }
                Err(e) => out.results.push(OpResult {
                    op_id: op.op_id,
                    status: OpStatus::Rejected,
                    detail: Some(e.to_string()),
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::{CartId, Owner};

    fn pid(i: usize) -> ProductId {
        ProductId::parse(&format!("p{i}"), &Limits::default()).unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    fn op(id: &str, p: usize, change: OfflineChange) -> OfflineOp {
        OfflineOp {
            op_id: OpId::parse(id, "op_id").unwrap(),
            product_id: pid(p),
            change,
        }
    }

    fn add(n: i64) -> OfflineChange {
        OfflineChange::Add(Quantity::parse_add(n).unwrap())
    }

    fn set(n: i64) -> OfflineChange {
        OfflineChange::Set(Quantity::parse_set(n).unwrap())
    }

    /// Applies a batch and then does what storage does: remember the decided op ids and
    /// the version each touched line changed at.
    fn run(
        cart: &mut Cart,
        base: i64,
        ops: Vec<OfflineOp>,
        seen: &mut HashSet<OpId>,
        changed_at: &mut HashMap<ProductId, i64>,
    ) -> BatchOutcome {
        let out = cart.apply_offline(base, ops, seen, changed_at, &Limits::default(), now());
        seen.extend(out.decided().map(|r| r.op_id.clone()));
        for (effect, v) in &out.effects {
            match effect {
                Effect::Upsert(p) | Effect::Removed(p) => {
                    changed_at.insert(p.clone(), *v);
                }
                Effect::Cleared(ps) => {
                    for p in ps {
                        changed_at.insert(p.clone(), *v);
                    }
                }
                Effect::Unchanged => {}
            }
        }
        out
    }

    #[test]
    fn absolute_ops_on_lines_changed_since_base_conflict_and_adds_rebase() {
        let mut cart = Cart::empty(CartId::new(), Owner::Guest);
        let (mut seen, mut changed) = (HashSet::new(), HashMap::new());
        run(
            &mut cart,
            0,
            vec![op("a", 1, add(2)), op("b", 2, add(1))],
            &mut seen,
            &mut changed,
        );
        let base = cart.version; // 2
                                 // Another device changes p1.
        run(
            &mut cart,
            base,
            vec![op("other", 1, set(5))],
            &mut seen,
            &mut changed,
        );
        let out = run(
            &mut cart,
            base,
            vec![
                op("s", 1, set(1)),
                op("r", 1, OfflineChange::Remove),
                op("x", 1, add(1)),
                op("y", 2, set(4)),
            ],
            &mut seen,
            &mut changed,
        );
        let statuses: Vec<_> = out.results.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            vec![
                OpStatus::Conflict,
                OpStatus::Conflict,
                OpStatus::Applied,
                OpStatus::Applied
            ]
        );
        assert_eq!(cart.line(&pid(1)).unwrap().quantity.get(), 6);
        assert_eq!(cart.line(&pid(2)).unwrap().quantity.get(), 4);
    }

    #[test]
    fn rejected_ops_are_remembered_and_never_apply_later() {
        let mut cart = Cart::empty(CartId::new(), Owner::Guest);
        let (mut seen, mut changed) = (HashSet::new(), HashMap::new());
        run(
            &mut cart,
            0,
            vec![op("a", 1, add(98))],
            &mut seen,
            &mut changed,
        );
        let out = run(
            &mut cart,
            1,
            vec![op("big", 1, add(5))],
            &mut seen,
            &mut changed,
        );
        assert_eq!(out.results[0].status, OpStatus::Rejected);
        run(
            &mut cart,
            1,
            vec![op("shrink", 1, set(1))],
            &mut seen,
            &mut changed,
        );
        let replay = run(
            &mut cart,
            1,
            vec![op("big", 1, add(5))],
            &mut seen,
            &mut changed,
        );
        assert_eq!(replay.results[0].status, OpStatus::Duplicate);
        assert_eq!(cart.line(&pid(1)).unwrap().quantity.get(), 1);
    }

    #[test]
    fn an_op_id_twice_in_one_batch_applies_once() {
        let mut cart = Cart::empty(CartId::new(), Owner::Guest);
        let (mut seen, mut changed) = (HashSet::new(), HashMap::new());
        let out = run(
            &mut cart,
            0,
            vec![op("a", 1, add(1)), op("a", 1, add(1))],
            &mut seen,
            &mut changed,
        );
        assert_eq!(out.results[1].status, OpStatus::Duplicate);
        assert_eq!(cart.line(&pid(1)).unwrap().quantity.get(), 1);
        assert_eq!(cart.version, 1);
    }

    #[test]
    fn op_ids_are_visible_ascii() {
        assert!(OpId::parse("3f2b-…", "op_id").is_err());
        assert!(OpId::parse("", "op_id").is_err());
        assert!(OpId::parse(&"a".repeat(65), "op_id").is_err());
        assert!(OpId::parse("a b", "op_id").is_err());
        assert!(OpId::parse("018f7c1e-7d3a-7c2b-9d7e-1f2a3b4c5d6e", "op_id").is_ok());
    }

    fn change() -> impl Strategy<Value = OfflineChange> {
        prop_oneof![
            (1..40i64).prop_map(add),
            (0..40i64).prop_map(set),
            Just(OfflineChange::Remove),
        ]
    }

    fn batch(ids: std::ops::Range<usize>) -> impl Strategy<Value = Vec<OfflineOp>> {
        proptest::collection::vec((ids, 0..5usize, change()), 0..25).prop_map(|v| {
            v.into_iter()
                .map(|(id, p, c)| op(&format!("op-{id}"), p, c))
                .collect()
        })
    }

    proptest! {
        /// Replaying a batch, whole or any part of it, changes nothing: every op is a
        /// duplicate the second time.
        #[test]
        fn replaying_any_part_of_a_batch_changes_nothing(
            ops in batch(0..30),
            cut in 0usize..25,
        ) {
            let mut cart = Cart::empty(CartId::new(), Owner::Guest);
            let (mut seen, mut changed) = (HashSet::new(), HashMap::new());
            run(&mut cart, 0, ops.clone(), &mut seen, &mut changed);
            let after = cart.clone();
            let part: Vec<_> = ops.iter().skip(cut.min(ops.len())).cloned().collect();
            for replay in [ops, part] {
                let out = run(&mut cart, 0, replay, &mut seen, &mut changed);
                prop_assert!(out.results.iter().all(|r| r.status == OpStatus::Duplicate));
                prop_assert!(out.effects.is_empty());
                prop_assert_eq!(&cart, &after);
            }
        }

        /// Adds rebase: with no limit in play, a batch of adds lands in full on top of
        /// whatever the cart holds, whatever base_version the client had.
        #[test]
        fn adds_always_rebase_onto_the_current_cart(
            before in proptest::collection::vec((0..5usize, 1..10i64), 0..10),
            adds in proptest::collection::vec((0..5usize, 1..10i64), 1..10),
            base in 0i64..20,
        ) {
            let mut cart = Cart::empty(CartId::new(), Owner::Guest);
            let (mut seen, mut changed) = (HashSet::new(), HashMap::new());
            let pre: Vec<_> = before.iter().enumerate().map(|(i, (p, q))| op(&format!("pre-{i}"), *p, add(*q))).collect();
            run(&mut cart, 0, pre, &mut seen, &mut changed);
            let expected: Vec<u32> = (0..5).map(|p| {
                cart.line(&pid(p)).map_or(0, |l| l.quantity.get())
                    + adds.iter().filter(|(ap, _)| *ap == p).map(|(_, q)| *q as u32).sum::<u32>()
            }).collect();
            let batch: Vec<_> = adds.iter().enumerate().map(|(i, (p, q))| op(&format!("add-{i}"), *p, add(*q))).collect();
            let out = run(&mut cart, base, batch, &mut seen, &mut changed);
            prop_assert!(out.results.iter().all(|r| r.status == OpStatus::Applied));
            for (p, want) in expected.iter().enumerate() {
                prop_assert_eq!(cart.line(&pid(p)).map_or(0, |l| l.quantity.get()), *want);
            }
        }

        /// A set or remove conflicts exactly when its line changed after base_version,
        /// and a conflicting op never changes the cart.
        #[test]
        fn absolute_ops_conflict_exactly_when_their_line_moved(
            ops in batch(0..30),
            base in 0i64..10,
            moved in proptest::collection::hash_map(0..5usize, 0i64..20, 0..5),
        ) {
            let mut cart = Cart::empty(CartId::new(), Owner::Guest);
            let changed: HashMap<ProductId, i64> = moved.iter().map(|(p, v)| (pid(*p), *v)).collect();
            let out = cart.apply_offline(base, ops.clone(), &HashSet::new(), &changed, &Limits::default(), now());
            let mut first = HashSet::new();
            for (o, r) in ops.iter().zip(&out.results) {
                if !first.insert(o.op_id.clone()) {
                    prop_assert_eq!(r.status, OpStatus::Duplicate);
                    continue;
                }
                let moved_after = changed.get(&o.product_id).is_some_and(|v| *v > base);
                let absolute = !matches!(o.change, OfflineChange::Add(_));
                prop_assert_eq!(r.status == OpStatus::Conflict, absolute && moved_after);
            }
            prop_assert_eq!(cart.version as usize, out.effects.len());
        }
    }
}
