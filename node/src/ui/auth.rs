//! Who may use the tablet UI: users (argon2 hashes in `users.json` in the node's data directory,
//! managed with `lpmesh user`), sessions (random tokens in an HttpOnly, SameSite=Strict cookie, each
//! with its own CSRF token), and a limit on failed logins.
//!
//! Users are per node: a tablet logs in to the node it talks to. The file is re-read when it changes,
//! so `lpmesh user add` takes effect without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use lpmesh_web::login::{
    affordable_hash, hash_password, name_for_log, token, token_key, valid_name, verify_password, HashError, HashGate,
    LoginLimiter, ADDRESS_MAX_WAIT, FORGET_FAILURES, FREE_FAILURES, HASHING_QUEUE, HASHING_SLOTS, HASHING_WAIT,
    USER_MAX_WAIT,
};

pub const USERS_FILE: &str = "users.json";
pub const SESSION_COOKIE: &str = "lpmesh_session";
/// A session ends after this long without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions held per node (the oldest goes first).
pub const MAX_SESSIONS: usize = 1000;
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("user names are 1-32 letters, digits, '.', '-' or '_'")]
    BadName,
    #[error("passwords need at least 8 characters")]
    WeakPassword,
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Whether `name` and `password` make a user ([`Users::add`] would take them).
pub fn check_new_user(name: &str, password: &str) -> Result<(), UserError> {
    if !valid_name(name) {
        return Err(UserError::BadName);
    }
    if password.chars().count() < 8 {
        return Err(UserError::WeakPassword);
    }
    Ok(())
}

/// What a `user` record says: a tablet user of the whole store, set or removed on one node. The
/// argon2 hash travels inside the store's encrypted log, like everything else in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    pub name: String,
    /// `None`: removed from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    pub at_ms: i64,
}

impl UserRecord {
    /// A valid name, and a role with an argon2 hash or neither.
    pub fn is_well_formed(&self) -> bool {
        valid_name(&self.name)
            && match (&self.role, &self.hash) {
                (Some(_), Some(h)) => h.len() <= 256 && affordable_hash(h),
                (None, None) => true,
                _ => false,
            }
    }
}

/// The store's users as the running node last saw them (see [`Users::save_view`]).
pub const VIEW_FILE: &str = "users.view.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct UsersView {
    pub at_ms: i64,
    pub users: Vec<(String, Role)>,
}

/// Names the store keeps users for (a store has tens).
pub const MAX_STORE_USERS: usize = 1024;
/// Changes `lpmesh user` made, waiting for the node to publish them to the store.
pub const OUTBOX_FILE: &str = "users.outbox";

/// The store's users: per name, the record with the latest signed time (then signer) wins, the same
/// on every node that holds the same records.
#[derive(Default)]
pub struct StoreUsers {
    map: Mutex<HashMap<String, (SignedAt, UserRecord)>>,
}

/// A record's signed time (wall ms, logical) and signer: what orders two records of one name.
type SignedAt = (u64, u32, [u8; 32]);

impl StoreUsers {
    /// Folds in a record signed at `hlc` by `signer`; whether it changed what `name` is.
    pub fn apply(&self, hlc: (u64, u32), signer: [u8; 32], r: UserRecord) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (hlc.0, hlc.1, signer);
        match map.get(&r.name) {
            Some((k, _)) if *k >= key => false,
            None if map.len() >= MAX_STORE_USERS => false,
            _ => {
                map.insert(r.name.clone(), (key, r));
                true
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<UserRecord> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(_, r)| r.clone())
    }

    /// The users the store has now (removed ones left out), by name.
    pub fn list(&self) -> Vec<(String, Role)> {
        let mut v: Vec<(String, Role)> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|(_, r)| r.role.map(|role| (r.name.clone(), role)))
            .collect();
        v.sort();
        v
    }
}

/// The users file of a data directory, and the store's users.
pub struct Users {
    store: StoreUsers,
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<User>)>,
    /// Verifying against this when the user does not exist keeps the timing the same.
    dummy: String,
}

impl Users {
    pub fn new(data_dir: &Path) -> Users {
        Users {
            store: StoreUsers::default(),
            path: data_dir.join(USERS_FILE),
            cache: Mutex::new((None, Vec::new())),
            dummy: hash_password("not-a-real-password").unwrap_or_default(),
        }
    }

