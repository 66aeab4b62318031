//! Who may use the tablet UI: users (argon2 hashes in `users.json` in the node's data directory,
//! managed with `lpmesh user`), sessions (random tokens in an HttpOnly, SameSite=Strict cookie, each
//! with its own CSRF token), and a limit on failed logins.
//!
//! Users are per node: a tablet logs in to the node it talks to. The file is re-read when it changes,
//! so `lpmesh user add` takes effect without a restart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

pub const USERS_FILE: &str = "users.json";
pub const SESSION_COOKIE: &str = "lpmesh_session";
/// A session ends after this long without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held per node (the oldest goes first).
pub const MAX_SESSIONS: usize = 1000;
/// Failed logins allowed per user and per address within the window.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything: incidents, zones, users' invites.
    Manager,
    /// Incidents and alerts only: no zones, no invites.
    Security,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "manager" => Some(Role::Manager),
            "security" => Some(Role::Security),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// PHC string (argon2id).
    pub hash: String,
    pub created_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("user names are 1-32 letters, digits, '.', '-' or '_'")]
    BadName,
    #[error("passwords need at least 8 characters")]
    WeakPassword,
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 32 && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

pub fn hash_password(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// The users file of a data directory.
pub struct Users {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<User>)>,
    /// Verifying against this when the user does not exist keeps the timing the same.
    dummy: String,
}

impl Users {
    pub fn new(data_dir: &Path) -> Users {
        Users {
            path: data_dir.join(USERS_FILE),
            cache: Mutex::new((None, Vec::new())),
            dummy: hash_password("not-a-real-password").unwrap_or_default(),
        }
    }

    pub fn load(&self) -> Result<Vec<User>, UserError> {
        let file = |e: std::io::Error| UserError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mtime = match std::fs::metadata(&self.path) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(file(e)),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0.is_some() && cache.0 == mtime {
            return Ok(cache.1.clone());
        }
        let bytes = std::fs::read(&self.path).map_err(file)?;
        let users: Vec<User> = serde_json::from_slice(&bytes).map_err(|e| UserError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        *cache = (mtime, users.clone());
        Ok(users)
    }

    fn save(&self, users: &[User]) -> Result<(), UserError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let file = |e: std::io::Error| UserError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(users).map_err(|e| UserError::Hash(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(file)?;
        f.write_all(&json).map_err(file)?;
        f.sync_all().map_err(file)?;
        std::fs::rename(&tmp, &self.path).map_err(file)
    }

    /// Adds a user, or sets a new password and role for an existing one.
    pub fn add(&self, name: &str, role: Role, password: &str) -> Result<(), UserError> {
        if !valid_name(name) {
            return Err(UserError::BadName);
        }
        if password.chars().count() < 8 {
            return Err(UserError::WeakPassword);
        }
        let mut users = self.load()?;
        users.retain(|u| u.name != name);
        users.push(User {
            name: name.to_string(),
            role,
            hash: hash_password(password)?,
            created_ms: chrono::Utc::now().timestamp_millis(),
        });
        users.sort_by(|a, b| a.name.cmp(&b.name));
        self.save(&users)
    }

    pub fn remove(&self, name: &str) -> Result<(), UserError> {
        let mut users = self.load()?;
        let before = users.len();
        users.retain(|u| u.name != name);
        if users.len() == before {
            return Err(UserError::NoSuchUser(name.to_string()));
        }
        self.save(&users)
    }

    /// The user's role if the password is right.
    pub fn check(&self, name: &str, password: &str) -> Option<Role> {
        let users = self.load().ok()?;
        match users.iter().find(|u| u.name == name) {
            Some(u) => verify(&u.hash, password).then_some(u.role),
            None => {
                let _ = verify(&self.dummy, password);
                None
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    last_used: Instant,
}

/// Random token, 256 bits, URL-safe.
pub fn token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Creates a session; returns its cookie token.
    pub fn create(&self, user: &str, role: Role) -> (String, Session) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => break,
            }
        }
        let s = Session {
            user: user.to_string(),
            role,
            csrf: token(),
            last_used: Instant::now(),
        };
        let t = token();
        map.insert(t.clone(), s.clone());
        (t, s)
    }

    pub fn get(&self, token: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(token)?;
        if s.last_used.elapsed() >= SESSION_IDLE {
            map.remove(token);
            return None;
        }
        s.last_used = Instant::now();
        Some(s.clone())
    }

    pub fn remove(&self, token: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(token);
    }

    /// Ends every session of a user (removed, or password changed).
    pub fn remove_user(&self, user: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.user != user);
    }
}

