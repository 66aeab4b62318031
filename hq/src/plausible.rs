//! What HQ refuses as impossible, whoever signed it (pure).
//!
//! Every member of a store holds the store's signing key, so a signature says only "one of this store's
//! devices, or whoever took a key from one". HQ keeps per (store, period) the summary whose version
//! vector dominates ([`crate::vv::Decision`]), and a node stops sending a period once HQ's vector
//! covers it. Without limits, one signed upload could therefore pin a store: a summary for every
//! period of the next ten years, or a vector entry of `u64::MAX`, would make HQ refuse the store's
//! real summaries as stale for ever, and outlive a re-keying. So, before decrypting anything, HQ
//! refuses (422, counted by reason):
//!
//! - `future_period`: a period starting more than one period after HQ's clock. One period of slack
//!   lets a node whose clock runs a little ahead send the next period near a boundary.
//! - `period_length`: a period length other than the store's (that of the first period HQ holds for
//!   it), or, for a store HQ holds nothing of yet, one a node cannot be configured with (at least
//!   60 s and dividing a day, node/src/config/check.rs). Periods of another length would overlap the
//!   store's under the same (store, period start) key: a day starting at midnight would compete with
//!   the hour starting at midnight.
//! - `misaligned_period`: a start that is not a multiple of the period, which no node computes
//!   (`period_of` in node/src/summary.rs rounds down to a multiple).
//! - `implausible_vv`: a version vector entry beyond what the store could have written; see
//!   [`max_seq`].
//!
//! None of these refuses a real store for good, except a store whose nodes change their period length
//! (refused until it is registered under a new name): HQ's clock reaches a period sent early, and a
//! refused upload does not move the frontier, so the bound on an entry grows faster than a node writes.
//!
//! What this cannot stop: whoever holds the key, while they hold it, can send plausible forged figures
//! for the current and the next period, and a node takes a period as done once HQ's vector covers its
//! own (node/src/uplink.rs). Each accepted upload moves HQ's frontier, so an attacker who keeps uploading
//! can run ahead by [`BURST`] per upload. The bounds make what a key did stop mattering once it is
//! re-keyed: no later period is held, and the real nodes' sequence numbers overtake a forged entry
//! after [`BURST`] records plus what the rate term allowed (about a minute's worth at
//! [`NODE_RATE_PER_S`] for a store that uploads every minute).

use std::collections::BTreeMap;

use crate::vv::VersionVector;

/// Records one node may plausibly add to its log per second, sustained. A node writes its cameras'
/// events (a line crossing per person and line, an incident's start, an update every `update_secs`
/// (30 s) while it lasts, its end, camera offline and back), and the operators' actions: a busy
/// entrance is about one per second, a node with eight busy cameras ten. The synthetic load of the
/// crash test writes 40. 50 is above all of them, so a real node is never refused for its rate; an
/// attacker gains at most 50 a second of waiting.
pub const NODE_RATE_PER_S: u64 = 50;

/// Records a node's entry may jump beyond [`NODE_RATE_PER_S`] since HQ's frontier: the lag of one
/// leader's view of a node behind another's at a failover (anti-entropy keeps them seconds apart;
/// 10,000 is minutes of a busy node). Longer absences are the rate term's: a node HQ has not heard
/// from keeps the time of its frontier, so one back after days is within it at once; a node new to HQ
/// that wrote more than this on its own first is refused until the rate term, counted from the store's
/// last progress, covers it (its leader's uploads are refused meanwhile, so that time stands still):
/// about half an hour for a busy node's day. It is also how far one forged upload can put an entry
/// ahead of the real node, which is why it is not larger: a store's real summaries of a forged period
/// win again once its nodes have written that much.
pub const BURST: u64 = 10_000;

/// The largest sequence number HQ takes at all, and all a store's very first summary is held to:
/// 2^40 is 700 years of one node at [`NODE_RATE_PER_S`], and 256 entries of it
/// ([`crate::vv::MAX_NODES`]) sum to 2^48, so no sum over a vector HQ holds can overflow, and every
/// entry fits PostgreSQL's `bigint`.
pub const MAX_SEQ: u64 = 1 << 40;

/// The shortest period a node can be configured with.
pub const MIN_PERIOD_SECS: u32 = 60;
const DAY_SECS: u32 = 86_400;

/// The highest sequence number HQ has accepted of one node (in any period of the store), and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontier {
    pub seq: u64,
    /// When HQ first stored a summary naming `seq` (Unix ms, HQ's clock).
    pub since_ms: i64,
}

/// What HQ holds of a store, as far as the checks need it: what its stored summaries say, kept as
/// each is written (see `HqStore::history`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The store's period length; `None` while HQ holds no summary of the store.
    pub period_secs: Option<u32>,
    /// Per node id.
    pub frontier: BTreeMap<String, Frontier>,
}