    pub fn load(&self) -> Result<Vec<User>, UserError> {
        let file = |source: std::io::Error| UserError::File {
            path: self.path.clone(),
            source,
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
        let users: Vec<User> = serde_json::from_slice(&bytes).map_err(|source| UserError::Parse {
            path: self.path.clone(),
            source,
        })?;
        *cache = (mtime, users.clone());
        Ok(users)
    }

    fn save(&self, users: &[User]) -> Result<(), UserError> {
        let json = serde_json::to_vec_pretty(users).map_err(|source| UserError::Encode {
            what: "the users",
            source,
        })?;
        lpmesh_web::fs::write_private_atomic(&self.path, &self.path.with_extension("json.tmp"), &json).map_err(
            |(_, source)| UserError::File {
                path: self.path.clone(),
                source,
            },
        )
    }

    /// Adds a user, or sets a new password and role for an existing one.
    pub fn add(&self, name: &str, role: Role, password: &str) -> Result<(), UserError> {
        check_new_user(name, password)?;
        let mut users = self.load()?;
        users.retain(|u| u.name != name);
        let now = chrono::Utc::now().timestamp_millis();
        let hash = hash_password(password)?;
        users.push(User {
            name: name.to_string(),
            role,
            hash: hash.clone(),
            created_ms: now,
        });
        users.sort_by(|a, b| a.name.cmp(&b.name));
        self.save(&users)?;
        self.queue(&UserRecord {
            name: name.to_string(),
            role: Some(role),
            hash: Some(hash),
            at_ms: now,
        })
    }

    /// Removes a user from the whole store: from this node's file, and by a record every node takes
    /// once this node runs. Whether this node's file had the user (one added on another node is
    /// removed all the same: this process cannot see the store's list).
    pub fn remove(&self, name: &str) -> Result<bool, UserError> {
        if !valid_name(name) {
            return Err(UserError::BadName);
        }
        let mut users = self.load()?;
        let before = users.len();
        users.retain(|u| u.name != name);
        let here = users.len() != before;
        if here {
            self.save(&users)?;
        }
        // Queued even when this node's file never had the user: it may be one added on another node.
        self.queue(&UserRecord {
            name: name.to_string(),
            role: None,
            hash: None,
            at_ms: chrono::Utc::now().timestamp_millis(),
        })?;
        Ok(here)
    }

    /// Whether `name` is a user's (for the log of a failed login).
    pub fn has(&self, name: &str) -> bool {
        self.role_of(name).is_some()
    }

    /// The user's role and hash: the store's record when there is one (a removal included), else
    /// this node's file (users from before the store kept them, until they are published).
    pub(crate) fn find(&self, name: &str) -> Option<(Role, String)> {
        if let Some(u) = self.store.get(name) {
            return u.role.zip(u.hash);
        }
        let users = self.load().ok()?;
        users.into_iter().find(|u| u.name == name).map(|u| (u.role, u.hash))
    }

    /// The role `name` holds now (`None`: no such user, or removed): sessions are checked against it.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.find(name).map(|(role, _)| role)
    }

    /// The user's role if the password is right.
    pub fn check(&self, name: &str, password: &str) -> Option<Role> {
        match self.find(name) {
            Some((role, hash)) => verify_password(&hash, password).then_some(role),
            None => {
                let _ = verify_password(&self.dummy, password);
                None
            }
        }
    }