/// Failed logins per user name and per client address within a sliding window.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    fn keys(user: &str, ip: Option<IpAddr>) -> Vec<String> {
        let mut k = vec![format!("u:{user}")];
        if let Some(ip) = ip {
            k.push(format!("a:{ip}"));
        }
        k
    }

    /// Seconds to wait when blocked.
    pub fn blocked(&self, user: &str, ip: Option<IpAddr>) -> Option<u64> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for k in Self::keys(user, ip) {
            if let Some(v) = f.get_mut(&k) {
                v.retain(|t| t.elapsed() < FAILURE_WINDOW);
                if v.len() >= MAX_FAILURES {
                    let first = v[0];
                    let left = FAILURE_WINDOW.saturating_sub(first.elapsed()).as_secs().max(1);
                    wait = Some(wait.map_or(left, |w: u64| w.max(left)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, user: &str, ip: Option<IpAddr>) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() > 10_000 {
            f.retain(|_, v| v.iter().any(|t| t.elapsed() < FAILURE_WINDOW));
        }
        for k in Self::keys(user, ip) {
            let v = f.entry(k).or_default();
            v.push(Instant::now());
            if v.len() > MAX_FAILURES * 2 {
                v.remove(0);
            }
        }
    }

    pub fn succeeded(&self, user: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("u:{user}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_hashed_checked_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("lpmesh-users-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = Users::new(&dir);
        assert!(matches!(
            users.add("bad name", Role::Manager, "longenough"),
            Err(UserError::BadName)
        ));
        assert!(matches!(
            users.add("sam", Role::Manager, "short"),
            Err(UserError::WeakPassword)
        ));
        users.add("sam", Role::Manager, "correct horse").unwrap();
        let text = std::fs::read_to_string(dir.join(USERS_FILE)).unwrap();
        assert!(!text.contains("correct horse") && text.contains("$argon2id$"), "{text}");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(USERS_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(users.check("sam", "correct horse"), Some(Role::Manager));
        assert_eq!(users.check("sam", "wrong"), None);
        assert_eq!(users.check("nobody", "correct horse"), None);
        // Another process (`lpmesh user add`) changes the file: seen without a restart.
        Users::new(&dir).add("guard", Role::Security, "night shift 1").unwrap();
        assert_eq!(users.check("guard", "night shift 1"), Some(Role::Security));
        users.remove("guard").unwrap();
        assert!(users.remove("guard").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_logins_are_limited_per_user_and_address() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(l.blocked("sam", Some(ip)).is_none());
            l.failed("sam", Some(ip));
        }
        assert!(l.blocked("sam", Some(ip)).is_some());
        assert!(l.blocked("sam", None).is_some(), "the user is locked from any address");
        assert!(
            l.blocked("other", Some(ip)).is_some(),
            "the address is locked for any user"
        );
        assert!(l.blocked("other", Some("10.0.0.10".parse().unwrap())).is_none());
    }

    #[test]
    fn sessions_carry_their_own_csrf_token() {
        let s = Sessions::default();
        let (t1, a) = s.create("sam", Role::Manager);
        let (t2, b) = s.create("sam", Role::Manager);
        assert_ne!(t1, t2);
        assert_ne!(a.csrf, b.csrf);
        assert_eq!(s.get(&t1).unwrap().user, "sam");
        s.remove(&t1);
        assert!(s.get(&t1).is_none());
        s.remove_user("sam");
        assert!(s.get(&t2).is_none());
    }
}
