//! Logins that hold under attack, for every login form lpmesh serves (the store's tablet UI, HQ's
//! dashboard): argon2id hashing behind a small gate, backoff per user name and per address instead of
//! lockouts, session tokens kept only as digests, and typed names kept out of logs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(#[source] pub argon2::password_hash::Error);

/// Wrong passwords a user name or an address may give before each further attempt waits.
pub const FREE_FAILURES: u32 = 5;
/// The wait doubles with each further failure (1 s, 2 s, 4 s, ...) up to these: an address that keeps
/// guessing is slowed to a crawl, while a user name under attack from everywhere makes its real user
/// wait half a minute at most, never locks them out.
pub const ADDRESS_MAX_WAIT: Duration = Duration::from_secs(900);
pub const USER_MAX_WAIT: Duration = Duration::from_secs(30);
/// Failures are forgotten this long after the last one (longer than the longest wait, or a guesser
/// that waits it out would start afresh).
pub const FORGET_FAILURES: Duration = Duration::from_secs(3600);
/// argon2 runs (19 MiB each) at most this many at once; at most `HASHING_QUEUE` logins wait for one,
/// for at most `HASHING_WAIT`, and the rest are turned away: a login flood cannot take the node's
/// memory from its cameras.
pub const HASHING_SLOTS: usize = 2;
pub const HASHING_QUEUE: usize = 32;
pub const HASHING_WAIT: Duration = Duration::from_secs(5);

/// A user name: 1-32 letters, digits, '.', '-' or '_'.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 32 && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError)
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// An argon2id hash whose cost a server can pay at login: verifying runs with the parameters the hash
/// names, so a hash written by someone else (a store member's user record, a row in HQ's database)
/// with gigabytes of memory or hours of passes would take the server down at its real user's next
/// login.
pub fn affordable_hash(h: &str) -> bool {
    let Ok(hash) = PasswordHash::new(h) else {
        return false;
    };
    hash.algorithm == argon2::Algorithm::Argon2id.ident()
        && argon2::Params::try_from(&hash).is_ok_and(|p| {
            p.m_cost() <= MAX_HASH_MEMORY_KIB && p.t_cost() <= MAX_HASH_PASSES && p.p_cost() <= MAX_HASH_LANES
        })
}

/// The most a user record's hash may ask of a login: several times this node's own (19 MiB, 2 passes,
/// 1 lane), never more.
const MAX_HASH_MEMORY_KIB: u32 = 64 * 1024;
const MAX_HASH_PASSES: u32 = 8;
const MAX_HASH_LANES: u32 = 4;

/// Random token, 256 bits, URL-safe.
pub fn token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// How a token is kept at rest: its SHA-256, hex; whoever reads the store cannot present it.
pub fn token_key(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Failed logins per user name and per client address, each with its own backoff.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Backoff>>,
}

#[derive(Clone, Copy)]
struct Backoff {
    failures: u32,
    last: Instant,
}

/// Keys held before the ones not failed for a while are dropped (a flood of names cannot grow it).
const MAX_LIMITER_KEYS: usize = 10_000;

fn wait_after(failures: u32, cap: Duration) -> Duration {
    match failures.checked_sub(FREE_FAILURES) {
        None => Duration::ZERO,
        Some(extra) => Duration::from_secs(1u64 << extra.min(20)).min(cap),
    }
}

impl LoginLimiter {
    /// The user key (a typed name is cut to 64 bytes: real names are shorter) and the address key.
    fn keys(user: &str, ip: Option<IpAddr>) -> Vec<(String, Duration)> {
        let mut cut = user.len().min(64);
        while !user.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut k = vec![(format!("u:{}", &user[..cut]), USER_MAX_WAIT)];
        if let Some(ip) = ip {
            k.push((format!("a:{ip}"), ADDRESS_MAX_WAIT));
        }
        k
    }

    /// How long this login must wait before its password is even checked (`None`: not at all).
    pub fn blocked(&self, user: &str, ip: Option<IpAddr>) -> Option<Duration> {
        self.blocked_at(user, ip, Instant::now())
    }

    pub fn blocked_at(&self, user: &str, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::keys(user, ip)
            .iter()
            .filter_map(|(k, cap)| {
                let b = f.get(k)?;
                let until = b.last + wait_after(b.failures, *cap);
                (until > now && now.duration_since(b.last) < FORGET_FAILURES).then(|| until - now)
            })
            .max()
    }

    pub fn failed(&self, user: &str, ip: Option<IpAddr>) {
        self.failed_at(user, ip, Instant::now())
    }

    pub fn failed_at(&self, user: &str, ip: Option<IpAddr>, now: Instant) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() >= MAX_LIMITER_KEYS {
            f.retain(|_, b| now.duration_since(b.last) < FORGET_FAILURES);
            if f.len() >= MAX_LIMITER_KEYS {
                // Still full of fresh failures: forget the user names, keep the addresses.
                f.retain(|k, _| k.starts_with("a:"));
            }
        }
        for (k, _) in Self::keys(user, ip) {
            let b = f.entry(k).or_insert(Backoff { failures: 0, last: now });
            if now.duration_since(b.last) >= FORGET_FAILURES {
                b.failures = 0;
            }
            b.failures = b.failures.saturating_add(1);
            b.last = now;
        }
    }

    pub fn succeeded(&self, user: &str) {
        let key = Self::keys(user, None).remove(0).0;
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }
}

