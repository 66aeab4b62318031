//! Version vectors as HQ sees them: node id (the libp2p PeerId, base58) -> highest contiguous sequence
//! number. HQ needs only to compare them; it never learns what the records were.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest node id accepted (a base58 Ed25519 PeerId is 52 characters).
pub const MAX_NODE_ID_LEN: usize = 64;
/// Most nodes a store's version vector may name.
pub const MAX_NODES: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(pub BTreeMap<String, u64>);

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Equal,
    /// Has seen everything the other has, and more.
    Dominates,
    DominatedBy,
    /// Each has seen something the other has not (two sides of a partition).
    Concurrent,
}

impl VersionVector {
    pub fn get(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Records named, saturating: the entries come from the network, and a sum that wrapped (release)
    /// or panicked (debug) would let a crafted vector win or crash the tie-break.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0u64, |t, &v| t.saturating_add(v))
    }

    /// The exact sum: fewer than 2^64 entries below 2^64 each cannot overflow 128 bits.
    fn total_wide(&self) -> u128 {
        self.0.values().map(|&v| u128::from(v)).sum()
    }

    /// Whether this vector has seen record `seq` of `node`.
    pub fn covers(&self, node: &str, seq: u64) -> bool {
        self.get(node) >= seq
    }

    pub fn relation(&self, other: &VersionVector) -> Relation {
        let mut more = false;
        let mut less = false;
        for k in self.0.keys().chain(other.0.keys()) {
            match self.get(k).cmp(&other.get(k)) {
                Ordering::Greater => more = true,
                Ordering::Less => less = true,
                Ordering::Equal => {}
            }
        }
        match (more, less) {
            (false, false) => Relation::Equal,
            (true, false) => Relation::Dominates,
            (false, true) => Relation::DominatedBy,
            (true, true) => Relation::Concurrent,
        }
    }

    /// At least as new as `other` (equal or dominating).
    pub fn includes(&self, other: &VersionVector) -> bool {
        matches!(self.relation(other), Relation::Equal | Relation::Dominates)
    }

    /// A total order used only to break ties between concurrent vectors: more records first, then the
    /// canonical text. Every HQ replica, whatever the arrival order, keeps the same one.
    pub fn tie_break(&self, other: &VersionVector) -> Ordering {
        self.total_wide()
            .cmp(&other.total_wide())
            .then_with(|| self.0.iter().cmp(other.0.iter()))
    }

    pub fn is_well_formed(&self) -> bool {
        self.0.len() <= MAX_NODES
            && self
                .0
                .keys()
                .all(|k| !k.is_empty() && k.len() <= MAX_NODE_ID_LEN && k.chars().all(|c| c.is_ascii_alphanumeric()))
    }
}

/// What HQ does with an incoming summary for a (store, period) it may already hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing stored yet.
    Insert,
    /// The incoming one has seen more: it replaces the stored one.
    Replace,
    /// The same version vector: a repeat (retry, or the other leader). Nothing changes.
    Unchanged,
    /// Older than what is stored (a replay, or a slow leader). Refused; nothing changes.
    Stale,
    /// Concurrent, and the tie-break prefers the incoming one.
    ConcurrentReplace,
    /// Concurrent, and the tie-break keeps the stored one.
    ConcurrentKeep,
}

impl Decision {
    pub fn decide(stored: Option<&VersionVector>, incoming: &VersionVector) -> Decision {
        let Some(stored) = stored else {
            return Decision::Insert;
        };
        match incoming.relation(stored) {
            Relation::Equal => Decision::Unchanged,
            Relation::Dominates => Decision::Replace,
            Relation::DominatedBy => Decision::Stale,
            Relation::Concurrent => {
                if incoming.tie_break(stored) == Ordering::Greater {
                    Decision::ConcurrentReplace
                } else {
                    Decision::ConcurrentKeep
                }
            }
        }
    }

    pub fn writes(self) -> bool {
        matches!(self, Decision::Insert | Decision::Replace | Decision::ConcurrentReplace)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Insert => "stored",
            Decision::Replace => "replaced",
            Decision::Unchanged => "unchanged",
            Decision::Stale => "stale",
            Decision::ConcurrentReplace => "concurrent_replaced",
            Decision::ConcurrentKeep => "concurrent_kept",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn relations() {
        let a = vv(&[("a", 3), ("b", 1)]);
        assert_eq!(a.relation(&a.clone()), Relation::Equal);
        assert_eq!(vv(&[("a", 3), ("b", 2)]).relation(&a), Relation::Dominates);
        assert_eq!(vv(&[("a", 3)]).relation(&a), Relation::DominatedBy);
        assert_eq!(vv(&[("a", 4)]).relation(&a), Relation::Concurrent);
        // A missing entry is zero.
        assert_eq!(vv(&[("a", 3), ("b", 1), ("c", 0)]).relation(&a), Relation::Equal);
    }

    #[test]
    fn decisions() {
        let stored = vv(&[("a", 3), ("b", 1)]);
        assert_eq!(Decision::decide(None, &stored), Decision::Insert);
        assert_eq!(Decision::decide(Some(&stored), &stored), Decision::Unchanged);
        assert_eq!(
            Decision::decide(Some(&stored), &vv(&[("a", 3), ("b", 2)])),
            Decision::Replace
        );
        assert_eq!(
            Decision::decide(Some(&stored), &vv(&[("a", 1), ("b", 1)])),
            Decision::Stale
        );
    }

    #[test]
    fn sums_of_huge_entries_neither_wrap_nor_panic() {
        let huge = vv(&[("a", u64::MAX), ("b", u64::MAX)]);
        let less = vv(&[("a", u64::MAX), ("c", 1)]);
        assert_eq!(huge.total(), u64::MAX);
        // A wrapped sum would make `huge` the smaller one.
        assert_eq!(huge.tie_break(&less), Ordering::Greater);
        assert_eq!(Decision::decide(Some(&less), &huge), Decision::ConcurrentReplace);
    }

    proptest! {
        /// Whatever order two concurrent summaries arrive in, HQ ends with the same one.
        #[test]
        fn concurrent_resolution_is_order_independent(a in proptest::collection::btree_map("[a-d]", 0u64..5, 1..4),
                                                      b in proptest::collection::btree_map("[a-d]", 0u64..5, 1..4)) {
            let (a, b) = (VersionVector(a), VersionVector(b));
            prop_assume!(a.relation(&b) == Relation::Concurrent);
            let keep = |first: &VersionVector, second: &VersionVector| -> VersionVector {
                if Decision::decide(Some(first), second).writes() { second.clone() } else { first.clone() }
            };
            prop_assert_eq!(keep(&a, &b), keep(&b, &a));
        }
    }
}
