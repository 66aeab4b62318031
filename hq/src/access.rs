//! Who may read HQ: analysts with a name, an argon2id password hash and a role, and their sessions.
//!
//! Both live in HQ's storage, never in one process: with PostgreSQL every HQ process behind a load
//! balancer sees the same users and sessions (a login made on one works on the others). The embedded
//! store keeps users in `hq-users.json` beside its database (so `lpmesh hq user add` works while HQ
//! runs, like `register-store`) and sessions in the database.
//!
//! A session names the version of its user it was opened for (`changed_ms`): removing a user,
//! changing their role, stores or password ends every session they had, on every process, at the next
//! request.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

pub const USERS_FILE: &str = "hq-users.json";
/// A session ends after this long without use, and after `SESSION_MAX` whatever its use.
pub const SESSION_IDLE_MS: i64 = 12 * 3_600_000;
pub const SESSION_MAX_MS: i64 = 7 * 24 * 3_600_000;
/// Sessions one user may hold (the oldest goes first): a stolen password cannot fill the table.
pub const SESSIONS_PER_USER: usize = 20;
/// Sessions the embedded store holds in all.
pub const MAX_SESSIONS: usize = 10_000;
/// A session's last use is written at most this often (a write per page view would be wasted).
pub const TOUCH_EVERY_MS: i64 = 60_000;
/// Users HQ keeps (a chain has tens of analysts).
pub const MAX_USERS: usize = 1_000;
/// Stores one viewer may be scoped to.
pub const MAX_SCOPE: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HqRole {
    /// Every store, HQ's metrics.
    Admin,
    /// Only the stores the user is scoped to.
    Viewer,
}