/// Where argon2 runs: a few at once, a short queue, the rest turned away (see [`HASHING_SLOTS`]).
pub struct HashGate {
    slots: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    running: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    turned_away: std::sync::atomic::AtomicU64,
}

impl Default for HashGate {
    fn default() -> Self {
        HashGate {
            slots: tokio::sync::Semaphore::new(HASHING_SLOTS),
            waiting: Default::default(),
            running: Default::default(),
            peak: Default::default(),
            turned_away: Default::default(),
        }
    }
}

impl HashGate {
    /// Runs `f` (an argon2 check) in a slot, off the async workers; `None`: too busy, try later.
    pub async fn run<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= HASHING_QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.turned_away.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let permit = tokio::time::timeout(HASHING_WAIT, self.slots.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(Ok(_permit)) = permit else {
            self.turned_away.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let out = tokio::task::block_in_place(f);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Some(out)
    }

    /// The most argon2 checks that ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Logins turned away because every slot was busy.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How a typed name appears in logs when it is nobody's: its length and a short digest, never the
/// text (people type their password into the name field).
pub fn name_for_log(name: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    format!(
        "<{} bytes, sha256 {:02x}{:02x}{:02x}{:02x}>",
        name.len(),
        d[0],
        d[1],
        d[2],
        d[3]
    )
}

/// The value of cookie `name` in a request's headers (`None` also for anything longer than a
/// token could be: nothing unbounded is looked up).
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() <= 128)
}

/// Compares two secrets (CSRF tokens, bearer tokens) in time that depends on their lengths only.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_back_off_per_user_and_address_and_never_lock_the_user_out_for_long() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES {
            assert!(l.blocked_at("sam", Some(ip), t0).is_none(), "attempt {i}");
            l.failed_at("sam", Some(ip), t0);
        }
        let s = Duration::from_secs;
        assert_eq!(l.blocked_at("sam", Some(ip), t0), Some(s(1)));
        assert_eq!(
            l.blocked_at("sam", Some(other), t0),
            Some(s(1)),
            "the user waits from anywhere"
        );
        assert_eq!(
            l.blocked_at("kim", Some(ip), t0),
            Some(s(1)),
            "the address waits for anyone"
        );
        assert_eq!(l.blocked_at("kim", Some(other), t0), None);
        assert_eq!(l.blocked_at("sam", Some(ip), t0 + s(1)), None, "a wait, not a lockout");
        // The guesser keeps going, each time as soon as it may: the waits double.
        let mut t = t0;
        for _ in 0..12 {
            t += l.blocked_at("sam", Some(ip), t).unwrap_or_default();
            l.failed_at("sam", Some(ip), t);
        }
        let at_address = l.blocked_at("kim", Some(ip), t).unwrap();
        let for_user = l.blocked_at("sam", Some(other), t).unwrap();
        assert_eq!(at_address, s(4096).min(ADDRESS_MAX_WAIT));
        assert_eq!(
            for_user, USER_MAX_WAIT,
            "the real user, elsewhere, waits half a minute at most"
        );
        // The real user logs in: their name is free again; the guessing address is not.
        l.succeeded("sam");
        assert_eq!(l.blocked_at("sam", Some(other), t), None);
        assert!(l.blocked_at("sam", Some(ip), t).is_some());
        // Forgotten a while after the last failure.
        assert_eq!(l.blocked_at("kim", Some(ip), t + FORGET_FAILURES), None);
        l.failed_at("kim", Some(ip), t + FORGET_FAILURES);
        assert_eq!(
            l.blocked_at("kim", Some(ip), t + FORGET_FAILURES),
            None,
            "counted from one again"
        );
    }

    #[test]
    fn a_flood_of_names_keeps_the_limiter_bounded_and_names_out_of_logs() {
        let l = LoginLimiter::default();
        let t = Instant::now();
        for i in 0..(MAX_LIMITER_KEYS + 10) {
            l.failed_at(&format!("name{i}"), None, t);
        }
        assert!(l.failures.lock().unwrap().len() <= MAX_LIMITER_KEYS);
        let long = "x".repeat(10_000);
        l.failed_at(&long, None, t);
        assert!(l.failures.lock().unwrap().keys().all(|k| k.len() <= 66));
        let shown = name_for_log("hunter2 my password");
        assert!(!shown.contains("hunter2") && shown.contains("19 bytes"), "{shown}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_runs_a_few_at_once_and_a_flood_is_turned_away() {
        let gate = std::sync::Arc::new(HashGate::default());
        let mut tasks = Vec::new();
        for _ in 0..(HASHING_QUEUE + HASHING_SLOTS + 20) {
            let g = gate.clone();
            tasks.push(tokio::spawn(async move {
                g.run(|| std::thread::sleep(Duration::from_millis(50))).await.is_some()
            }));
        }
        let mut ran = 0;
        for t in tasks {
            ran += usize::from(t.await.unwrap());
        }
        assert!(gate.peak() <= HASHING_SLOTS, "peak {}", gate.peak());
        assert!(gate.turned_away() > 0, "the queue is bounded");
        assert_eq!(
            ran as u64 + gate.turned_away(),
            (HASHING_QUEUE + HASHING_SLOTS + 20) as u64
        );
        assert!(gate.run(|| 7).await == Some(7), "free again afterwards");
    }
}
