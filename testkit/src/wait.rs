//! Waiting for a condition, the clock, and replayable randomness.

use std::time::{Duration, Instant};

/// Checks `check` every 20 ms until it holds, for at most `limit`; how long it took. Panics naming
/// `what`. Often enough to time what is measured in tens of milliseconds (a record crossing the mesh).
pub async fn eventually(what: &str, limit: Duration, check: impl AsyncFnMut() -> bool) -> Duration {
    eventually_every(what, limit, Duration::from_millis(20), check).await
}

/// [`eventually`] checking every `every`: for a check that costs something where it lands (a query to
/// a database, a login attempt that a failure slows down).
pub async fn eventually_every(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if check().await {
            return t.elapsed();
        }
        tokio::time::sleep(every).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A small deterministic generator (xorshift), so a failing randomised run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_once_the_check_holds() {
        let mut n = 0;
        let took = eventually("three checks", Duration::from_secs(5), async || {
            n += 1;
            n >= 3
        })
        .await;
        assert_eq!(n, 3);
        assert!(took < Duration::from_secs(5));
    }

    #[tokio::test]
    #[should_panic(expected = "never: not within")]
    async fn eventually_names_what_never_happened() {
        eventually("never", Duration::from_millis(50), async || false).await;
    }

    #[test]
    fn a_seed_replays_the_same_numbers() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        assert_eq!((a.next_u64(), a.below(10)), (b.next_u64(), b.below(10)));
    }
}
