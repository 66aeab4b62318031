//! The node's one stop signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// One signal for the whole node: camera threads read the flag between frames (they are not async),
/// and async code awaits [`Stop::stopped`], so nothing polls.
#[derive(Clone, Debug)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    // Held here so the channel never reports closed: every receiver sees only `false` or `true`.
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Stop {
            flag: Arc::new(AtomicBool::new(false)),
            tx: Arc::new(tx),
        }
    }

    /// Asks everything that watches this signal to stop; safe from a signal handler's thread.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.tx.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag for code that cannot await (camera threads, blocking loops).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// Resolves once [`Stop::stop`] has been called, at once if it already was.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the wait cannot end with the channel closed.
        let _ = rx.wait_for(|s| *s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_wakes_waiters_and_sets_the_flag() {
        let stop = Stop::new();
        let flag = stop.flag();
        let waiter = tokio::spawn({
            let s = stop.clone();
            async move { s.stopped().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(!flag.load(Ordering::Relaxed));
        stop.stop();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke")
            .expect("the waiter ran");
        assert!(flag.load(Ordering::Relaxed));
        // A late waiter returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), stop.stopped())
            .await
            .expect("a stop already given is seen at once");
    }
}