    /// Writes the store's users (names and roles, never hashes) as this running node knows them, for
    /// `lpmesh user list`, which cannot open the log while the node runs. Best effort: logged.
    pub fn save_view(&self, users: &[(String, Role)]) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let path = dir.join(VIEW_FILE);
        let view = UsersView {
            at_ms: chrono::Utc::now().timestamp_millis(),
            users: users.iter().map(|(n, r)| (n.clone(), *r)).collect(),
        };
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&view)
            .map_err(std::io::Error::other)
            .and_then(|j| std::fs::write(&tmp, j))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the store's user list for `lpmesh user list`");
        }
    }

    /// The store's users as their records say.
    pub fn store(&self) -> &StoreUsers {
        &self.store
    }

    /// This node's users that the store has no record of (they predate it): to publish at start.
    pub fn unpublished(&self) -> Vec<UserRecord> {
        let now = chrono::Utc::now().timestamp_millis();
        self.load()
            .unwrap_or_default()
            .into_iter()
            .filter(|u| self.store.get(&u.name).is_none())
            .map(|u| UserRecord {
                name: u.name,
                role: Some(u.role),
                hash: Some(u.hash),
                at_ms: now,
            })
            .collect()
    }

    /// Queues again changes that could not be published.
    pub fn requeue(&self, changes: &[UserRecord]) -> Result<(), UserError> {
        changes.iter().try_for_each(|r| self.queue(r))
    }

    /// Takes the changes `lpmesh user` queued for the store, oldest first, and empties the queue.
    pub fn take_outbox(&self) -> Vec<UserRecord> {
        let path = self.outbox();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Vec::new();
        };
        let taken: Vec<UserRecord> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<UserRecord>(l).ok())
            .filter(UserRecord::is_well_formed)
            .take(MAX_STORE_USERS)
            .collect();
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot empty the user changes queued for the store");
        }
        taken
    }

    fn outbox(&self) -> PathBuf {
        self.path.with_file_name(OUTBOX_FILE)
    }

    /// Queues a change for the store (published by the running node, or at its next start).
    fn queue(&self, r: &UserRecord) -> Result<(), UserError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.outbox();
        let file = |source: std::io::Error| UserError::File {
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(r).map_err(|source| UserError::Encode {
            what: "a user record",
            source,
        })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(file)?;
        f.write_all(&line).map_err(file)?;
        f.sync_all().map_err(file)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    /// Wall-clock ms of its last use (saved with it, so it survives a restart).
    last_used: i64,
}

impl Session {
    fn idle(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_used) >= SESSION_IDLE.as_millis() as i64
    }
}

/// Where a node keeps its tablets' sessions.
pub const SESSIONS_FILE: &str = "sessions.json";
/// A session's use is written to the file at most this often (a login or logout at once).
const SAVE_USE_EVERY_MS: i64 = 60_000;

/// The tablets' sessions, each under the SHA-256 of its cookie token. Opened on a data directory
/// they are kept in a file (0600), so a restart logs nobody out, and the file holds no token anyone
/// could present.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    file: Option<PathBuf>,
    saved_ms: std::sync::atomic::AtomicI64,
}

use lpmesh_web::clock::now_ms;

impl Sessions {
    /// The sessions kept in `data_dir` (none if the file is missing or unreadable: logged, not fatal).
    pub fn open(data_dir: &Path) -> Sessions {
        let path = data_dir.join(SESSIONS_FILE);
        let mut map: HashMap<String, Session> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "sessions file unreadable: every tablet logs in again");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        let now = now_ms();
        map.retain(|k, s| !s.idle(now) && k.len() == 64);
        while map.len() > MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        Sessions {
            map: Mutex::new(map),
            file: Some(path),
            saved_ms: std::sync::atomic::AtomicI64::new(now),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the sessions to the file (atomically, 0600); a failure is logged: the sessions stay
    /// valid in memory.
    fn save(&self, map: &HashMap<String, Session>) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = &self.file else {
            return;
        };
        self.saved_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(map).map_err(std::io::Error::other).and_then(|json| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the sessions: a restart would log tablets out");
        }
    }

