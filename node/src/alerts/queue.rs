//! The state a route shares between callers (`submit`, `camera_state`, `stats`) and its delivery task.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use super::config::RouteKind;
use super::filter::{Decision, Filter};
use super::{Alert, CameraState, FilteredStats, RouteStats};

/// Alerts waiting per route. A store produces a few alerts a minute; 256 covers a long outage of the
/// destination without letting a dead route hold unbounded memory.
pub const QUEUE_CAPACITY: usize = 256;

/// Camera states waiting per MQTT route: one (the newest) per camera, so this only bounds a
/// misconfiguration with absurdly many camera names.
pub const STATE_CAPACITY: usize = 1024;

/// A FIFO that never refuses: when full, the oldest element makes room. For alerts the newest are
/// worth the most (the oldest incident may well be over by the time the route comes back).
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> BoundedQueue<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::with_capacity(cap.min(64)),
            cap: cap.max(1),
        }
    }

    /// Appends; returns the element that was dropped to make room, if any.
    pub fn push(&mut self, t: T) -> Option<T> {
        let dropped = if self.items.len() >= self.cap {
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(t);
        dropped
    }

    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent whatever panicked (each update is one call).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// When `Some`, the route is closing: deliver what is queued until that instant, then stop.
pub type CloseSignal = watch::Receiver<Option<Instant>>;

/// One route, as seen from both sides.
pub struct RouteShared {
    pub name: String,
    pub kind: RouteKind,
    filter: Mutex<Filter>,
    queue: Mutex<BoundedQueue<Alert>>,
    states: Mutex<BTreeMap<String, CameraState>>,
    /// New work (or a close request) for the delivery task. `Notify` keeps one permit, so a wake-up
    /// sent while the task is busy is not lost.
    pub wake: Notify,
    pub sent: AtomicU64,
    pub states_sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    filtered: [AtomicU64; 4],
    /// Alerts and states the delivery task holds (being sent, waiting for an ack, or to be re-sent).
    pub held: AtomicUsize,
    pub connected: AtomicBool,
}

impl RouteShared {
    pub fn new(name: String, kind: RouteKind, filter: Filter) -> Self {
        Self {
            name,
            kind,
            filter: Mutex::new(filter),
            queue: Mutex::new(BoundedQueue::new(QUEUE_CAPACITY)),
            states: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            sent: AtomicU64::new(0),
            states_sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            filtered: Default::default(),
            held: AtomicUsize::new(0),
            // A console is always there; a network route is not until it has proved it.
            connected: AtomicBool::new(kind == RouteKind::Console),
        }
    }

    /// Filters and queues; never waits for the delivery task.
    pub fn offer(&self, alert: &Alert, now_ms: i64, tz: chrono_tz::Tz) -> Decision {
        let d = lock(&self.filter).should_send(alert, now_ms, tz);
        let slot = match d {
            Decision::Send => {
                self.enqueue(alert.clone());
                return d;
            }
            Decision::BelowSeverity => 0,
            Decision::KindFiltered => 1,
            Decision::OutsideHours => 2,
            Decision::Cooldown => 3,
        };
        self.filtered[slot].fetch_add(1, Ordering::Relaxed);
        d
    }

    fn enqueue(&self, alert: Alert) {
        let dropped = lock(&self.queue).push(alert);
        if let Some(old) = dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(route = %self.name, incident = %old.incident, "alert queue full: dropped the oldest alert");
        }
        self.wake.notify_one();
    }

    pub fn pop_alert(&self) -> Option<Alert> {
        lock(&self.queue).pop()
    }

    pub fn queue_len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Keeps only the newest state per camera: an older one is obsolete once a newer exists.
    pub fn offer_state(&self, s: CameraState) {
        let mut states = lock(&self.states);
        if states.len() >= STATE_CAPACITY && !states.contains_key(&s.camera) {
            tracing::warn!(route = %self.name, camera = %s.camera, "too many cameras with a pending state: dropped");
            return;
        }
        states.insert(s.camera.clone(), s);
        drop(states);
        self.wake.notify_one();
    }

    pub fn pop_state(&self) -> Option<CameraState> {
        lock(&self.states).pop_first().map(|(_, s)| s)
    }

    /// Puts back a state that was not acknowledged, unless a newer one for that camera arrived since.
    pub fn return_state(&self, s: CameraState) {
        let mut states = lock(&self.states);
        if !states.contains_key(&s.camera) && states.len() < STATE_CAPACITY {
            states.insert(s.camera.clone(), s);
        }
    }

    pub fn states_len(&self) -> usize {
        lock(&self.states).len()
    }

    pub fn stats(&self) -> RouteStats {
        let f = |i: usize| self.filtered[i].load(Ordering::Relaxed);
        RouteStats {
            name: self.name.clone(),
            kind: self.kind,
            sent: self.sent.load(Ordering::Relaxed),
            states_sent: self.states_sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            filtered: FilteredStats {
                below_severity: f(0),
                kind: f(1),
                outside_hours: f(2),
                cooldown: f(3),
            },
            queued: self.queue_len() + self.states_len() + self.held.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
        }
    }

    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// The close deadline, if closing. A dropped sender (every handle gone without `shutdown`) means stop
/// now: nobody is left to wait for a flush.
pub fn close_deadline(close: &CloseSignal) -> Option<Instant> {
    if close.has_changed().is_err() {
        return Some(Instant::now());
    }
    *close.borrow()
}

/// Waits for new work, a close request, or the close deadline; returns true once the deadline passed.
pub async fn idle(shared: &RouteShared, close: &mut CloseSignal) -> bool {
    let deadline = close_deadline(close);
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return true;
    }
    let sender_alive = close.has_changed().is_ok();
    tokio::select! {
        _ = shared.wake.notified() => {}
        r = close.changed(), if sender_alive => { let _ = r; }
        _ = sleep_until_opt(deadline) => return true,
    }
    close_deadline(close).is_some_and(|d| Instant::now() >= d)
}

/// Sleeps `delay` (a backoff), cut short by the close deadline; returns true if the deadline passed.
pub async fn pause(delay: std::time::Duration, close: &mut CloseSignal) -> bool {
    let until = Instant::now() + delay;
    loop {
        let deadline = close_deadline(close);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return true;
        }
        let sender_alive = close.has_changed().is_ok();
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => return false,
            r = close.changed(), if sender_alive => { let _ = r; }
            _ = sleep_until_opt(deadline) => return true,
        }
    }
}

/// Never completes for `None`.
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let mut q = BoundedQueue::new(3);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), None);
        assert_eq!(q.push(3), None);
        assert_eq!(q.push(4), Some(1));
        assert_eq!(q.push(5), Some(2));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.pop(), Some(4));
        assert_eq!(q.pop(), Some(5));
        assert!(q.is_empty());
    }
}
