//! Uplink election: which node of the store sends summaries to HQ. A pure function of the heartbeats
//! a node has heard and `now` — no messages of its own, no votes — so every node that heard the same
//! heartbeats names the same leader.
//!
//! Preference: nodes that reached HQ at their last probe, then nodes not demoted for stalling, then
//! higher configured priority, then the smallest node id. A node is live while its last heartbeat is
//! younger than `timeout_ms`; the leader changes when it misses heartbeats for that long (the failover
//! time). During a partition each side may name its own leader: harmless, because HQ keeps per (store,
//! period) the summary whose version vector dominates and uploads are idempotent (issue [4/7]).
//!
//! **Stalled leaders** (issue 13): reaching HQ's probe is not the same as getting summaries through.
//! A leader whose uplink answers the probe but never gets an upload acknowledged (a wrong HQ, a proxy
//! that refuses posts, an uplink that never sends) would otherwise lead for ever while HQ hears
//! nothing. So heartbeats carry `last_progress_ms`: when the node's uplink last owed HQ nothing or had
//! an upload acknowledged. With a stall limit set, a leader that reaches HQ and whose progress is older
//! than the limit — counted from when this node first named it leader, if that is later — is demoted
//! for [`STALL_PENALTY`] limits whenever another live node reaches HQ and is not demoted itself.
//! Demoted nodes rank below every reachable node that is not, so the lead passes on and does not come
//! straight back; they are not excluded outright, so a store whose every reachable node stalled still
//! has a leader (the best of them) rather than none. The demoted node computes the same from its own
//! heartbeat and steps down.
//!
//! Clock skew between nodes does not enter: [`progress_on_our_clock`] moves a heard progress time onto
//! this node's clock using the sender's own age of it (its send time minus its progress time, both read
//! on its clock). What remains is network delay, a step of the sender's clock between its progress and
//! its beat, and nodes naming a new leader a heartbeat apart: the mesh adds a heartbeat interval and
//! the uplink's report interval to the limit, and during the seconds nodes disagree two leaders may
//! both upload (idempotent at HQ) or none does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::Origin;

/// How many stall limits a demoted leader ranks below the others: long enough that leadership does
/// not flap straight back to a node whose uplink is still broken, short enough that one whose uplink
/// was fixed leads again the same hour (4 windows of 60 s: 40 minutes).
pub const STALL_PENALTY: u64 = 10;

/// What every node gossips a few times a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: Origin,
    /// Whether the node reached HQ at its last probe.
    pub hq_reachable: bool,
    /// Configured preference (higher wins), e.g. the edge box with the wired uplink.
    pub priority: u8,
    /// Wall ms when the node's uplink last owed HQ nothing or had an upload acknowledged; 0: unknown
    /// (no uplink progress yet, or a node from before the field). Absent on the wire when 0, so older
    /// heartbeats and older nodes read each other unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_progress_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A heard heartbeat's progress time on this node's clock: `heard_ms` less the sender's own age of
/// its progress (`sent_ms - last_progress_ms`, both its clock), so no skew between the two clocks
/// enters. 0 (unknown) stays 0; a progress the sender dates after its own send time counts as just now.
pub fn progress_on_our_clock(last_progress_ms: u64, sent_ms: u64, heard_ms: u64) -> u64 {
    if last_progress_ms == 0 {
        return 0;
    }
    heard_ms.saturating_sub(sent_ms.saturating_sub(last_progress_ms))
}

#[derive(Debug)]
pub struct Election {
    me: Origin,
    timeout_ms: u64,
    /// A leader reaching HQ without progress for longer than this is demoted; 0: never.
    stall_ms: u64,
    seen: BTreeMap<Origin, (Heartbeat, u64)>,
    /// The leader this node last named, and since when (this node's clock): a node that just took the
    /// lead is judged from then, not from progress it had (or lacked) as a follower.
    leading: Option<(Origin, u64)>,
    /// Nodes demoted for stalling, until when (this node's clock). Only nodes in `seen`, pruned.
    demoted: BTreeMap<Origin, u64>,
    demotions: u64,
}

