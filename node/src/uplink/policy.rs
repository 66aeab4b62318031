//! The uplink's send policy, pure: which periods wait for HQ, which are due now, when to probe HQ,
//! when to try again after a failure, and when to tell the mesh about progress. Time is passed in
//! ([`Now`]) and the jitter is seeded, so a run is replayed exactly (the simulation test below), as
//! anti-entropy's is. The actor in `uplink/mod.rs` does the I/O around it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use lpmesh_hq::vv::VersionVector;

use crate::backoff::Backoff;

/// Periods sent per step, so a long backlog does not keep the actor from its other work.
pub const SENDS_PER_STEP: usize = 16;
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const JITTER: f64 = 0.2;

#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub probe_every: Duration,
    /// A waiting period is sent again at most this often (while its records keep changing).
    pub resend_every: Duration,
    /// Time after start before this node may act as leader (see `UplinkSettings::settle`).
    pub settle: Duration,
    pub period_secs: u32,
    /// The mesh is told about progress at most this often.
    pub progress_every: Duration,
}

/// The time of one decision: since the uplink started (monotonic), and the wall clock (Unix ms).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Duration,
    pub wall_ms: i64,
}

pub struct Policy {
    cfg: PolicyConfig,
    backoff: Backoff,
    retry_at: Duration,
    next_probe: Duration,
    /// What HQ said it stored, per period.
    done: BTreeMap<i64, VersionVector>,
    waiting: BTreeSet<i64>,
    last_sent: HashMap<i64, Duration>,
    /// Wall ms of the last progress: nothing owed to HQ, or an upload answered.
    progress_ms: Option<i64>,
    /// The progress last told to the mesh, and when.
    progress_told: Option<(i64, Duration)>,
}

