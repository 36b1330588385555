//! Merge on login (API.md "Merge on login"): a guest cart's lines go into the user's
//! cart. Pure, like every cart rule: cart-svc loads both carts under their row locks,
//! merges here, and writes the effects, marking the guest cart merged in the same
//! transaction so the merge happens at most once.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::{Cart, CartLine, Effect, Limits, ProductId, Quantity};

/// What happens to a product that both carts hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeStrategy {
    /// The quantities are added, capped at the line limit (API.md's default).
    #[default]
    Sum,
    /// The larger quantity wins.
    Max,
    /// The user's quantity wins; guest-only lines are still added.
    KeepUser,
    /// The user's cart becomes exactly the guest cart (the user's lines are removed).
    ReplaceWithGuest,
}

impl MergeStrategy {
    pub const NAMES: [&'static str; 4] = ["sum", "max", "keep-user", "replace-with-guest"];

    pub fn as_str(self) -> &'static str {
        match self {
            MergeStrategy::Sum => "sum",
            MergeStrategy::Max => "max",
            MergeStrategy::KeepUser => "keep-user",
            MergeStrategy::ReplaceWithGuest => "replace-with-guest",
        }
    }
}

impl FromStr for MergeStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sum" => Ok(MergeStrategy::Sum),
            "max" => Ok(MergeStrategy::Max),
            "keep-user" => Ok(MergeStrategy::KeepUser),
            "replace-with-guest" => Ok(MergeStrategy::ReplaceWithGuest),
            other => Err(format!(
                "unknown merge strategy {other:?}; expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for MergeStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a merge did to the user's cart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergeOutcome {
    /// One per line written or removed (empty when the merge changed nothing).
    pub effects: Vec<Effect>,
    /// Guest lines that did not fit under the line limit, in the guest cart's order.
    pub dropped: Vec<ProductId>,
    /// Lines whose merged quantity was cut down to the per-line limit.
    pub capped: Vec<ProductId>,
    /// Guest lines that went into the user's cart (new or combined).
    pub merged_lines: usize,
}

impl Cart {
    /// Merges `guest` lines into this (the user's) cart at `now`. The whole merge is one
    /// change: the version grows by one if anything changed, and not at all otherwise.
    pub fn merge_from(
        &mut self,
        guest: &[CartLine],
        strategy: MergeStrategy,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        let max = limits.max_line_quantity.max(1);
        if strategy == MergeStrategy::ReplaceWithGuest {
            let keep: Vec<&ProductId> = guest.iter().map(|l| &l.product_id).collect();
            let (gone, kept): (Vec<CartLine>, Vec<CartLine>) = std::mem::take(&mut self.lines)
                .into_iter()
                .partition(|l| !keep.contains(&&l.product_id));
            self.lines = kept;
            out.effects
                .extend(gone.into_iter().map(|l| Effect::Removed(l.product_id)));
        }
        for g in guest {
            let guest_q = g.quantity.get();
            let full = self.lines.len() >= limits.max_lines;
            match self.lines.iter_mut().find(|l| l.product_id == g.product_id) {
                Some(line) => {
                    let user_q = line.quantity.get();
                    let wanted = match strategy {
                        MergeStrategy::Sum => u64::from(user_q) + u64::from(guest_q),
                        MergeStrategy::Max => u64::from(user_q.max(guest_q)),
                        MergeStrategy::KeepUser => u64::from(user_q),
                        MergeStrategy::ReplaceWithGuest => u64::from(guest_q),
                    };
                    let q = capped(wanted, max, &g.product_id, &mut out.capped);
                    out.merged_lines += 1;
                    if q != user_q {
                        line.quantity = quantity(q);
                        line.updated_at = now;
                        out.effects.push(Effect::Upsert(g.product_id.clone()));
                    }
                }
                None if full => {
                    out.dropped.push(g.product_id.clone());
                }
                None => {
                    let q = capped(u64::from(guest_q), max, &g.product_id, &mut out.capped);
                    self.lines.push(CartLine {
                        product_id: g.product_id.clone(),
                        quantity: quantity(q),
                        // New to this cart now: it goes after the user's own lines, in
                        // the response as in every later read.
                        added_at: now,
                        updated_at: now,
                    });
                    out.merged_lines += 1;
                    out.effects.push(Effect::Upsert(g.product_id.clone()));
                }
            }
        }
        if !out.effects.is_empty() {
            self.version += 1;
            self.updated_at = Some(now);
        }
        out
    }
}

fn capped(wanted: u64, max: u32, product: &ProductId, capped: &mut Vec<ProductId>) -> u32 {
    if wanted > u64::from(max) {
        capped.push(product.clone());
        max
    } else {
        // `wanted` ≤ max ≤ u32::MAX here.
        u32::try_from(wanted).unwrap_or(max)
    }
}

fn quantity(q: u32) -> Quantity {
    // Every caller passes 1 ≤ q ≤ the line limit.
    Quantity::from_stored(i32::try_from(q).unwrap_or(i32::MAX)).unwrap_or(Quantity::ONE)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::{CartId, Owner, UserId};

    fn limits(max_lines: usize) -> Limits {
        Limits {
            max_line_quantity: 99,
            max_lines,
            max_product_id_len: 64,
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn line(p: &str, q: u32) -> CartLine {
        CartLine {
            product_id: ProductId::parse(p, &Limits::default()).unwrap(),
            quantity: quantity(q),
            added_at: t(0),
            updated_at: t(0),
        }
    }

    fn user_cart(lines: Vec<CartLine>) -> Cart {
        Cart {
            id: CartId::new(),
            owner: Owner::User(UserId::new()),
            version: 3,
            lines,
            updated_at: Some(t(0)),
        }
    }

    fn qty(c: &Cart, p: &str) -> Option<u32> {
        c.lines
            .iter()
            .find(|l| l.product_id.as_str() == p)
            .map(|l| l.quantity.get())
    }

    #[test]
    fn sum_adds_and_caps_at_the_line_limit() {
        let mut c = user_cart(vec![line("a", 60), line("b", 1)]);
        let out = c.merge_from(
            &[line("a", 50), line("c", 2)],
            MergeStrategy::Sum,
            &limits(10),
            t(5),
        );
        assert_eq!(qty(&c, "a"), Some(99));
        assert_eq!(qty(&c, "b"), Some(1));
        assert_eq!(qty(&c, "c"), Some(2));
        assert_eq!(out.capped.len(), 1);
        assert_eq!(out.merged_lines, 2);
        assert_eq!(c.version, 4, "one merge is one version");
        assert_eq!(c.updated_at, Some(t(5)));
    }

    #[test]
    fn lines_past_the_line_limit_are_dropped_and_reported() {
        let mut c = user_cart(vec![line("a", 1), line("b", 1)]);
        let out = c.merge_from(
            &[line("a", 1), line("c", 1), line("d", 1)],
            MergeStrategy::Sum,
            &limits(3),
            t(5),
        );
        assert_eq!(c.lines.len(), 3);
        assert_eq!(qty(&c, "c"), Some(1));
        assert_eq!(
            out.dropped.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["d"]
        );
    }

    #[test]
    fn strategies_differ_only_on_shared_lines() {
        let guest = [line("a", 5), line("new", 1)];
        let run = |s| {
            let mut c = user_cart(vec![line("a", 3), line("mine", 2)]);
            c.merge_from(&guest, s, &limits(10), t(5));
            (qty(&c, "a"), qty(&c, "mine"), qty(&c, "new"))
        };
        assert_eq!(run(MergeStrategy::Sum), (Some(8), Some(2), Some(1)));
        assert_eq!(run(MergeStrategy::Max), (Some(5), Some(2), Some(1)));
        assert_eq!(run(MergeStrategy::KeepUser), (Some(3), Some(2), Some(1)));
        assert_eq!(
            run(MergeStrategy::ReplaceWithGuest),
            (Some(5), None, Some(1))
        );
    }

    #[test]
    fn an_empty_or_already_contained_guest_changes_nothing() {
        let mut c = user_cart(vec![line("a", 3)]);
        let out = c.merge_from(&[], MergeStrategy::Sum, &limits(10), t(5));
        assert!(out.effects.is_empty());
        let out = c.merge_from(&[line("a", 2)], MergeStrategy::KeepUser, &limits(10), t(5));
        assert!(out.effects.is_empty());
        assert_eq!(c.version, 3);
    }

    #[test]
    fn strategy_names_round_trip() {
        for name in MergeStrategy::NAMES {
            assert_eq!(name.parse::<MergeStrategy>().unwrap().as_str(), name);
        }
        assert!("add".parse::<MergeStrategy>().is_err());
    }

    proptest! {
        /// Whatever the carts, a sum merge keeps every limit, never loses a unit that
        /// fits, and reports every guest line as merged or dropped.
        #[test]
        fn sum_merge_keeps_limits_and_accounts_for_every_line(
            user in prop::collection::btree_map("[a-f]", 1u32..=99, 0..6),
            guest in prop::collection::btree_map("[a-h]", 1u32..=99, 0..8),
            max_lines in 1usize..8,
        ) {
            let user_lines: Vec<CartLine> = user.iter().take(max_lines).map(|(p, q)| line(p, *q)).collect();
            let guest_lines: Vec<CartLine> = guest.iter().map(|(p, q)| line(p, *q)).collect();
            let mut c = user_cart(user_lines.clone());
            let out = c.merge_from(&guest_lines, MergeStrategy::Sum, &limits(max_lines), t(9));
            prop_assert!(c.lines.len() <= max_lines);
            prop_assert!(c.lines.iter().all(|l| l.quantity.get() <= 99));
            prop_assert_eq!(out.merged_lines + out.dropped.len(), guest_lines.len());
            for g in &guest_lines {
                let before = user_lines.iter().find(|l| l.product_id == g.product_id).map_or(0, |l| l.quantity.get());
                let after = qty(&c, g.product_id.as_str());
                if out.dropped.contains(&g.product_id) {
                    prop_assert_eq!(after, None);
                } else {
                    prop_assert_eq!(after, Some((before + g.quantity.get()).min(99)));
                }
            }
            for u in &user_lines {
                prop_assert!(qty(&c, u.product_id.as_str()).is_some(), "a user line never disappears");
            }
        }
    }
}