impl Election {
    pub fn new(me: Origin, timeout_ms: u64) -> Self {
        Self {
            me,
            timeout_ms,
            stall_ms: 0,
            seen: BTreeMap::new(),
            leading: None,
            demoted: BTreeMap::new(),
            demotions: 0,
        }
    }

    /// Demotes a leader that reaches HQ but makes no progress for `stall_ms` (0: never).
    pub fn with_stall(mut self, stall_ms: u64) -> Self {
        self.stall_ms = stall_ms;
        self
    }

    /// Records a heartbeat (ours included) heard at `now`. Its `last_progress_ms` must be on this
    /// node's clock (see [`progress_on_our_clock`]).
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

    pub fn stall_ms(&self) -> u64 {
        self.stall_ms
    }

    /// Nodes demoted for stalling, with when their demotion ends.
    pub fn demoted(&self, now_ms: u64) -> impl Iterator<Item = (Origin, u64)> + '_ {
        self.demoted
            .iter()
            .filter(move |(_, until)| **until > now_ms)
            .map(|(o, until)| (*o, *until))
    }

    /// Demotions so far (a node demoted twice counts twice), for logs and metrics.
    pub fn demotions(&self) -> u64 {
        self.demotions
    }

    /// The leader now. Takes `&mut self`: it notes when the leader it names took the lead and demotes a
    /// stalled one, so ask it regularly (every heartbeat at least), not only when a leader is needed.
    pub fn leader(&mut self, now_ms: u64) -> Option<Origin> {
        self.demoted.retain(|_, until| *until > now_ms);
        // Each demotion needs a reachable node not demoted to pass the lead to, and demotes a node that
        // was not: at most one pass per node heard of, plus the last.
        for _ in 0..=self.seen.len() {
            let Some(best) = self.best(now_ms) else {
                self.leading = None;
                return None;
            };
            let since = match self.leading {
                Some((l, since)) if l == best.node => since,
                _ => {
                    self.leading = Some((best.node, now_ms));
                    now_ms
                }
            };
            if !self.stalled(&best, since, now_ms) {
                return Some(best.node);
            }
            let until = now_ms.saturating_add(self.stall_ms.saturating_mul(STALL_PENALTY));
            self.demoted.insert(best.node, until);
            self.demotions = self.demotions.saturating_add(1);
        }
        self.best(now_ms).map(|hb| hb.node)
    }

    pub fn am_leader(&mut self, now_ms: u64) -> bool {
        self.leader(now_ms) == Some(self.me)
    }

    /// Forgets nodes silent for much longer than the timeout, and their demotions (bounded memory).
    pub fn prune(&mut self, now_ms: u64) {
        let keep = self.timeout_ms.saturating_mul(10);
        self.seen.retain(|_, (_, at)| now_ms.saturating_sub(*at) <= keep);
        let seen = &self.seen;
        self.demoted.retain(|o, until| *until > now_ms && seen.contains_key(o));
    }

    fn best(&self, now_ms: u64) -> Option<Heartbeat> {
        self.live(now_ms)
            .min_by(|a, b| {
                b.hq_reachable
                    .cmp(&a.hq_reachable)
                    .then(
                        self.demoted
                            .contains_key(&a.node)
                            .cmp(&self.demoted.contains_key(&b.node)),
                    )
                    .then(b.priority.cmp(&a.priority))
                    .then(a.node.cmp(&b.node))
            })
            .copied()
    }

    /// Whether `leader`, leading since `since`, stalled: it reaches HQ, another live node reaches HQ
    /// and is not demoted (someone to pass the lead to: a store whose only way to HQ is this node
    /// keeps it, stalled or not), and its progress is older than the limit.
    fn stalled(&self, leader: &Heartbeat, since: u64, now_ms: u64) -> bool {
        if self.stall_ms == 0 || !leader.hq_reachable {
            return false;
        }
        let progress = leader.last_progress_ms.max(since);
        if now_ms.saturating_sub(progress) <= self.stall_ms {
            return false;
        }
        self.live(now_ms)
            .any(|hb| hb.node != leader.node && hb.hq_reachable && !self.demoted.contains_key(&hb.node))
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
            last_progress_ms: 0,
        }
    }

    fn with_progress(mut h: Heartbeat, at: u64) -> Heartbeat {
        h.last_progress_ms = at;
        h
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

    const STALL: u64 = 10_000;

    /// Node 1 (preferred) reaches HQ's probe but never progresses after `progress_1`; node 2 reaches
    /// HQ too. Every node hears both beat every second from 0 to `until` and asks for the leader.
    fn run(me: u8, progress_1: u64, until: u64) -> Vec<(u64, Option<Origin>)> {
        let mut e = Election::new(node(me), 15_000).with_stall(STALL);
        let mut named = Vec::new();
        for t in (0..=until).step_by(1000) {
            e.heard(with_progress(hb(1, true, 9), progress_1), t);
            e.heard(with_progress(hb(2, true, 0), 0), t);
            e.prune(t);
            named.push((t, e.leader(t)));
            // Asked between beats too, as the uplink does.
            named.push((t + 1, e.leader(t + 1)));
        }
        named
    }

    #[test]
    fn a_stalled_leader_is_replaced_after_the_limit_and_not_reelected_during_the_penalty() {
        let named = run(1, 0, 200_000);
        let leader_at = |t: u64| named.iter().find(|(at, _)| *at == t).and_then(|(_, l)| *l);
        assert_eq!(leader_at(10_000), Some(node(1)), "not before the limit");
        assert_eq!(leader_at(10_001), Some(node(2)), "demoted just after it");
        // Node 2 had no progress either as a follower; it is judged from when it took the lead, and it
        // has nobody to pass the lead to (node 1 is demoted): the store keeps a leader.
        for (t, l) in &named {
            if (10_001..110_001).contains(t) {
                assert_eq!(
                    *l,
                    Some(node(2)),
                    "at {t}: node 1 is demoted for {STALL_PENALTY} limits"
                );
            }
            assert!(l.is_some(), "at {t}: always a leader");
        }
        // Penalty over: node 1 leads again, judged afresh, and is demoted again if still stalled.
        assert_eq!(leader_at(111_000), Some(node(1)));
        assert_eq!(leader_at(121_000), Some(node(2)));
    }

    #[test]
    fn the_stalled_leader_steps_down_by_itself() {
        let mut me = Election::new(node(1), 15_000).with_stall(STALL);
        for t in (0..=10_000).step_by(1000) {
            me.heard(hb(1, true, 9), t);
            me.heard(hb(2, true, 0), t);
            assert!(me.am_leader(t), "at {t}");
        }
        assert!(!me.am_leader(10_001));
        assert_eq!(
            me.demoted(10_001).collect::<Vec<_>>(),
            vec![(node(1), 10_001 + 10 * STALL)]
        );
        assert_eq!(me.demotions(), 1);
    }

    #[test]
    fn no_stall_when_no_other_node_reaches_hq() {
        let mut e = Election::new(node(2), 15_000).with_stall(STALL);
        for t in (0..=1_000_000).step_by(1000) {
            e.heard(hb(1, true, 9), t);
            e.heard(hb(2, false, 0), t);
            assert_eq!(e.leader(t), Some(node(1)), "at {t}: nobody to pass the lead to");
        }
        assert_eq!(e.demotions(), 0);
    }

    #[test]
    fn a_leader_with_recent_progress_stays() {
        let mut e = Election::new(node(2), 15_000).with_stall(STALL);
        for t in (0..=1_000_000u64).step_by(1000) {
            // An upload acknowledged every 8 s (a busy store's leader waiting out resend_every).
            let progress = t - t % 8000;
            e.heard(with_progress(hb(1, true, 9), progress), t);
            e.heard(hb(2, true, 0), t);
            assert_eq!(e.leader(t + 999), Some(node(1)), "at {t}");
        }
        assert_eq!(e.demotions(), 0);
    }

    #[test]
    fn without_a_limit_nobody_is_demoted() {
        let mut e = Election::new(node(2), 15_000);
        for t in (0..=1_000_000).step_by(1000) {
            e.heard(hb(1, true, 9), t);
            e.heard(hb(2, true, 0), t);
            assert_eq!(e.leader(t), Some(node(1)));
        }
    }

    #[test]
    fn the_same_heartbeats_give_the_same_leader_on_every_node_with_stalls() {
        let views: Vec<_> = [1u8, 2, 3].iter().map(|&me| run(me, 500, 150_000)).collect();
        assert!(
            views.windows(2).all(|w| w[0] == w[1]),
            "every node names the same leaders"
        );
        assert!(
            views[0].iter().any(|(_, l)| *l == Some(node(2))),
            "and node 1 was demoted"
        );
    }

    #[test]
    fn a_demotion_is_forgotten_with_its_node() {
        let mut e = Election::new(node(2), 1000).with_stall(STALL);
        for t in (0..=10_001).step_by(1000) {
            e.heard(hb(1, true, 9), t);
            e.heard(hb(2, true, 0), t);
            e.leader(t);
        }
        assert_eq!(e.leader(10_001), Some(node(2)));
        assert_eq!(e.demoted(10_001).count(), 1);
        // Node 1 goes quiet for good: pruned with its heartbeat, long before its penalty ends.
        e.heard(hb(2, true, 0), 30_000);
        e.prune(30_000);
        assert_eq!(e.demoted(30_000).count(), 0);
        assert_eq!(e.seen().count(), 1);
    }

    #[test]
    fn progress_is_read_on_our_clock_whatever_the_senders_clock_says() {
        const HOUR: u64 = 3_600_000;
        // The sender's clock is an hour ahead, or an hour behind: its progress 4 s before it sent.
        assert_eq!(
            progress_on_our_clock(HOUR + 1000, HOUR + 5000, 2 * HOUR),
            2 * HOUR - 4000
        );
        assert_eq!(progress_on_our_clock(1000, 5000, 2 * HOUR), 2 * HOUR - 4000);
        assert_eq!(progress_on_our_clock(0, 5000, 9000), 0, "unknown stays unknown");
        assert_eq!(
            progress_on_our_clock(7000, 5000, 9000),
            9000,
            "dated after its send: just now"
        );
    }

    #[test]
    fn extreme_times_do_not_panic() {
        for stall in [0, 1, u64::MAX] {
            let mut e = Election::new(node(1), u64::MAX).with_stall(stall);
            for t in [0, 1, u64::MAX - 1, u64::MAX] {
                e.heard(with_progress(hb(1, true, 9), u64::MAX), t);
                e.heard(with_progress(hb(2, true, 0), 0), t);
                e.heard(with_progress(hb(3, true, 0), t), 0);
                for now in [0, 1, u64::MAX] {
                    let _ = e.leader(now);
                    let _ = e.am_leader(now);
                    let _ = e.demoted(now).count();
                }
                e.prune(u64::MAX);
                e.prune(0);
            }
            let mut short = Election::new(node(1), 0).with_stall(stall);
            short.heard(hb(1, true, 0), u64::MAX);
            short.heard(hb(2, true, 0), u64::MAX);
            let _ = short.leader(u64::MAX);
            let _ = short.leader(0);
        }
        for (p, s, h) in [
            (u64::MAX, 0, 0),
            (1, u64::MAX, 0),
            (u64::MAX, u64::MAX, u64::MAX),
            (1, u64::MAX, 5),
        ] {
            let _ = progress_on_our_clock(p, s, h);
        }
    }
}