impl History {
    /// Takes in a summary HQ stored (at `at_ms`). The first one taken sets the period length: callers
    /// take summaries in period order, so that is the store's first period.
    pub fn take(&mut self, period_secs: u32, vv: &VersionVector, at_ms: i64) {
        self.period_secs.get_or_insert(period_secs);
        for (node, &seq) in &vv.0 {
            let f = self
                .frontier
                .entry(node.clone())
                .or_insert(Frontier { seq, since_ms: at_ms });
            if seq > f.seq || (seq == f.seq && at_ms < f.since_ms) {
                *f = Frontier { seq, since_ms: at_ms };
            }
        }
    }
}

/// Why HQ refused an upload as impossible.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Implausible {
    #[error("the period starting at {start_ms} begins more than one period after HQ's clock ({now_ms})")]
    FuturePeriod { start_ms: i64, now_ms: i64 },
    #[error("a period of {got} s is not this store's period of {want} s")]
    WrongPeriod { got: u32, want: u32 },
    #[error("a period of {0} s is not one a store can use (at least 60 s, dividing a day)")]
    BadPeriod(u32),
    #[error("period start {start_ms} is not a multiple of its period of {period_secs} s")]
    Misaligned { start_ms: i64, period_secs: u32 },
    #[error("version vector entry {node} = {seq} is more than the store could have written (at most {max})")]
    BeyondFrontier { node: String, seq: u64, max: u64 },
}

impl Implausible {
    /// The metric label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Implausible::FuturePeriod { .. } => "future_period",
            Implausible::WrongPeriod { .. } | Implausible::BadPeriod(_) => "period_length",
            Implausible::Misaligned { .. } => "misaligned_period",
            Implausible::BeyondFrontier { .. } => "implausible_vv",
        }
    }
}

/// The highest entry `node` may have in a vector HQ takes now: for a store HQ holds nothing of,
/// [`MAX_SEQ`]; else the node's frontier (0 for a node HQ has not seen in the store) plus [`BURST`] plus
/// [`NODE_RATE_PER_S`] for every second since HQ first stored that frontier (for a node not seen: since
/// the store's last progress, the latest time any of its frontiers moved). Never above [`MAX_SEQ`].
///
/// A refused upload moves no frontier, so the bound grows while a real node is refused, faster than a
/// real node writes: a refusal of real data is never permanent. A made-up node id gets no more than a
/// real new one: counted from the store's last progress, which its real uploads keep recent (an entry
/// of a node the real vectors never name counts for the forged one in every tie-break).
pub fn max_seq(history: &History, node: &str, now_ms: i64) -> u64 {
    if history.period_secs.is_none() {
        return MAX_SEQ;
    }
    let (seq, since_ms) = match history.frontier.get(node) {
        Some(f) => (f.seq, Some(f.since_ms)),
        None => (0, history.frontier.values().map(|f| f.since_ms).max()),
    };
    // A clock that went back gives no credit, and no wrap.
    let secs = since_ms.map_or(0, |t| u64::try_from(now_ms.saturating_sub(t) / 1000).unwrap_or(0));
    let limit = seq
        .saturating_add(NODE_RATE_PER_S.saturating_mul(secs))
        .saturating_add(BURST);
    limit.min(MAX_SEQ)
}

