//! Uplink election: which node of the store sends summaries to HQ. A pure function of the heartbeats
//! a node has heard and `now` — no messages of its own, no votes — so every node that heard the same
//! heartbeats names the same leader.
//!
//! Preference: nodes that reached HQ at their last probe, then higher configured priority, then the
//! smallest node id. A node is live while its last heartbeat is younger than `timeout_ms`; the leader
//! changes when it misses heartbeats for that long (the failover time). During a partition each side
//! may name its own leader: harmless, because HQ keeps per (store, period) the summary whose version
//! vector dominates and uploads are idempotent (issue [4/7]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::Origin;

/// What every node gossips a few times a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: Origin,
    /// Whether the node reached HQ at its last probe.
    pub hq_reachable: bool,
    /// Configured preference (higher wins), e.g. the edge box with the wired uplink.
    pub priority: u8,
}

#[derive(Debug)]
pub struct Election {
    me: Origin,
    timeout_ms: u64,
    seen: BTreeMap<Origin, (Heartbeat, u64)>,
}

impl Election {
    pub fn new(me: Origin, timeout_ms: u64) -> Self {
        Self {
            me,
            timeout_ms,
            seen: BTreeMap::new(),
        }
    }

    /// Records a heartbeat (ours included) heard at `now_ms`.
    pub fn heard(&mut self, hb: Heartbeat, now_ms: u64) {
        self.seen.insert(hb.node, (hb, now_ms));
    }

    /// Nodes whose heartbeat is recent enough.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &Heartbeat> {
        self.seen
            .values()
            .filter(move |(_, at)| now_ms.saturating_sub(*at) <= self.timeout_ms)
            .map(|(hb, _)| hb)
    }

    /// Every node heard of (live or not yet pruned), with when it was last heard.
    pub fn seen(&self) -> impl Iterator<Item = (&Heartbeat, u64)> {
        self.seen.values().map(|(hb, at)| (hb, *at))
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    pub fn leader(&self, now_ms: u64) -> Option<Origin> {
        self.live(now_ms)
            .min_by(|a, b| {
                b.hq_reachable
                    .cmp(&a.hq_reachable)
                    .then(b.priority.cmp(&a.priority))
                    .then(a.node.cmp(&b.node))
            })
            .map(|hb| hb.node)
    }

    pub fn am_leader(&self, now_ms: u64) -> bool {
        self.leader(now_ms) == Some(self.me)
    }

    /// Forgets nodes silent for much longer than the timeout (bounded memory).
    pub fn prune(&mut self, now_ms: u64) {
        let keep = self.timeout_ms.saturating_mul(10);
        self.seen.retain(|_, (_, at)| now_ms.saturating_sub(*at) <= keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> Origin {
        Origin([i; 32])
    }

    fn hb(i: u8, reachable: bool, priority: u8) -> Heartbeat {
        Heartbeat {
            node: node(i),
            hq_reachable: reachable,
            priority,
        }
    }

    #[test]
    fn reachable_first_then_priority_then_smallest_id() {
        let mut e = Election::new(node(1), 15_000);
        for h in [hb(1, false, 9), hb(2, true, 0), hb(3, true, 5), hb(4, true, 5)] {
            e.heard(h, 0);
        }
        assert_eq!(
            e.leader(1000),
            Some(node(3)),
            "reachable, highest priority, smaller id than 4"
        );
        e.heard(hb(3, false, 5), 2000);
        assert_eq!(e.leader(2000), Some(node(4)));
        assert!(!e.am_leader(2000));
    }

    #[test]
    fn the_same_heartbeats_give_the_same_leader_on_every_node() {
        let beats = [hb(5, true, 1), hb(7, true, 1), hb(6, false, 3)];
        let leaders: Vec<Option<Origin>> = [5u8, 6, 7]
            .iter()
            .map(|&me| {
                let mut e = Election::new(node(me), 15_000);
                // Heard in a different order on each node.
                for (k, h) in beats.iter().cycle().skip(me as usize).take(3).enumerate() {
                    e.heard(*h, k as u64);
                }
                e.leader(10)
            })
            .collect();
        assert!(leaders.iter().all(|l| *l == Some(node(5))), "{leaders:?}");
    }

    #[test]
    fn a_silent_leader_is_replaced_after_the_timeout() {
        let mut e = Election::new(node(2), 15_000);
        e.heard(hb(1, true, 0), 0);
        e.heard(hb(2, true, 0), 0);
        assert_eq!(e.leader(1000), Some(node(1)));
        // Node 1 goes quiet; node 2 keeps beating.
        for t in (5_000..=20_000).step_by(5_000) {
            e.heard(hb(2, true, 0), t);
        }
        assert_eq!(e.leader(15_000), Some(node(1)), "not before the timeout");
        assert_eq!(e.leader(15_001), Some(node(2)));
        assert!(e.am_leader(20_000));
        // It comes back: leadership returns to the preferred node.
        e.heard(hb(1, true, 0), 21_000);
        assert_eq!(e.leader(21_000), Some(node(1)));
        e.prune(1_000_000);
        assert_eq!(e.leader(1_000_000), None);
    }

    #[test]
    fn each_side_of_a_partition_names_its_own_leader() {
        let mut left = Election::new(node(1), 15_000);
        let mut right = Election::new(node(3), 15_000);
        for h in [hb(1, true, 0), hb(2, true, 0)] {
            left.heard(h, 0);
        }
        for h in [hb(3, true, 0), hb(4, true, 0)] {
            right.heard(h, 0);
        }
        assert_eq!((left.leader(1), right.leader(1)), (Some(node(1)), Some(node(3))));
    }
}
