//! Anti-entropy: gossip is best effort, so nodes also compare version vectors and send each other what
//! the other lacks, in bounded batches. A pure state machine (inputs and `now` in, actions out); the
//! network actor carries the actions out.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::log::VersionVector;

/// Batches in flight per anti-entropy answer.
pub const PIPELINE: u64 = 4;
use crate::record::Origin;

/// Records `from..=to` of `origin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub origin: Origin,
    pub from: u64,
    pub to: u64,
}

impl Range {
    /// The number of seqs in the range; saturates at `u64::MAX` for `1..=u64::MAX` (one short, and
    /// far beyond any answer's budget).
    pub fn len(&self) -> u64 {
        match self.to.checked_sub(self.from) {
            Some(d) => d.saturating_add(1),
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.to < self.from
    }
}

/// What we hold (contiguously) that `theirs` lacks, at most `max_records` records in all. `theirs`
/// comes from a peer: any value, `u64::MAX` included, must neither panic nor wrap.
pub fn missing(ours: &VersionVector, theirs: &VersionVector, max_records: u64) -> Vec<Range> {
    let mut out = Vec::new();
    let mut budget = max_records;
    for (origin, &have) in ours {
        if budget == 0 {
            break;
        }
        let they = theirs.get(origin).copied().unwrap_or(0);
        // `have > they`, so `they + 1` cannot overflow; the budget may reach past u64::MAX.
        if let Some(from) = they.checked_add(1).filter(|_| have > they) {
            let to = have.min(they.saturating_add(budget));
            out.push(Range {
                origin: *origin,
                from,
                to,
            });
            budget = budget.saturating_sub(to - they);
        }
    }
    out
}

/// A token bucket: on average `rate_per_s` requests a second, `burst` at once. Pure (the caller gives
/// the time) and in whole milli-tokens, so it is exact and testable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    milli: u64,
    last_ms: u64,
    rate_per_s: u64,
    burst: u64,
}

impl RateLimit {
    /// Starts full: a peer that has just connected may ask `burst` questions at once.
    pub fn new(rate_per_s: u64, burst: u64, now_ms: u64) -> Self {
        Self {
            milli: burst.saturating_mul(1000),
            last_ms: now_ms,
            rate_per_s,
            burst,
        }
    }

    /// Takes a token if there is one. A clock that steps back refills nothing (and never panics).
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(self.rate_per_s))
            .min(self.burst.saturating_mul(1000));
        match self.milli.checked_sub(1000) {
            Some(left) => {
                self.milli = left;
                true
            }
            None => false,
        }
    }
}

/// Whether `a` holds everything `b` does.
pub fn dominates(a: &VersionVector, b: &VersionVector) -> bool {
    b.iter().all(|(o, &s)| a.get(o).copied().unwrap_or(0) >= s)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<P> {
    Tick {
        now_ms: u64,
    },
    Connected(P),
    Disconnected(P),
    /// A peer's version vector; `reply` when it was sent in answer to ours.
    Summary {
        from: P,
        vv: VersionVector,
        reply: bool,
    },
    /// Records from a peer were stored; `full` when the batch was as large as allowed (there may be more).
    Applied {
        from: P,
        full: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    SendSummary { to: P, reply: bool },
    SendRecords { to: P, ranges: Vec<Range> },
}

/// An unanswered request for records is given up (and may be repeated) after this long.
pub const ASK_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug)]
pub struct AntiEntropy<P> {
    peers: BTreeSet<P>,
    /// The peer we asked for records (sent our version vector to) and are waiting on, with when we
    /// asked. One at a time for the whole node: every peer answers a summary with all we lack, so a
    /// node back from a day away that asked all its peers at once took in the same records from each
    /// of them (nine copies in a ten-node store, each decoded and signature-checked).
    asked: Option<(P, u64)>,
    /// Peers to ask once the current exchange is over: newly connected ones, and those whose summary
    /// showed records we lack while we were busy with another. Each at most once.
    queued: std::collections::VecDeque<P>,
    now_ms: u64,
    interval_ms: u64,
    next_round_ms: Option<u64>,
    batch: u64,
    rng: StdRng,
}