    /// Creates a session; returns its cookie token.
    pub fn create(&self, user: &str, role: Role) -> (String, Session) {
        let mut map = self.lock();
        let now = now_ms();
        map.retain(|_, s| !s.idle(now));
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
            last_used: now,
        };
        let t = token();
        map.insert(token_key(&t), s.clone());
        self.save(&map);
        (t, s)
    }

    pub fn get(&self, token: &str) -> Option<Session> {
        let key = token_key(token);
        let mut map = self.lock();
        let now = now_ms();
        let s = map.get_mut(&key)?;
        if s.idle(now) {
            map.remove(&key);
            self.save(&map);
            return None;
        }
        s.last_used = now;
        let out = s.clone();
        if now.saturating_sub(self.saved_ms.load(std::sync::atomic::Ordering::Relaxed)) >= SAVE_USE_EVERY_MS {
            self.save(&map);
        }
        Some(out)
    }

    pub fn remove(&self, token: &str) {
        let mut map = self.lock();
        if map.remove(&token_key(token)).is_some() {
            self.save(&map);
        }
    }

    /// Whether the session is still open (without counting this as a use).
    pub fn alive(&self, token: &str) -> bool {
        let now = now_ms();
        self.lock().get(&token_key(token)).is_some_and(|s| !s.idle(now))
    }

    /// Ends every session of a user (removed, or password changed).
    pub fn remove_user(&self, user: &str) {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, s| s.user != user);
        if map.len() != before {
            self.save(&map);
        }
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
        assert!(users.remove("guard").unwrap());
        assert!(!users.remove("guard").unwrap(), "not in this node's file any more");
        assert!(matches!(users.remove("bad name"), Err(UserError::BadName)));
        // Every change waits for the running node to publish it to the store, in order.
        let queued = users.take_outbox();
        let what: Vec<(&str, Option<Role>)> = queued.iter().map(|r| (r.name.as_str(), r.role)).collect();
        assert_eq!(
            what,
            [
                ("sam", Some(Role::Manager)),
                ("guard", Some(Role::Security)),
                ("guard", None),
                ("guard", None)
            ]
        );
        assert!(users.take_outbox().is_empty(), "taken once");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_latest_user_record_wins_the_same_on_every_node_and_the_list_is_bounded() {
        let hash = hash_password("night shift 1").unwrap();
        let rec = |name: &str, role: Option<Role>, at_ms| UserRecord {
            name: name.into(),
            role,
            hash: role.map(|_| hash.clone()),
            at_ms,
        };
        let records = [
            ((10, 0), [1; 32], rec("sam", Some(Role::Manager), 1)),
            ((11, 0), [2; 32], rec("sam", None, 2)),
            ((11, 0), [3; 32], rec("kim", Some(Role::Security), 2)),
            ((11, 0), [1; 32], rec("kim", Some(Role::Manager), 2)),
        ];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
            let s = StoreUsers::default();
            for i in order {
                let (hlc, signer, r) = &records[i];
                s.apply(*hlc, *signer, r.clone());
            }
            assert_eq!(s.get("sam").unwrap().role, None, "removed later: removed");
            assert_eq!(
                s.list(),
                vec![("kim".to_string(), Role::Security)],
                "a tie goes to the larger signer"
            );
        }
        assert!(rec("sam", Some(Role::Manager), 0).is_well_formed());
        assert!(rec("sam", None, 0).is_well_formed());
        assert!(!rec("bad name", None, 0).is_well_formed());
        let half = UserRecord {
            hash: Some("not a hash".into()),
            ..rec("sam", Some(Role::Manager), 0)
        };
        assert!(!half.is_well_formed());
        // A hash that would make a login allocate 4 GiB (or use another algorithm) is refused.
        let salt = "c2FsdHNhbHRzYWx0c2FsdA";
        let digest = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY";
        for (h, ok) in [
            (format!("$argon2id$v=19$m=19456,t=2,p=1${salt}${digest}"), true),
            (format!("$argon2id$v=19$m=4194304,t=2,p=1${salt}${digest}"), false),
            (format!("$argon2id$v=19$m=19456,t=100000,p=1${salt}${digest}"), false),
            (format!("$argon2i$v=19$m=19456,t=2,p=1${salt}${digest}"), false),
        ] {
            let r = UserRecord {
                hash: Some(h.clone()),
                ..rec("sam", Some(Role::Manager), 0)
            };
            assert_eq!(r.is_well_formed(), ok, "{h}");
        }
        let s = StoreUsers::default();
        for i in 0..MAX_STORE_USERS + 5 {
            s.apply((1, 0), [0; 32], rec(&format!("u{i}"), None, 0));
        }
        assert_eq!(s.map.lock().unwrap().len(), MAX_STORE_USERS);
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

    #[test]
    fn sessions_survive_a_restart_and_the_file_holds_no_token() {
        let dir = std::env::temp_dir().join(format!("lpmesh-sessions-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Sessions::open(&dir);
        let (t1, a) = s.create("sam", Role::Manager);
        let (t2, _) = s.create("kim", Role::Security);
        let text = std::fs::read_to_string(dir.join(SESSIONS_FILE)).unwrap();
        assert!(!text.contains(&t1) && !text.contains(&t2), "{text}");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SESSIONS_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(s);
        let again = Sessions::open(&dir);
        let back = again.get(&t1).expect("the session outlived the restart");
        assert_eq!(
            (back.user.as_str(), back.role, back.csrf),
            ("sam", Role::Manager, a.csrf)
        );
        assert!(again.get("not a token").is_none());
        again.remove(&t1);
        again.remove_user("kim");
        assert!(Sessions::open(&dir).get(&t1).is_none() && Sessions::open(&dir).get(&t2).is_none());
        // A damaged file logs everyone out, and nothing else.
        std::fs::write(dir.join(SESSIONS_FILE), b"{not json").unwrap();
        assert!(Sessions::open(&dir).get(&t2).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