impl HqRole {
    pub fn parse(s: &str) -> Option<HqRole> {
        match s {
            "admin" => Some(HqRole::Admin),
            "viewer" => Some(HqRole::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HqRole::Admin => "admin",
            HqRole::Viewer => "viewer",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HqUser {
    pub name: String,
    pub role: HqRole,
    /// A viewer's stores (an admin's list is ignored).
    #[serde(default)]
    pub stores: Vec<String>,
    /// PHC string (argon2id).
    pub hash: String,
    /// When the user was last set; sessions opened for an earlier version end.
    pub changed_ms: i64,
}

impl HqUser {
    pub fn may_see(&self, store: &str) -> bool {
        self.role == HqRole::Admin || self.stores.iter().any(|s| s == store)
    }

    /// The stores this user's views are limited to; `None`: all of them.
    pub fn scope(&self) -> Option<&[String]> {
        (self.role != HqRole::Admin).then_some(self.stores.as_slice())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HqSession {
    pub user: String,
    /// The version of the user it was opened for ([`HqUser::changed_ms`]).
    pub user_changed_ms: i64,
    pub csrf: String,
    pub created_ms: i64,
    pub last_used_ms: i64,
}

impl HqSession {
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.last_used_ms) >= SESSION_IDLE_MS
            || now_ms.saturating_sub(self.created_ms) >= SESSION_MAX_MS
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user names are 1-32 letters, digits, '.', '-' or '_'")]
    BadName,
    #[error("passwords need at least 12 characters")]
    WeakPassword,
    #[error("a viewer needs at least one store (--stores), at most {MAX_SCOPE}")]
    NoScope,
    #[error("an admin sees every store: --stores is for viewers")]
    AdminScope,
    #[error("HQ keeps at most {MAX_USERS} users")]
    TooMany,
    #[error(transparent)]
    Hash(#[from] lpmesh_web::login::HashError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// HQ's passwords guard every store's figures: longer than a tablet's.
pub const MIN_PASSWORD: usize = 12;

/// A user as `lpmesh hq user add` makes it (hashing the password), checked.
pub fn new_user(
    name: &str,
    role: HqRole,
    stores: Vec<String>,
    password: &str,
    now_ms: i64,
) -> Result<HqUser, UserError> {
    if !lpmesh_web::login::valid_name(name) {
        return Err(UserError::BadName);
    }
    if password.chars().count() < MIN_PASSWORD {
        return Err(UserError::WeakPassword);
    }
    match role {
        HqRole::Viewer if stores.is_empty() || stores.len() > MAX_SCOPE => return Err(UserError::NoScope),
        HqRole::Admin if !stores.is_empty() => return Err(UserError::AdminScope),
        _ => {}
    }
    Ok(HqUser {
        name: name.to_string(),
        role,
        stores,
        hash: lpmesh_web::login::hash_password(password)?,
        changed_ms: now_ms,
    })
}

// ---------------------------------------------------------------------------------------------------------
// The embedded store's users file.

#[derive(Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<HqUser>,
}

fn file_error(path: &Path, e: impl Into<crate::envelope::BoxError>) -> StoreError {
    StoreError::File {
        path: path.to_path_buf(),
        reason: e.into(),
    }
}

pub(crate) fn users_path(data_dir: &Path) -> PathBuf {
    data_dir.join(USERS_FILE)
}

pub(crate) fn read_users(path: &Path) -> Result<Vec<HqUser>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<UsersFile>(&b)
            .map(|f| f.users)
            .map_err(|e| file_error(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(file_error(path, e)),
    }
}

/// Replaces the file atomically, owner-only (it holds password hashes).
fn write_users(path: &Path, users: Vec<HqUser>) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    let json = serde_json::to_vec_pretty(&UsersFile { users }).map_err(|e| StoreError::Corrupt(e.into()))?;
    lpmesh_web::fs::write_private_atomic(path, &path.with_extension("json.tmp"), &json)
        .map_err(|(p, e)| file_error(&p, e))
}

/// Adds or replaces a user; its `changed_ms` always moves forward, so older sessions end.
pub(crate) fn put_user_in_file(path: &Path, mut user: HqUser) -> Result<(), UserError> {
    let mut users = read_users(path)?;
    if let Some(old) = users.iter().find(|u| u.name == user.name) {
        user.changed_ms = user.changed_ms.max(old.changed_ms + 1);
    } else if users.len() >= MAX_USERS {
        return Err(UserError::TooMany);
    }
    users.retain(|u| u.name != user.name);
    users.push(user);
    users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(write_users(path, users)?)
}

pub(crate) fn remove_user_from_file(path: &Path, name: &str) -> Result<bool, StoreError> {
    let mut users = read_users(path)?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Ok(false);
    }
    write_users(path, users)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_checked_and_a_change_moves_the_version_on() {
        assert!(matches!(
            new_user("a b", HqRole::Admin, vec![], "long enough pw", 1),
            Err(UserError::BadName)
        ));
        assert!(matches!(
            new_user("ana", HqRole::Admin, vec![], "short", 1),
            Err(UserError::WeakPassword)
        ));
        assert!(matches!(
            new_user("ana", HqRole::Viewer, vec![], "long enough pw", 1),
            Err(UserError::NoScope)
        ));
        assert!(matches!(
            new_user("ana", HqRole::Admin, vec!["s".into()], "long enough pw", 1),
            Err(UserError::AdminScope)
        ));
        let dir = std::env::temp_dir().join(format!("lpmesh-hq-users-{}", rand::random::<u32>()));
        let path = users_path(&dir);
        let v = new_user("vic", HqRole::Viewer, vec!["shop-1".into()], "long enough pw", 100).unwrap();
        assert!(v.may_see("shop-1") && !v.may_see("shop-2"));
        assert!(lpmesh_web::login::verify_password(&v.hash, "long enough pw"));
        put_user_in_file(&path, v.clone()).unwrap();
        // Set again in the same millisecond: still a new version.
        put_user_in_file(&path, v.clone()).unwrap();
        let read = read_users(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].changed_ms, 101);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "hashes are the owner's only");
        assert!(remove_user_from_file(&path, "vic").unwrap());
        assert!(!remove_user_from_file(&path, "vic").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_session_ends_when_idle_and_after_its_maximum_age() {
        let s = HqSession {
            user: "ana".into(),
            user_changed_ms: 1,
            csrf: "x".into(),
            created_ms: 0,
            last_used_ms: 0,
        };
        assert!(!s.expired(SESSION_IDLE_MS - 1));
        assert!(s.expired(SESSION_IDLE_MS));
        let busy = HqSession {
            last_used_ms: SESSION_MAX_MS - 1,
            ..s
        };
        assert!(!busy.expired(SESSION_MAX_MS - 1));
        assert!(busy.expired(SESSION_MAX_MS));
    }
}