impl<P: Clone + Ord> AntiEntropy<P> {
    /// A round with a random peer every `interval_ms` (±20%). An answer covers at most
    /// `batch * PIPELINE` records, which the network layer sends as messages of at most `batch`, so a
    /// node far behind receives the next batches while it is still storing the first.
    pub fn new(interval_ms: u64, batch: u64, seed: u64) -> Self {
        Self {
            peers: BTreeSet::new(),
            asked: None,
            queued: Default::default(),
            now_ms: 0,
            interval_ms,
            next_round_ms: None,
            batch,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Whether an exchange is under way (an answer is awaited and not overdue).
    fn busy(&self) -> bool {
        self.asked
            .as_ref()
            .is_some_and(|(_, t)| self.now_ms < t.saturating_add(ASK_TIMEOUT_MS))
    }

    fn ask(&mut self, p: P, reply: bool) -> Action<P> {
        self.queued.retain(|q| q != &p);
        self.asked = Some((p.clone(), self.now_ms));
        Action::SendSummary { to: p, reply }
    }

    /// Asks `p` now if no exchange is under way, or once the current one is over.
    fn ask_or_queue(&mut self, p: P, reply: bool) -> Option<Action<P>> {
        if !self.busy() {
            return Some(self.ask(p, reply));
        }
        let current = self.asked.as_ref().is_some_and(|(q, _)| q == &p);
        if !current && !self.queued.contains(&p) && self.peers.contains(&p) {
            self.queued.push_back(p);
        }
        None
    }

    /// The next queued peer, once nothing is awaited.
    fn next_queued(&mut self) -> Option<Action<P>> {
        if self.busy() {
            return None;
        }
        let p = self.queued.pop_front()?;
        Some(self.ask(p, false))
    }

    pub fn handle(&mut self, input: Input<P>, local: &VersionVector) -> Vec<Action<P>> {
        match input {
            Input::Connected(p) => {
                self.peers.insert(p.clone());
                self.ask_or_queue(p, false).into_iter().collect()
            }
            Input::Disconnected(p) => {
                self.peers.remove(&p);
                self.queued.retain(|q| q != &p);
                if self.asked.as_ref().is_some_and(|(q, _)| q == &p) {
                    self.asked = None;
                }
                self.next_queued().into_iter().collect()
            }
            Input::Tick { now_ms } => {
                // Only ticks tell the time: an ask made before the first one counts from it, or a node
                // that connects before its first tick would take every ask as long overdue.
                if self.now_ms == 0 {
                    if let Some((_, t)) = self.asked.as_mut() {
                        *t = now_ms;
                    }
                }
                self.now_ms = now_ms;
                if let Some(a) = self.next_queued() {
                    return vec![a];
                }
                let due = self.next_round_ms.is_none_or(|t| now_ms >= t);
                if !due || self.peers.is_empty() || self.busy() {
                    self.next_round_ms
                        .get_or_insert(now_ms.saturating_add(self.interval_ms));
                    return vec![];
                }
                let jitter = self.rng.gen_range(0.8..1.2);
                self.next_round_ms = Some(now_ms.saturating_add((self.interval_ms as f64 * jitter) as u64));
                let i = self.rng.gen_range(0..self.peers.len());
                match self.peers.iter().nth(i).cloned() {
                    Some(p) => vec![self.ask(p, false)],
                    None => vec![],
                }
            }
            Input::Summary { from, vv, reply } => {
                // Every summary is answered, with nothing when they lack nothing: the asker is waiting
                // on the answer before it asks anyone else.
                let mut out = vec![Action::SendRecords {
                    to: from.clone(),
                    ranges: missing(local, &vv, self.batch.saturating_mul(PIPELINE)),
                }];
                // They have something we lack: ask for it, unless this already was their answer to us
                // (then they are sending it, and asking again would only duplicate the transfer).
                if !reply && !dominates(local, &vv) {
                    out.extend(self.ask_or_queue(from, true));
                }
                out
            }
            Input::Applied { from, full } => {
                let current = self.asked.as_ref().is_some_and(|(q, _)| q == &from);
                if current {
                    self.asked = None;
                }
                if full && (current || !self.busy()) {
                    // Cut short: the rest comes from the same peer, still one exchange at a time.
                    return vec![self.ask(from, false)];
                }
                if full {
                    self.ask_or_queue(from, false);
                }
                self.next_queued().into_iter().collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, VecDeque};

    fn o(i: u8) -> Origin {
        Origin([i; 32])
    }

    fn vv(items: &[(u8, u64)]) -> VersionVector {
        items.iter().map(|&(i, s)| (o(i), s)).collect()
    }

    #[test]
    fn missing_ranges_are_bounded() {
        let ours = vv(&[(1, 10), (2, 5), (3, 2)]);
        let theirs = vv(&[(1, 4), (3, 7)]);
        assert_eq!(
            missing(&ours, &theirs, 100),
            vec![
                Range {
                    origin: o(1),
                    from: 5,
                    to: 10
                },
                Range {
                    origin: o(2),
                    from: 1,
                    to: 5
                }
            ]
        );
        let capped = missing(&ours, &theirs, 8);
        assert_eq!(capped.iter().map(Range::len).sum::<u64>(), 8);
        assert_eq!(
            capped[1],
            Range {
                origin: o(2),
                from: 1,
                to: 2
            }
        );
        assert!(dominates(&ours, &vv(&[(1, 10), (2, 1)])));
        assert!(!dominates(&ours, &theirs));
    }

    #[test]
    fn missing_copes_with_u64_max_on_either_side() {
        let top = vv(&[(1, u64::MAX), (2, u64::MAX - 1), (3, 5)]);
        let theirs = vv(&[(1, u64::MAX - 3), (2, u64::MAX), (3, 0)]);
        assert_eq!(
            missing(&top, &theirs, u64::MAX),
            vec![
                Range {
                    origin: o(1),
                    from: u64::MAX - 2,
                    to: u64::MAX
                },
                Range {
                    origin: o(3),
                    from: 1,
                    to: 5
                }
            ]
        );
        // They claim to hold everything: nothing to send, however large our own entries are.
        assert!(missing(&top, &vv(&[(1, u64::MAX), (2, u64::MAX), (3, u64::MAX)]), 8000).is_empty());
        // From nothing to the top: capped by the budget.
        let r = missing(&top, &VersionVector::new(), 8000);
        assert_eq!(r.iter().map(Range::len).sum::<u64>(), 8000);
        let whole = Range {
            origin: o(1),
            from: 1,
            to: u64::MAX,
        };
        assert_eq!(whole.len(), u64::MAX);
        let empty = Range {
            origin: o(1),
            from: u64::MAX,
            to: 0,
        };
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        // The state machine takes a peer's summary at the top without panicking.
        let mut ae = AntiEntropy::new(1000, u64::MAX, 1);
        ae.handle(Input::Tick { now_ms: u64::MAX }, &top);
        let acts = ae.handle(
            Input::Summary {
                from: 9u8,
                vv: theirs,
                reply: false,
            },
            &top,
        );
        assert!(matches!(acts.first(), Some(Action::SendRecords { .. })), "{acts:?}");
        assert!(ae.handle(Input::Tick { now_ms: u64::MAX }, &top).len() <= 1);
    }

    #[test]
    fn a_node_far_behind_takes_records_from_one_peer_at_a_time() {
        let mut ae = AntiEntropy::new(1000, 100, 1);
        let empty = VersionVector::new();
        let theirs = vv(&[(1, 10_000)]);
        let asks = |acts: &[Action<u8>]| acts.iter().filter(|a| matches!(a, Action::SendSummary { .. })).count();
        // Nine peers come up together: one is asked, the others wait their turn.
        let mut acts = Vec::new();
        for p in 1..=9u8 {
            acts.extend(ae.handle(Input::Connected(p), &empty));
        }
        assert_eq!(acts, vec![Action::SendSummary { to: 1, reply: false }]);
        // Their own hellos are answered (with nothing: we hold nothing) but start no second exchange.
        for p in 2..=9u8 {
            let acts = ae.handle(
                Input::Summary {
                    from: p,
                    vv: theirs.clone(),
                    reply: false,
                },
                &empty,
            );
            assert_eq!(asks(&acts), 0, "{acts:?}");
            assert!(matches!(&acts[0], Action::SendRecords { to, ranges } if *to == p && ranges.is_empty()));
        }
        // The answer was cut short: the same peer is asked for the rest, nobody else.
        assert_eq!(
            ae.handle(Input::Applied { from: 1, full: true }, &empty),
            vec![Action::SendSummary { to: 1, reply: false }]
        );
        // An answer from someone we did not ask changes nothing.
        assert!(ae.handle(Input::Applied { from: 5, full: false }, &empty).is_empty());
        // Done with peer 1: the next one in line.
        assert_eq!(
            ae.handle(Input::Applied { from: 1, full: false }, &empty),
            vec![Action::SendSummary { to: 2, reply: false }]
        );
        // The first tick tells the time: the ask made before it is not overdue.
        let t0 = 1_700_000_000_000;
        assert!(ae.handle(Input::Tick { now_ms: t0 }, &empty).is_empty());
        // A peer that never answers holds nobody up for longer than ASK_TIMEOUT_MS.
        assert!(ae
            .handle(
                Input::Tick {
                    now_ms: t0 + ASK_TIMEOUT_MS - 1
                },
                &empty
            )
            .is_empty());
        assert_eq!(
            ae.handle(
                Input::Tick {
                    now_ms: t0 + ASK_TIMEOUT_MS
                },
                &empty
            ),
            vec![Action::SendSummary { to: 3, reply: false }]
        );
        // A peer that goes away frees its turn at once.
        assert_eq!(
            ae.handle(Input::Disconnected(3), &empty),
            vec![Action::SendSummary { to: 4, reply: false }]
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_its_rate() {
        let mut l = RateLimit::new(5, 10, 1_000);
        assert_eq!((0..20).filter(|_| l.allow(1_000)).count(), 10, "the burst");
        assert!(!l.allow(1_100), "half a token");
        assert!(l.allow(1_200), "one token after 200 ms at 5/s");
        assert_eq!((0..20).filter(|_| l.allow(2_200)).count(), 5, "5 a second");
        // A long quiet spell refills only the burst; a clock stepping back refills nothing.
        assert_eq!((0..50).filter(|_| l.allow(u64::MAX)).count(), 10);
        assert!(!l.allow(0));
        assert!(!l.allow(u64::MAX));
        let mut huge = RateLimit::new(u64::MAX, u64::MAX, 0);
        assert!(huge.allow(u64::MAX));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any version vectors and budget, the top of u64 included: ranges stay within what we hold
        /// and they lack, never overlap an origin twice, and never exceed the budget.
        #[test]
        fn missing_is_bounded_for_any_values(
            ours in proptest::collection::vec((0u8..6, proptest::prop_oneof![0u64..10, (u64::MAX - 3)..=u64::MAX, proptest::prelude::any::<u64>()]), 0..6),
            theirs in proptest::collection::vec((0u8..6, proptest::prop_oneof![0u64..10, (u64::MAX - 3)..=u64::MAX, proptest::prelude::any::<u64>()]), 0..6),
            budget in proptest::prop_oneof![0u64..20, proptest::prelude::any::<u64>()],
        ) {
            let (ours, theirs) = (vv(&ours), vv(&theirs));
            let ranges = missing(&ours, &theirs, budget);
            let mut total = 0u64;
            for r in &ranges {
                let have = ours[&r.origin];
                let they = theirs.get(&r.origin).copied().unwrap_or(0);
                proptest::prop_assert!(!r.is_empty() && r.from == they + 1 && r.to <= have);
                total = total.saturating_add(r.len());
            }
            proptest::prop_assert!(total <= budget);
            proptest::prop_assert!(ranges.windows(2).all(|w| w[0].origin < w[1].origin));
        }
    }

    /// A node in the simulation: an in-memory log of (origin, seq) and the state machine.
    struct Node {
        held: BTreeMap<Origin, BTreeSet<u64>>,
        ae: AntiEntropy<usize>,
    }

    impl Node {
        fn vv(&self) -> VersionVector {
            self.held
                .iter()
                .map(|(o, s)| (*o, (1..).take_while(|q| s.contains(q)).count() as u64))
                .filter(|(_, n)| *n > 0)
                .collect()
        }
    }

    enum Msg {
        Summary(VersionVector, bool),
        Records(Vec<(Origin, u64)>, bool),
    }

    /// N nodes appending, with random partitions and message loss for a while, then healed: every run
    /// converges to identical logs.
    fn simulate(seed: u64, n: usize) -> (usize, u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let batch = 50;
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                held: BTreeMap::new(),
                ae: AntiEntropy::new(500, batch, seed * 31 + i as u64),
            })
            .collect();
        let mut up = vec![vec![true; n]; n];
        let mut queue: VecDeque<(u64, usize, usize, Msg)> = VecDeque::new();
        let mut seqs = vec![0u64; n];
        for (i, node) in nodes.iter_mut().enumerate() {
            for j in 0..n {
                if i != j {
                    node.ae.handle(Input::Connected(j), &VersionVector::new());
                }
            }
        }
        let chaos_until = 20_000;
        let mut now = 0u64;
        while now < 60_000 {
            now += 10;
            let chaos = now < chaos_until;
            // Random partitions flip now and then during the chaos; afterwards everything heals.
            if chaos && rng.gen_bool(0.01) {
                let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
                up[a][b] = !up[a][b];
                up[b][a] = up[a][b];
            }
            if !chaos {
                up = vec![vec![true; n]; n];
            }
            // Appends on random nodes while the chaos lasts (gossip is not simulated: only anti-entropy).
            if chaos && rng.gen_bool(0.3) {
                let i = rng.gen_range(0..n);
                seqs[i] += 1;
                nodes[i].held.entry(o(i as u8)).or_default().insert(seqs[i]);
            }
            let mut actions: Vec<(usize, Action<usize>)> = Vec::new();
            for (i, node) in nodes.iter_mut().enumerate() {
                let local = node.vv();
                actions.extend(
                    node.ae
                        .handle(Input::Tick { now_ms: now }, &local)
                        .into_iter()
                        .map(|a| (i, a)),
                );
            }
            while let Some(&(at, ..)) = queue.front() {
                if at > now {
                    break;
                }
                let Some((_, from, to, msg)) = queue.pop_front() else {
                    break;
                };
                let lost = chaos && rng.gen_bool(0.2);
                if !up[from][to] || lost {
                    continue;
                }
                let local = nodes[to].vv();
                match msg {
                    Msg::Summary(vv, reply) => {
                        let acts = nodes[to].ae.handle(Input::Summary { from, vv, reply }, &local);
                        actions.extend(acts.into_iter().map(|a| (to, a)));
                    }
                    Msg::Records(recs, full) => {
                        for (orig, s) in recs {
                            nodes[to].held.entry(orig).or_default().insert(s);
                        }
                        let local = nodes[to].vv();
                        let acts = nodes[to].ae.handle(Input::Applied { from, full }, &local);
                        actions.extend(acts.into_iter().map(|a| (to, a)));
                    }
                }
            }
            for (from, a) in actions {
                let delay = rng.gen_range(1..30);
                match a {
                    Action::SendSummary { to, reply } => {
                        queue.push_back((now + delay, from, to, Msg::Summary(nodes[from].vv(), reply)))
                    }
                    Action::SendRecords { to, ranges } => {
                        let recs: Vec<(Origin, u64)> = ranges
                            .iter()
                            .flat_map(|r| (r.from..=r.to).map(move |s| (r.origin, s)))
                            .collect();
                        let full = recs.len() as u64 >= batch * PIPELINE;
                        queue.push_back((now + delay, from, to, Msg::Records(recs, full)));
                    }
                }
            }
            queue.make_contiguous().sort_by_key(|m| m.0);
        }
        let reference = nodes[0].vv();
        for (i, node) in nodes.iter().enumerate() {
            assert_eq!(node.vv(), reference, "seed {seed}: node {i} differs");
        }
        (reference.len(), reference.values().sum())
    }

    #[test]
    fn random_partitions_and_loss_always_converge() {
        for seed in 0..20 {
            let (origins, records) = simulate(seed, 5);
            assert!(
                origins >= 4 && records > 400,
                "seed {seed}: a real workload ({origins} origins, {records} records)"
            );
        }
    }
}
