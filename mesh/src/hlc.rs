//! Hybrid logical clock: timestamps that follow the wall clock but never go backwards and always order
//! a record after everything its origin had seen, even when node clocks disagree.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (the largest wall time seen).
    pub wall_ms: u64,
    /// Orders events within the same millisecond.
    pub logical: u32,
}

/// A remote timestamp too far ahead of our wall clock: one of the two clocks is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skew {
    pub ahead_ms: u64,
}

#[derive(Clone, Debug)]
pub struct Clock {
    last: Timestamp,
    max_skew_ms: u64,
}

impl Clock {
    /// `max_skew_ms`: how far ahead of our wall clock a remote timestamp may be before it is refused as
    /// a clock source (it is still ordered correctly, it just does not drag our clock into the future).
    pub fn new(max_skew_ms: u64) -> Self {
        Self {
            last: Timestamp::default(),
            max_skew_ms,
        }
    }

    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// A timestamp for a local event at wall time `wall_ms`.
    pub fn now(&mut self, wall_ms: u64) -> Timestamp {
        self.last = if wall_ms > self.last.wall_ms {
            Timestamp { wall_ms, logical: 0 }
        } else {
            Timestamp {
                wall_ms: self.last.wall_ms,
                logical: self.last.logical.saturating_add(1),
            }
        };
        self.last
    }

    /// Whether `remote` is further ahead of the wall clock than the allowed skew (the clock is not
    /// changed). The log refuses records that are: they are not followed as a clock source, and storing
    /// them would hand a node with a wrong clock (or a forger) records that sort after everything
    /// anyone appends for as long as that clock is ahead.
    pub fn check(&self, remote: Timestamp, wall_ms: u64) -> Result<(), Skew> {
        if remote.wall_ms > wall_ms.saturating_add(self.max_skew_ms) {
            return Err(Skew {
                ahead_ms: remote.wall_ms.saturating_sub(wall_ms),
            });
        }
        Ok(())
    }

    /// Takes a remote timestamp into account, so later local timestamps order after it.
    pub fn observe(&mut self, remote: Timestamp, wall_ms: u64) -> Result<(), Skew> {
        self.check(remote, wall_ms)?;
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_wall_clock_and_never_goes_back() {
        let mut c = Clock::new(60_000);
        assert_eq!(
            c.now(1000),
            Timestamp {
                wall_ms: 1000,
                logical: 0
            }
        );
        assert_eq!(
            c.now(1000),
            Timestamp {
                wall_ms: 1000,
                logical: 1
            }
        );
        // The wall clock steps back (NTP correction): timestamps keep increasing.
        assert_eq!(
            c.now(900),
            Timestamp {
                wall_ms: 1000,
                logical: 2
            }
        );
        assert_eq!(
            c.now(1500),
            Timestamp {
                wall_ms: 1500,
                logical: 0
            }
        );
    }

    #[test]
    fn a_record_caused_by_a_remote_one_orders_after_it_despite_a_slow_clock() {
        let mut fast = Clock::new(60_000);
        let mut slow = Clock::new(60_000);
        let sent = fast.now(10_000);
        slow.observe(sent, 7_000).unwrap();
        let reply = slow.now(7_001);
        assert!(reply > sent, "{reply:?} vs {sent:?}");
    }

    #[test]
    fn a_clock_far_in_the_future_is_refused() {
        let mut c = Clock::new(60_000);
        let bogus = Timestamp {
            wall_ms: 10_000_000,
            logical: 0,
        };
        assert_eq!(c.observe(bogus, 1_000), Err(Skew { ahead_ms: 9_999_000 }));
        assert_eq!(c.now(1_001).wall_ms, 1_001, "our clock was not dragged forward");
        // At the bound is fine; peer-given extremes neither panic nor wrap.
        let at_bound = Timestamp {
            wall_ms: 61_000,
            logical: 0,
        };
        assert_eq!(c.check(at_bound, 1_000), Ok(()));
        let max = Timestamp {
            wall_ms: u64::MAX,
            logical: u32::MAX,
        };
        assert_eq!(c.check(max, 0), Err(Skew { ahead_ms: u64::MAX }));
        assert_eq!(c.check(max, u64::MAX), Ok(()));
        assert!(c.observe(max, 5).is_err());
    }
}
