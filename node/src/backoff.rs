//! Exponential backoff with jitter, for everything that retries: cameras reconnecting, alert routes, the HQ
//! uplink.

use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1 + jitter]`, so that cameras that
    /// failed together (a switch reboot) do not all retry in the same instant.
    jitter: f64,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, jitter: f64, seed: u64) -> Self {
        Self {
            initial,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            attempt: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The defaults for cameras: 0.5 s doubling up to 30 s, +-20%.
    pub fn for_camera(seed: u64) -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30), 0.2, seed)
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.initial.as_secs_f64() * 2f64.powi(self.attempt.min(30) as i32);
        let capped = base.min(self.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let factor = if self.jitter > 0.0 {
            self.rng.gen_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64(capped * factor)
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success, the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000), 0.0, 1);
        let d: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn jitter_stays_in_bounds_and_varies() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10), 0.2, 7);
        let d: Vec<f64> = (0..50).map(|_| b.next_delay().as_secs_f64()).collect();
        assert!(d.iter().all(|&x| (8.0..=12.0).contains(&x)), "{d:?}");
        assert!(d.iter().any(|&x| (x - d[0]).abs() > 0.01), "jitter varies");
    }
}