impl Policy {
    /// `done`: what the outbox says HQ acknowledged; `seed`: the backoff's jitter.
    pub fn new(cfg: PolicyConfig, done: BTreeMap<i64, VersionVector>, seed: u64) -> Policy {
        Policy {
            cfg,
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, JITTER, seed),
            retry_at: Duration::ZERO,
            next_probe: Duration::ZERO,
            done,
            waiting: BTreeSet::new(),
            last_sent: HashMap::new(),
            progress_ms: None,
            progress_told: None,
        }
    }

    pub fn waiting(&self) -> &BTreeSet<i64> {
        &self.waiting
    }

    pub fn done(&self) -> &BTreeMap<i64, VersionVector> {
        &self.done
    }

    /// A period's records changed: it waits unless `covered` says HQ's copy already includes them.
    pub fn touched(&mut self, p: i64, covered: impl Fn(&VersionVector) -> bool) {
        let hq = self.done.get(&p).cloned().unwrap_or_default();
        if !covered(&hq) {
            self.waiting.insert(p);
        }
    }

    /// Whether to probe HQ now; a yes schedules the next probe.
    pub fn probe_due(&mut self, now: Now) -> bool {
        if now.mono < self.next_probe {
            return false;
        }
        self.next_probe = now.mono + self.cfg.probe_every;
        true
    }

    /// Whether this node acts as the leader: the mesh's leader, and settled (it has heard the others).
    pub fn leads(&self, now: Now, mesh_leader_is_me: bool) -> bool {
        mesh_leader_is_me && now.mono >= self.cfg.settle
    }

    /// Whether a failure's backoff has run out.
    pub fn may_send(&self, now: Now) -> bool {
        now.mono >= self.retry_at
    }

    /// The latest period that may be sent now. A period later than now plus one period can only come
    /// from records dated in the future (the views refuse those; this is the last check before HQ): HQ
    /// would refuse it, so it waits.
    fn latest_sendable(&self, now: Now) -> i64 {
        now.wall_ms.saturating_add(i64::from(self.cfg.period_secs) * 1000)
    }

    /// The periods to send now, oldest first: waiting, not in the future, not sent within
    /// `resend_every`; at most [`SENDS_PER_STEP`].
    pub fn due(&self, now: Now) -> Vec<i64> {
        let latest = self.latest_sendable(now);
        self.waiting
            .iter()
            .copied()
            .filter(|p| *p <= latest)
            .filter(|p| {
                self.last_sent
                    .get(p)
                    .is_none_or(|t| now.mono.saturating_sub(*t) >= self.cfg.resend_every)
            })
            .take(SENDS_PER_STEP)
            .collect()
    }

    pub fn sending(&mut self, p: i64, now: Now) {
        self.last_sent.insert(p, now.mono);
    }

    /// HQ answered an upload (stored, a no-op, stale or concurrent): the uplink works.
    pub fn answered(&mut self, now: Now) {
        self.progress_ms = Some(now.wall_ms);
        self.backoff.reset();
    }

    /// HQ refused an upload or could not be reached: no upload before the returned delay has passed.
    pub fn failed(&mut self, now: Now) -> Duration {
        let delay = self.backoff.next_delay();
        self.retry_at = now.mono + delay;
        delay
    }

    /// HQ's acknowledgement of `p` is durable: `covered` says whether it includes every record of the
    /// period this node holds (then the period stops waiting).
    pub fn acked(&mut self, p: i64, hq_vv: VersionVector, covered: bool) {
        if covered {
            self.waiting.remove(&p);
        }
        self.done.insert(p, hq_vv);
    }

    /// The progress to tell the mesh now, if any: now if this node owes HQ nothing it could send (a
    /// period held back as future-dated is not owed: no node could send it), else the last answer. At
    /// most every `progress_every`, and only when it changed.
    pub fn progress_to_tell(&mut self, now: Now) -> Option<i64> {
        let latest = self.latest_sendable(now);
        if !self.waiting.iter().any(|p| *p <= latest) {
            self.progress_ms = Some(now.wall_ms);
        }
        let p = self.progress_ms?;
        if self
            .progress_told
            .is_some_and(|(told, at)| told == p || now.mono.saturating_sub(at) < self.cfg.progress_every)
        {
            return None;
        }
        self.progress_told = Some((p, now.mono));
        Some(p)
    }

    /// At shutdown: every waiting period is due again, whenever it was last sent.
    pub fn send_all_again(&mut self) {
        self.last_sent.clear();
    }

    /// The log's retention dropped the periods before `period`: HQ's acknowledgements of those that no
    /// longer wait are forgotten too.
    pub fn forget_before(&mut self, period: i64) {
        let waiting = &self.waiting;
        self.done.retain(|p, _| *p >= period || waiting.contains(p));
        self.last_sent.retain(|p, _| *p >= period || waiting.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const STEP: Duration = Duration::from_millis(250);
    const HOUR_MS: i64 = 3_600_000;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            probe_every: Duration::from_secs(10),
            resend_every: Duration::from_secs(60),
            settle: Duration::from_secs(6),
            period_secs: 3600,
            progress_every: Duration::from_secs(1),
        }
    }

    fn vv(n: u64) -> VersionVector {
        VersionVector([("node-a".to_string(), n)].into_iter().collect())
    }

    fn seq(v: &VersionVector) -> u64 {
        v.0.get("node-a").copied().unwrap_or(0)
    }

    /// What one simulated run did, to compare two runs of one seed.
    #[derive(Debug, PartialEq)]
    enum Step {
        Sent(Duration, i64),
        Failed(Duration, Duration),
        Concurrent(Duration, i64),
        Told(Duration, i64),
    }

    /// A delay after k failures in a row: 2 s doubled k - 1 times, at most 5 min, within the jitter.
    fn check_backoff(policy: &Policy, d: Duration) {
        let k = policy.backoff.attempts().saturating_sub(1);
        let base = (FIRST_BACKOFF.as_secs_f64() * 2f64.powi(k.min(30) as i32)).min(MAX_BACKOFF.as_secs_f64());
        let s = d.as_secs_f64();
        assert!(
            s >= base * (1.0 - JITTER) - 1e-9 && s <= base * (1.0 + JITTER) + 1e-9,
            "a backoff of {s} s after {} failures",
            k + 1
        );
    }

    /// A store whose records arrive at random, a mesh whose leadership comes and goes and an HQ that is
    /// down at times and refuses now and then, for `secs` seconds, every step of the actor's 250 ms
    /// tick; the invariants are checked as it goes. Returns what it did.
    fn simulate(seed: u64, secs: u64) -> Vec<Step> {
        let mut rng = StdRng::seed_from_u64(seed);
        let c = cfg();
        let mut policy = Policy::new(c.clone(), BTreeMap::new(), seed);
        let start_wall = 1_800_000_000_000i64;
        // This node's records per period (the ledger), and what HQ stored.
        let mut local: BTreeMap<i64, u64> = BTreeMap::new();
        let mut hq: BTreeMap<i64, u64> = BTreeMap::new();
        let mut trace = Vec::new();
        let mut hq_up = true;
        let mut leader = true;
        let mut last_send_at: HashMap<i64, Duration> = HashMap::new();
        let mut blocked_until = Duration::ZERO;
        let steps = secs * 4;
        // The last fifth of the run is calm (HQ up, this node leading, no new records), so everything
        // must get through.
        let calm_from = steps * 4 / 5;
        for i in 0..steps {
            let mono = STEP * i as u32;
            let now = Now {
                mono,
                wall_ms: start_wall + mono.as_millis() as i64,
            };
            if i < calm_from {
                if rng.gen_bool(0.01) {
                    hq_up = !hq_up;
                }
                if rng.gen_bool(0.005) {
                    leader = !leader;
                }
            } else {
                (hq_up, leader) = (true, true);
            }
            // New records: mostly in the current hour, sometimes late ones for an old hour.
            if i < calm_from && rng.gen_bool(0.2) {
                let hour = now.wall_ms.div_euclid(HOUR_MS) * HOUR_MS;
                let p = if rng.gen_bool(0.1) {
                    hour - HOUR_MS * rng.gen_range(1..5)
                } else {
                    hour
                };
                *local.entry(p).or_insert(0) += 1;
                let n = local[&p];
                policy.touched(p, |h| seq(h) >= n);
            }
            policy.probe_due(now);
            if policy.leads(now, leader) && hq_up && policy.may_send(now) {
                assert!(mono >= blocked_until, "sent during a backoff");
                assert!(mono >= c.settle, "sent before settling");
                let due = policy.due(now);
                assert!(due.len() <= SENDS_PER_STEP);
                for p in due {
                    if let Some(t) = last_send_at.get(&p) {
                        assert!(mono - *t >= c.resend_every, "period {p} sent again too soon");
                    }
                    last_send_at.insert(p, mono);
                    policy.sending(p, now);
                    trace.push(Step::Sent(mono, p));
                    if i < calm_from && rng.gen_bool(0.05) {
                        // HQ refuses one upload (the others go on).
                        let d = policy.failed(now);
                        check_backoff(&policy, d);
                        blocked_until = mono + d;
                        trace.push(Step::Failed(mono, d));
                        continue;
                    }
                    policy.answered(now);
                    if i < calm_from && rng.gen_bool(0.05) {
                        // HQ holds a summary from records this node has not seen (the other side of a
                        // partition): answered, not acknowledged, so the period waits and goes again.
                        trace.push(Step::Concurrent(mono, p));
                        continue;
                    }
                    let n = local[&p];
                    let stored = hq.entry(p).or_insert(0);
                    *stored = (*stored).max(n);
                    let s = *stored;
                    policy.acked(p, vv(s), s >= local[&p]);
                }
            } else if policy.leads(now, leader) && !hq_up && policy.may_send(now) {
                // HQ unreachable: the step fails at its first upload.
                if let Some(&p) = policy.due(now).first() {
                    assert!(mono >= blocked_until, "sent during a backoff");
                    if let Some(t) = last_send_at.get(&p) {
                        assert!(mono - *t >= c.resend_every, "period {p} sent again too soon");
                    }
                    last_send_at.insert(p, mono);
                    policy.sending(p, now);
                    let d = policy.failed(now);
                    check_backoff(&policy, d);
                    blocked_until = mono + d;
                    trace.push(Step::Failed(mono, d));
                }
            }
            if let Some(p) = policy.progress_to_tell(now) {
                trace.push(Step::Told(mono, p));
            }
        }
        // Liveness: after the calm fifth, HQ holds every period as this node does.
        assert!(
            policy.waiting().is_empty(),
            "seed {seed}: still waiting after a calm end: {:?}",
            policy.waiting()
        );
        for (p, n) in &local {
            assert_eq!(hq.get(p), Some(n), "seed {seed}: HQ's copy of period {p}");
        }
        trace
    }

    #[test]
    fn a_seeded_run_holds_the_invariants_gets_everything_through_and_replays_exactly() {
        for seed in 0..20 {
            let a = simulate(seed, 3 * 3600);
            assert!(
                a.iter().any(|s| matches!(s, Step::Failed(..))),
                "seed {seed}: HQ never failed"
            );
            assert!(
                a.iter().any(|s| matches!(s, Step::Concurrent(..))),
                "seed {seed}: HQ never held a concurrent summary"
            );
            assert!(
                a.iter().any(|s| matches!(s, Step::Told(..))),
                "seed {seed}: progress never told"
            );
            assert_eq!(a, simulate(seed, 3 * 3600), "seed {seed} replays");
        }
    }

    #[test]
    fn a_period_in_the_future_waits_and_is_not_owed() {
        let mut policy = Policy::new(cfg(), BTreeMap::new(), 1);
        let now = Now {
            mono: Duration::from_secs(10),
            wall_ms: 10 * HOUR_MS,
        };
        policy.touched(13 * HOUR_MS, |_| false);
        assert!(policy.due(now).is_empty(), "three hours ahead: HQ would refuse it");
        assert_eq!(
            policy.progress_to_tell(now),
            Some(now.wall_ms),
            "nothing sendable is owed"
        );
        policy.touched(10 * HOUR_MS, |_| false);
        assert_eq!(policy.due(now), vec![10 * HOUR_MS]);
        // Told once; the same value again is not news.
        let later = Now {
            mono: Duration::from_secs(20),
            ..now
        };
        assert_eq!(policy.progress_to_tell(later), None);
    }

    #[test]
    fn acknowledgements_of_expired_periods_are_forgotten_but_not_of_waiting_ones() {
        let mut policy = Policy::new(cfg(), [(1, vv(1)), (2, vv(1)), (5, vv(1))].into_iter().collect(), 1);
        policy.touched(2, |_| false);
        policy.forget_before(4);
        assert_eq!(policy.done().keys().copied().collect::<Vec<_>>(), vec![2, 5]);
    }
}