/// Checks what an envelope claims (its period and version vector) against what HQ holds of the store,
/// at `now_ms` (HQ's clock).
pub fn check(
    period_start_ms: i64,
    period_secs: u32,
    vv: &VersionVector,
    history: &History,
    now_ms: i64,
) -> Result<(), Implausible> {
    match history.period_secs {
        Some(want) if want != period_secs => return Err(Implausible::WrongPeriod { got: period_secs, want }),
        Some(_) => {}
        None => {
            if !(MIN_PERIOD_SECS..=DAY_SECS).contains(&period_secs) || DAY_SECS % period_secs != 0 {
                return Err(Implausible::BadPeriod(period_secs));
            }
        }
    }
    // A stored period length may predate these checks: never divide by zero.
    let period_ms = i64::from(period_secs.max(1)).saturating_mul(1000);
    if period_start_ms.rem_euclid(period_ms) != 0 {
        return Err(Implausible::Misaligned {
            start_ms: period_start_ms,
            period_secs,
        });
    }
    if period_start_ms > now_ms.saturating_add(period_ms) {
        return Err(Implausible::FuturePeriod {
            start_ms: period_start_ms,
            now_ms,
        });
    }
    for (node, &seq) in &vv.0 {
        let max = max_seq(history, node, now_ms);
        if seq > max {
            return Err(Implausible::BeyondFrontier {
                node: node.clone(),
                seq,
                max,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    /// 2026-12-06 15:09:33 UTC: inside the period starting at `P`.
    const NOW: i64 = 1_796_569_773_000;
    const P: i64 = NOW - NOW % HOUR;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    /// A store whose node `a` reached seq 1000 an hour before `NOW`, and `b` 500 ten minutes before.
    fn known() -> History {
        let mut h = History::default();
        h.take(3600, &vv(&[("a", 1000), ("b", 400)]), NOW - HOUR);
        h.take(3600, &vv(&[("a", 1000), ("b", 500)]), NOW - 600_000);
        h
    }

    fn hourly(start: i64, v: &VersionVector, h: &History) -> Result<(), Implausible> {
        check(start, 3600, v, h, NOW)
    }

    #[test]
    fn the_frontier_is_the_highest_entry_and_when_it_was_first_stored() {
        let h = known();
        assert_eq!(h.period_secs, Some(3600));
        assert_eq!(
            h.frontier["a"],
            Frontier {
                seq: 1000,
                since_ms: NOW - HOUR
            },
            "the same seq seen again keeps its first time"
        );
        assert_eq!(
            h.frontier["b"],
            Frontier {
                seq: 500,
                since_ms: NOW - 600_000
            }
        );
        // Taken out of order (a scan), the earliest time of the highest seq still wins.
        let mut r = History::default();
        r.take(3600, &vv(&[("a", 1000)]), NOW);
        r.take(3600, &vv(&[("a", 1000)]), NOW - HOUR);
        r.take(3600, &vv(&[("a", 999)]), NOW - 2 * HOUR);
        assert_eq!(r.frontier["a"].since_ms, NOW - HOUR);
    }

    #[test]
    fn a_period_more_than_one_period_ahead_is_refused() {
        let h = known();
        let v = vv(&[("a", 1001)]);
        // The current period, and the next one (a node clock a little ahead at the boundary).
        assert_eq!(hourly(P, &v, &h), Ok(()));
        assert_eq!(hourly(P + HOUR, &v, &h), Ok(()));
        // Exactly now + one period is the boundary, still accepted.
        assert_eq!(check(P + HOUR, 3600, &v, &h, P), Ok(()));
        assert_eq!(
            check(P + 2 * HOUR, 3600, &v, &h, P + HOUR - 1),
            Err(Implausible::FuturePeriod {
                start_ms: P + 2 * HOUR,
                now_ms: P + HOUR - 1
            })
        );
        assert_eq!(hourly(P + 2 * HOUR, &v, &h).unwrap_err().reason(), "future_period");
        assert_eq!(
            hourly(P + 1000 * 24 * HOUR, &v, &h).unwrap_err().reason(),
            "future_period"
        );
        // The far end of time: no overflow.
        let end = i64::MAX - i64::MAX % (3600 * 1000);
        assert_eq!(hourly(end, &v, &h).unwrap_err().reason(), "future_period");
        assert_eq!(check(end, 3600, &v, &h, i64::MAX), Ok(()));
        // The past is not refused: a node away for days sends old periods.
        assert_eq!(hourly(P - 48 * HOUR, &v, &h), Ok(()));
    }

    #[test]
    fn a_period_length_other_than_the_stores_is_refused() {
        let h = known();
        let day = P - P % (24 * HOUR);
        assert_eq!(
            check(day, 86_400, &vv(&[("a", 1000)]), &h, NOW),
            Err(Implausible::WrongPeriod {
                got: 86_400,
                want: 3600
            })
        );
        assert_eq!(check(P, 60, &vv(&[]), &h, NOW).unwrap_err().reason(), "period_length");
        // A store HQ holds nothing of: any length a node can be configured with.
        let first = History::default();
        for secs in [60, 300, 900, 3600, 86_400] {
            assert_eq!(check(day, secs, &vv(&[("a", 1)]), &first, NOW), Ok(()), "{secs}");
        }
        for secs in [0, 1, 59, 7000, 86_401, u32::MAX] {
            assert_eq!(
                check(0, secs, &vv(&[("a", 1)]), &first, NOW),
                Err(Implausible::BadPeriod(secs)),
                "{secs}"
            );
        }
        // The start must be a multiple of the period, as `period_of` makes it.
        assert_eq!(
            hourly(P + 1, &vv(&[]), &h),
            Err(Implausible::Misaligned {
                start_ms: P + 1,
                period_secs: 3600
            })
        );
        assert_eq!(
            hourly(P + HOUR / 2, &vv(&[]), &h).unwrap_err().reason(),
            "misaligned_period"
        );
        // Before 1970 (negative): aligned the way `div_euclid` aligns.
        assert_eq!(hourly(-HOUR, &vv(&[]), &h), Ok(()));
        assert_eq!(
            hourly(-HOUR + 1, &vv(&[]), &h).unwrap_err().reason(),
            "misaligned_period"
        );
    }

    #[test]
    fn normal_growth_is_accepted() {
        let h = known();
        // An hour at 5 records a second, and a new node of the store.
        assert_eq!(
            hourly(P, &vv(&[("a", 1000 + 18_000), ("b", 600), ("c", 42)]), &h),
            Ok(())
        );
        // Lower entries (a leader that is behind, a replay) are never refused here.
        assert_eq!(hourly(P, &vv(&[("a", 3)]), &h), Ok(()));
        // A node back after two days away, having written 2 a second: within the rate term.
        let mut away = History::default();
        away.take(3600, &vv(&[("a", 1000)]), NOW - 48 * HOUR);
        assert_eq!(hourly(P, &vv(&[("a", 1000 + 2 * 172_800)]), &away), Ok(()));
        // The exact bound: seq + 50/s x 3600 s + burst.
        let max = 1000 + NODE_RATE_PER_S * 3600 + BURST;
        assert_eq!(max_seq(&h, "a", NOW), max);
        assert_eq!(hourly(P, &vv(&[("a", max)]), &h), Ok(()));
        // A store's first summary: a store that ran long before HQ knew it.
        assert_eq!(
            hourly(P, &vv(&[("a", 500_000_000), ("b", MAX_SEQ)]), &History::default()),
            Ok(())
        );
    }

    #[test]
    fn an_entry_that_would_pin_the_store_is_refused() {
        let h = known();
        let max = 1000 + NODE_RATE_PER_S * 3600 + BURST;
        assert_eq!(
            hourly(P, &vv(&[("a", max + 1)]), &h),
            Err(Implausible::BeyondFrontier {
                node: "a".into(),
                seq: max + 1,
                max
            })
        );
        assert_eq!(
            hourly(P, &vv(&[("a", u64::MAX)]), &h).unwrap_err().reason(),
            "implausible_vv"
        );
        // b was stored more recently: less room.
        assert_eq!(max_seq(&h, "b", NOW), 500 + NODE_RATE_PER_S * 600 + BURST);
        // A node id HQ has not seen for this store: the burst, and the rate since the store's last
        // progress (b, ten minutes ago), not since the store began.
        assert_eq!(max_seq(&h, "zz", NOW), NODE_RATE_PER_S * 600 + BURST);
        let zz = NODE_RATE_PER_S * 600 + BURST + 1;
        assert_eq!(
            hourly(P, &vv(&[("a", 1000), ("zz", zz)]), &h).unwrap_err().reason(),
            "implausible_vv"
        );
        // A store whose vectors named no node yet: the burst only.
        let mut empty = History::default();
        empty.take(3600, &vv(&[]), NOW - 48 * HOUR);
        assert_eq!(max_seq(&empty, "zz", NOW), BURST);
        // Nothing ever goes above the absolute cap, not even a first summary or years of credit.
        assert_eq!(
            hourly(P, &vv(&[("a", MAX_SEQ + 1)]), &History::default())
                .unwrap_err()
                .reason(),
            "implausible_vv"
        );
        assert_eq!(max_seq(&h, "a", i64::MAX), MAX_SEQ);
        // A clock that went back gives no credit (and does not wrap).
        assert_eq!(max_seq(&h, "a", i64::MIN), 1000 + BURST);
        assert_eq!(max_seq(&h, "zz", i64::MIN), BURST);
    }

    #[test]
    fn a_real_store_refused_for_a_big_jump_is_taken_once_time_covers_it() {
        // A node new to HQ that wrote 100,000 records alone first, at 2 a second, in a store whose
        // last progress was ten minutes ago: refused, and every upload naming it with it.
        let h = known();
        let v = |t: i64| vv(&[("a", 1000), ("n", 100_000 + 2 * (t - NOW) as u64 / 1000)]);
        assert_eq!(hourly(P, &v(NOW), &h).unwrap_err().reason(), "implausible_vv");
        // The history does not move while it is refused; half an hour later it is taken.
        let later = NOW + 1800 * 1000;
        assert_eq!(check(P, 3600, &v(later), &h, later), Ok(()));
    }

    #[test]
    fn a_vector_whose_sum_overflows_does_not_panic() {
        let huge = vv(&[("a", u64::MAX), ("b", u64::MAX), ("c", u64::MAX / 2)]);
        assert_eq!(huge.total(), u64::MAX);
        assert_eq!(hourly(P, &huge, &known()).unwrap_err().reason(), "implausible_vv");
        let mut h = History::default();
        h.take(3600, &huge, NOW);
        assert_eq!(max_seq(&h, "a", NOW + HOUR), MAX_SEQ);
    }
}
