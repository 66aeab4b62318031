//! Where HQ keeps what stores sent: PostgreSQL for a real chain (many stores, several HQ processes
//! may share it), or an embedded sled database for the demo and small set-ups.
//!
//! Both keep, per (store, period), the one summary [`Decision`] chose, and the registry of stores and
//! their public signing keys. The PostgreSQL upsert is optimistic (read, decide, conditional write,
//! again if someone else wrote in between), so it needs no transaction and one connection can carry
//! many uploads at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::access::{self, HqSession, HqUser, UserError};
use crate::envelope::{parse_store_key, BoxError};
use crate::plausible::History;
use crate::summary::Summary;
use crate::vv::{Decision, VersionVector};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embedded database {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("PostgreSQL: {}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{path}: {reason}")]
    File {
        path: PathBuf,
        #[source]
        reason: BoxError,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[source] BoxError),
    #[error("bad store key for {store}: {source}")]
    BadKey {
        store: String,
        #[source]
        source: crate::envelope::StoreKeyError,
    },
    #[error("PostgreSQL over TLS: {0}")]
    Tls(#[source] BoxError),
    #[error("another writer keeps changing {store} period {period_start_ms}; giving up")]
    Contended { store: String, period_start_ms: i64 },
}

/// An error and what caused it: tokio_postgres says only "error performing TLS handshake", its
/// source says which certificate was refused and why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A summary as HQ holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSummary {
    pub summary: Summary,
    pub received_at_ms: i64,
    /// How many times this (store, period) was written (first upload and replacements).
    pub updates: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreRow {
    pub store: String,
    pub key: String,
    pub registered_at_ms: i64,
    pub last_sync_ms: Option<i64>,
    pub periods: u64,
    /// Set by `lpmesh hq unregister-store`: its uploads are refused, its history kept.
    pub unregistered_at_ms: Option<i64>,
}

/// What a store reported over some periods, added up (saturating: the figures come from the stores).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub footfall_in: u64,
    pub footfall_out: u64,
    pub incidents: u64,
    pub serious: u64,
}

impl Totals {
    pub fn of(s: &Summary) -> Totals {
        let (footfall_in, footfall_out) = s.footfall_totals();
        Totals {
            footfall_in,
            footfall_out,
            incidents: s.incidents_total(),
            // A period has at least the serious incidents it lists, whatever its count says.
            serious: s.serious_total.max(s.serious.len() as u64),
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.footfall_in = self.footfall_in.saturating_add(o.footfall_in);
        self.footfall_out = self.footfall_out.saturating_add(o.footfall_out);
        self.incidents = self.incidents.saturating_add(o.incidents);
        self.serious = self.serious.saturating_add(o.serious);
    }
}

/// What the chain overview shows, read without going through every summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overview {
    /// Per store, the totals of its periods that started at or after the day's start.
    pub day: BTreeMap<String, Totals>,
    /// The summaries of the week whose newest listed serious incident is newest, as many as asked for:
    /// the newest incidents that many summaries could list are all among them (each summary left out
    /// has nothing newer than what every one of them lists).
    pub serious: Vec<StoredSummary>,
    /// Serious incidents the stores counted in the week (a summary lists at most `MAX_INCIDENTS`).
    pub serious_counted: u64,
}

impl Overview {
    /// The overview of `rows` (the week's summaries, in any order).
    fn of(rows: impl IntoIterator<Item = StoredSummary>, day_from: i64, wanted: usize) -> Overview {
        let mut o = Overview::default();
        for r in rows {
            let t = Totals::of(&r.summary);
            if r.summary.period_start_ms >= day_from {
                o.day.entry(r.summary.store.clone()).or_default().add(&t);
            }
            if t.serious > 0 {
                o.serious_counted = o.serious_counted.saturating_add(t.serious);
                o.serious.push(r);
            }
        }
        o.serious.sort_by(|a, b| {
            (newest_serious(&b.summary), &a.summary.store, b.summary.period_start_ms).cmp(&(
                newest_serious(&a.summary),
                &b.summary.store,
                a.summary.period_start_ms,
            ))
        });
        o.serious.truncate(wanted);
        o
    }
}

/// When a summary's newest listed serious incident started; its period's start if it lists none.
fn newest_serious(s: &Summary) -> i64 {
    s.serious
        .iter()
        .map(|i| i.started_at_ms)
        .max()
        .unwrap_or(s.period_start_ms)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Upserted {
    pub decision: Decision,
    /// What HQ holds for the period after this upload.
    pub stored_vv: VersionVector,
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub store: Option<String>,
    /// Only these stores (a viewer's scope).
    pub stores: Option<Vec<String>>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only what comes after this (store, period start) in the order summaries are listed: the
    /// cursor of a paged export.
    pub after: Option<(String, i64)>,
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, s: &Summary) -> bool {
        self.store.as_deref().is_none_or(|x| x == s.store)
            && self.stores.as_ref().is_none_or(|l| l.contains(&s.store))
            && self.from_ms.is_none_or(|f| s.period_start_ms >= f)
            && self.to_ms.is_none_or(|t| s.period_start_ms < t)
    }
}

pub enum HqStore {
    Embedded(Embedded),
    Postgres(Postgres),
}

impl HqStore {
    pub fn kind(&self) -> &'static str {
        match self {
            HqStore::Embedded(_) => "embedded",
            HqStore::Postgres(_) => "postgresql",
        }
    }

    /// Opens the configured store, running migrations.
    pub async fn open(data_dir: &Path, database_url: Option<&str>, connections: usize) -> Result<HqStore, StoreError> {
        match database_url {
            Some(url) => Ok(HqStore::Postgres(Postgres::connect(url, connections).await?)),
            None => Ok(HqStore::Embedded(Embedded::open(data_dir)?)),
        }
    }

    pub async fn register_store(&self, store: &str, key: &str, now_ms: i64) -> Result<(), StoreError> {
        parse_store_key(key).map_err(|source| StoreError::BadKey {
            store: store.to_string(),
            source,
        })?;
        match self {
            HqStore::Embedded(e) => e.register_store(store, key, now_ms),
            HqStore::Postgres(p) => p.register_store(store, key, now_ms).await,
        }
    }

    /// The registered key text of a store.
    pub async fn store_key(&self, store: &str) -> Result<Option<String>, StoreError> {
        match self {
            HqStore::Embedded(e) => e.store_key(store),
            HqStore::Postgres(p) => p.store_key(store).await,
        }
    }

    /// What HQ holds of `store` that [`crate::plausible::check`] needs: its period length and, per node,
    /// the highest sequence number stored and since when. PostgreSQL keeps it in `store_frontier`,
    /// raised by the statement that stores each summary, so every HQ process sharing the database reads
    /// the same and an upload's check does not grow with the store's age; the embedded store derives it
    /// once from its summaries and keeps it in memory (one process owns the file).
    pub async fn history(&self, store: &str) -> Result<History, StoreError> {
        match self {
            HqStore::Embedded(e) => e.history(store),
            HqStore::Postgres(p) => p.history(store).await,
        }
    }

    pub async fn upsert(&self, summary: &Summary, received_at_ms: i64) -> Result<Upserted, StoreError> {
        match self {
            HqStore::Embedded(e) => e.upsert(summary, received_at_ms),
            HqStore::Postgres(p) => p.upsert(summary, received_at_ms).await,
        }
    }

    pub async fn stores(&self) -> Result<Vec<StoreRow>, StoreError> {
        match self {
            HqStore::Embedded(e) => e.stores(None),
            HqStore::Postgres(p) => p.stores(None).await,
        }
    }

    /// One store's row (a store's page): its own summaries are counted, not the chain's.
    pub async fn store_row(&self, store: &str) -> Result<Option<StoreRow>, StoreError> {
        // No registered name holds a NUL (PostgreSQL's text cannot), and PostgreSQL refuses one as a
        // parameter: a name from a URL with one is simply not a store.
        if store.contains('\0') {
            return Ok(None);
        }
        let rows = match self {
            HqStore::Embedded(e) => e.stores(Some(store))?,
            HqStore::Postgres(p) => p.stores(Some(store)).await?,
        };
        Ok(rows.into_iter().next())
    }

    /// The chain overview: per store, the totals of the periods since `day_from` (the day lies within
    /// the week: an earlier `day_from` counts from `week_from`); and the `wanted` summaries since
    /// `week_from` with the newest serious incidents (see [`Overview::serious`]; at least one).
    /// `scope`: only these stores (a viewer's).
    pub async fn overview(
        &self,
        day_from: i64,
        week_from: i64,
        scope: Option<&[String]>,
        wanted: usize,
    ) -> Result<Overview, StoreError> {
        let (day_from, wanted) = (day_from.max(week_from), wanted.max(1));
        match self {
            // The embedded store is for a few stores: it reads the week.
            HqStore::Embedded(e) => {
                let week = e.summaries(&Filter {
                    from_ms: Some(week_from),
                    stores: scope.map(<[String]>::to_vec),
                    ..Filter::default()
                })?;
                Ok(Overview::of(week, day_from, wanted))
            }
            HqStore::Postgres(p) => p.overview(day_from, week_from, scope, wanted).await,
        }
    }

    /// Summaries by store, then period.
    pub async fn summaries(&self, f: &Filter) -> Result<Vec<StoredSummary>, StoreError> {
        match self {
            HqStore::Embedded(e) => e.summaries(f),
            HqStore::Postgres(p) => p.summaries(f).await,
        }
    }

    /// Refuses the store's uploads from now on (its summaries stay); `false` if it was not registered.
    pub async fn unregister_store(&self, store: &str, now_ms: i64) -> Result<bool, StoreError> {
        match self {
            HqStore::Embedded(e) => unregister_in_file(&e.registry, store, now_ms),
            HqStore::Postgres(p) => p.unregister_store(store, now_ms).await,
        }
    }

    pub async fn users(&self) -> Result<Vec<HqUser>, StoreError> {
        match self {
            HqStore::Embedded(e) => access::read_users(&e.users),
            HqStore::Postgres(p) => p.users(None).await,
        }
    }

    pub async fn user(&self, name: &str) -> Result<Option<HqUser>, StoreError> {
        match self {
            HqStore::Embedded(e) => Ok(access::read_users(&e.users)?.into_iter().find(|u| u.name == name)),
            HqStore::Postgres(p) => Ok(p.users(Some(name)).await?.pop()),
        }
    }

    /// Adds or replaces a user (ending the sessions of the version it replaces).
    pub async fn put_user(&self, user: HqUser) -> Result<(), UserError> {
        match self {
            HqStore::Embedded(e) => access::put_user_in_file(&e.users, user),
            HqStore::Postgres(p) => p.put_user(&user).await,
        }
    }

    pub async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            HqStore::Embedded(e) => access::remove_user_from_file(&e.users, name),
            HqStore::Postgres(p) => p.remove_user(name).await,
        }
    }

    /// Keeps a new session under `key` (the digest of its token), dropping the user's oldest beyond
    /// [`access::SESSIONS_PER_USER`] and any that expired.
    pub async fn open_session(&self, key: &str, s: &HqSession) -> Result<(), StoreError> {
        match self {
            HqStore::Embedded(e) => e.open_session(key, s),
            HqStore::Postgres(p) => p.open_session(key, s).await,
        }
    }

    pub async fn session(&self, key: &str) -> Result<Option<HqSession>, StoreError> {
        match self {
            HqStore::Embedded(e) => e.session(key),
            HqStore::Postgres(p) => p.session(key).await,
        }
    }

    /// Records a use (at most once per [`access::TOUCH_EVERY_MS`] of the stored time).
    pub async fn touch_session(&self, key: &str, s: &HqSession, now_ms: i64) -> Result<(), StoreError> {
        if now_ms.saturating_sub(s.last_used_ms) < access::TOUCH_EVERY_MS {
            return Ok(());
        }
        match self {
            HqStore::Embedded(e) => e.open_session(
                key,
                &HqSession {
                    last_used_ms: now_ms,
                    ..s.clone()
                },
            ),
            HqStore::Postgres(p) => p.touch_session(key, now_ms).await,
        }
    }

    pub async fn close_session(&self, key: &str) -> Result<(), StoreError> {
        match self {
            HqStore::Embedded(e) => e.sled(e.sessions.remove(key.as_bytes())).map(drop),
            HqStore::Postgres(p) => p.close_session(key).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Embedded

/// sled for summaries; the registry of stores is a small JSON file beside it, so `lpmesh hq
/// register-store` can add a store while HQ runs (sled admits one process at a time).
pub struct Embedded {
    db: sled::Db,
    sessions: sled::Tree,
    /// What sled's flush leaves unsynced (see `lpmesh_durable`).
    /// Boxed: `HqStore`'s variants stay of a size.
    sync: Box<Mutex<lpmesh_durable::SledSync>>,
    path: PathBuf,
    registry: PathBuf,
    users: PathBuf,
    /// Upserts are read-decide-write: one at a time. The lock also guards the stores' histories,
    /// derived from the database once per store and kept up to date by each write (one process holds
    /// a sled database, so nobody else writes behind them).
    write: Mutex<HashMap<String, History>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Registry {
    stores: Vec<Registered>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Registered {
    store: String,
    key: String,
    registered_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unregistered_at_ms: Option<i64>,
}

const REGISTRY_FILE: &str = "stores.json";

fn summary_key(store: &str, period_start_ms: i64) -> Vec<u8> {
    let mut k = store.as_bytes().to_vec();
    k.push(0);
    // Offset so that negative times still sort in order.
    k.extend_from_slice(&((period_start_ms as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// Registers a store in the embedded store's registry without opening its database.
pub fn register_in_file(data_dir: &Path, store: &str, key: &str, now_ms: i64) -> Result<(), StoreError> {
    parse_store_key(key).map_err(|source| StoreError::BadKey {
        store: store.to_string(),
        source,
    })?;
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::File {
        path: data_dir.to_path_buf(),
        reason: e.into(),
    })?;
    write_registry(&data_dir.join(REGISTRY_FILE), store, key, now_ms)
}

fn read_registry_file(path: &Path) -> Result<Registry, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::File {
            path: path.to_path_buf(),
            reason: e.into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
        Err(e) => Err(StoreError::File {
            path: path.to_path_buf(),
            reason: e.into(),
        }),
    }
}

/// Adds or re-keys a store (registering it again if it was unregistered).
fn write_registry(path: &Path, store: &str, key: &str, now_ms: i64) -> Result<(), StoreError> {
    let mut reg = read_registry_file(path)?;
    reg.stores.retain(|s| s.store != store);
    reg.stores.push(Registered {
        store: store.to_string(),
        key: key.to_string(),
        registered_at_ms: now_ms,
        unregistered_at_ms: None,
    });
    save_registry(path, reg)
}

/// Marks a store unregistered in the embedded store's registry; `false` if it is not registered.
pub fn unregister_in_file(path: &Path, store: &str, now_ms: i64) -> Result<bool, StoreError> {
    let mut reg = read_registry_file(path)?;
    let Some(r) = reg
        .stores
        .iter_mut()
        .find(|s| s.store == store && s.unregistered_at_ms.is_none())
    else {
        return Ok(false);
    };
    r.unregistered_at_ms = Some(now_ms);
    save_registry(path, reg)?;
    Ok(true)
}

/// The registry's path in an embedded store's data directory.
pub fn registry_path(data_dir: &Path) -> PathBuf {
    data_dir.join(REGISTRY_FILE)
}

/// Replaces the file atomically.
fn save_registry(path: &Path, mut reg: Registry) -> Result<(), StoreError> {
    reg.stores.sort_by(|a, b| a.store.cmp(&b.store));
    let file = |e: std::io::Error| StoreError::File {
        path: path.to_path_buf(),
        reason: e.into(),
    };
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(&reg).map_err(|e| StoreError::Corrupt(e.into()))?;
    // A store registered must stay registered: replaced whole and synced, rename included.
    lpmesh_durable::replace_file(path, &tmp, &json, 0o644).map_err(|(_, e)| file(e))
}

impl Embedded {
    pub fn open(data_dir: &Path) -> Result<Embedded, StoreError> {
        let path = data_dir.join("hq.db");
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::File {
            path: data_dir.to_path_buf(),
            reason: e.into(),
        })?;
        let db = sled::open(&path).map_err(|source| StoreError::Sled {
            path: path.clone(),
            source,
        })?;
        let sessions = db.open_tree("hq_sessions").map_err(|source| StoreError::Sled {
            path: path.clone(),
            source,
        })?;
        let sync = lpmesh_durable::SledSync::open(&path).map_err(|e| StoreError::Sled {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Embedded {
            db,
            sync: Box::new(std::sync::Mutex::new(sync)),
            sessions,
            path,
            registry: data_dir.join(REGISTRY_FILE),
            users: access::users_path(data_dir),
            write: Mutex::new(HashMap::new()),
        })
    }

    /// What sled's flush leaves unsynced (see `lpmesh_durable`).
    fn durable(&self) -> Result<(), StoreError> {
        let mut sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        self.sled(sync.sync().map_err(sled::Error::from))
    }

    fn sled<T>(&self, r: Result<T, sled::Error>) -> Result<T, StoreError> {
        r.map_err(|source| StoreError::Sled {
            path: self.path.clone(),
            source,
        })
    }

    fn read_registry(&self) -> Result<Registry, StoreError> {
        read_registry_file(&self.registry)
    }

    pub fn register_store(&self, store: &str, key: &str, now_ms: i64) -> Result<(), StoreError> {
        write_registry(&self.registry, store, key, now_ms)
    }

    pub fn store_key(&self, store: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .read_registry()?
            .stores
            .into_iter()
            .find(|s| s.store == store && s.unregistered_at_ms.is_none())
            .map(|s| s.key))
    }

    fn open_session(&self, key: &str, s: &HqSession) -> Result<(), StoreError> {
        let now = s.last_used_ms;
        let mut held: Vec<(sled::IVec, HqSession)> = Vec::new();
        for kv in self.sessions.iter() {
            let (k, v) = self.sled(kv)?;
            match serde_json::from_slice::<HqSession>(&v) {
                Ok(old) if !old.expired(now) => held.push((k, old)),
                // Expired or unreadable: gone.
                _ => {
                    self.sled(self.sessions.remove(&k))?;
                }
            }
        }
        let mut mine: Vec<&(sled::IVec, HqSession)> = held
            .iter()
            .filter(|(k, o)| o.user == s.user && k.as_ref() != key.as_bytes())
            .collect();
        mine.sort_by_key(|(_, o)| std::cmp::Reverse(o.created_ms));
        let mut drop: Vec<&sled::IVec> = mine
            .iter()
            .skip(access::SESSIONS_PER_USER.saturating_sub(1))
            .map(|(k, _)| k)
            .collect();
        if held.len() >= access::MAX_SESSIONS {
            let mut all: Vec<&(sled::IVec, HqSession)> = held.iter().collect();
            all.sort_by_key(|(_, o)| o.last_used_ms);
            drop.extend(all.iter().take(held.len() + 1 - access::MAX_SESSIONS).map(|(k, _)| k));
        }
        for k in drop {
            self.sled(self.sessions.remove(k))?;
        }
        let bytes = serde_json::to_vec(s).map_err(|e| StoreError::Corrupt(e.into()))?;
        self.sled(self.sessions.insert(key.as_bytes(), bytes))?;
        Ok(())
    }

    fn session(&self, key: &str) -> Result<Option<HqSession>, StoreError> {
        match self.sled(self.sessions.get(key.as_bytes()))? {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    fn get(&self, store: &str, period_start_ms: i64) -> Result<Option<StoredSummary>, StoreError> {
        match self.sled(self.db.get(summary_key(store, period_start_ms)))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.into())),
            None => Ok(None),
        }
    }

    /// Scans the store's summaries, in period order.
    fn derive_history(&self, store: &str) -> Result<History, StoreError> {
        let mut prefix = store.as_bytes().to_vec();
        prefix.push(0);
        let mut h = History::default();
        for kv in self.db.scan_prefix(prefix) {
            let (_, v) = self.sled(kv)?;
            let s: StoredSummary = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.into()))?;
            h.take(s.summary.period_secs, &s.summary.vv, s.received_at_ms);
        }
        Ok(h)
    }

    pub fn history(&self, store: &str) -> Result<History, StoreError> {
        let mut known = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = known.get(store) {
            return Ok(h.clone());
        }
        let h = self.derive_history(store)?;
        known.insert(store.to_string(), h.clone());
        Ok(h)
    }

    pub fn upsert(&self, s: &Summary, received_at_ms: i64) -> Result<Upserted, StoreError> {
        let mut known = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let existing = self.get(&s.store, s.period_start_ms)?;
        let decision = Decision::decide(existing.as_ref().map(|e| &e.summary.vv), &s.vv);
        if !decision.writes() {
            // What is already there may be the row of an earlier upload whose sync failed: it is
            // acknowledged only once it is durable.
            self.sled(self.db.flush())?;
            self.durable()?;
            let stored_vv = existing.map(|e| e.summary.vv).unwrap_or_default();
            return Ok(Upserted { decision, stored_vv });
        }
        let row = StoredSummary {
            summary: s.clone(),
            received_at_ms,
            updates: existing.map_or(1, |e| e.updates.saturating_add(1)),
        };
        let bytes = serde_json::to_vec(&row).map_err(|e| StoreError::Corrupt(e.into()))?;
        self.sled(self.db.insert(summary_key(&s.store, s.period_start_ms), bytes))?;
        // Acknowledged means durable.
        self.sled(self.db.flush())?;
        self.durable()?;
        // A history not derived yet will be, with this summary in it.
        if let Some(h) = known.get_mut(&s.store) {
            h.take(s.period_secs, &s.vv, received_at_ms);
        }
        Ok(Upserted {
            decision,
            stored_vv: s.vv.clone(),
        })
    }

    /// Every registered store, or only `only`.
    pub fn stores(&self, only: Option<&str>) -> Result<Vec<StoreRow>, StoreError> {
        let mut out = Vec::new();
        for r in self.read_registry()?.stores {
            if only.is_some_and(|o| o != r.store) {
                continue;
            }
            let mut prefix = r.store.as_bytes().to_vec();
            prefix.push(0);
            let mut last_sync_ms = None;
            let mut periods = 0;
            for kv in self.db.scan_prefix(&prefix) {
                let (_, v) = self.sled(kv)?;
                let s: StoredSummary = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.into()))?;
                periods += 1;
                last_sync_ms = last_sync_ms.max(Some(s.received_at_ms));
            }
            out.push(StoreRow {
                store: r.store,
                key: r.key,
                registered_at_ms: r.registered_at_ms,
                last_sync_ms,
                periods,
                unregistered_at_ms: r.unregistered_at_ms,
            });
        }
        Ok(out)
    }

    pub fn summaries(&self, f: &Filter) -> Result<Vec<StoredSummary>, StoreError> {
        use std::ops::Bound;
        let mut out = Vec::new();
        let prefix = f.store.as_ref().map(|store| {
            let mut p = store.as_bytes().to_vec();
            p.push(0);
            p
        });
        let start = match (&f.after, &prefix) {
            (Some((store, period)), _) => Bound::Excluded(summary_key(store, *period)),
            (None, Some(p)) => Bound::Included(p.clone()),
            (None, None) => Bound::Unbounded,
        };
        for kv in self.db.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = self.sled(kv)?;
            if let Some(p) = &prefix {
                if !k.starts_with(p) {
                    // Keys sort by store: past the store's, nothing more of it comes.
                    if k.as_ref() > p.as_slice() {
                        break;
                    }
                    continue;
                }
            }
            let s: StoredSummary = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.into()))?;
            if f.matches(&s.summary) {
                out.push(s);
                if f.limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------------------
// PostgreSQL

/// Schema versions, applied in order at start, each once (recorded in `lpmesh_schema`).
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE stores (
        store text PRIMARY KEY,
        signing_key text NOT NULL,
        registered_at_ms bigint NOT NULL
     );
     CREATE TABLE summaries (
        store text NOT NULL REFERENCES stores(store),
        period_start_ms bigint NOT NULL,
        period_secs integer NOT NULL,
        vv jsonb NOT NULL,
        summary jsonb NOT NULL,
        received_at_ms bigint NOT NULL,
        updates integer NOT NULL DEFAULT 1,
        PRIMARY KEY (store, period_start_ms)
     );
     CREATE INDEX summaries_by_period ON summaries (period_start_ms);",
    ),
    (
        2,
        "ALTER TABLE stores ADD COLUMN unregistered_at_ms bigint;
     CREATE TABLE hq_users (
        name text PRIMARY KEY,
        role text NOT NULL,
        stores jsonb NOT NULL,
        hash text NOT NULL,
        changed_ms bigint NOT NULL
     );
     CREATE TABLE hq_sessions (
        token_hash text PRIMARY KEY,
        name text NOT NULL,
        user_changed_ms bigint NOT NULL,
        csrf text NOT NULL,
        created_ms bigint NOT NULL,
        last_used_ms bigint NOT NULL
     );
     CREATE INDEX hq_sessions_by_name ON hq_sessions (name, created_ms);",
    ),
    (
        // Per store and node, the highest version-vector entry stored and since when: the upload check
        // reads it on every upload, and deriving it from the summaries read a store's whole history
        // (8,760 rows a year) each time. Filled from the summaries already stored, with their writers
        // held off meanwhile. An HQ of an older version writes without raising it: stop them all before
        // the first HQ of this version starts (the README's upgrade note).
        3,
        "CREATE TABLE store_frontier (
        store text NOT NULL REFERENCES stores(store),
        node text NOT NULL,
        seq numeric(20, 0) NOT NULL,
        since_ms bigint NOT NULL,
        PRIMARY KEY (store, node)
     );
     LOCK TABLE summaries IN SHARE MODE;
     INSERT INTO store_frontier (store, node, seq, since_ms)
        SELECT DISTINCT ON (m.store, e.key) m.store, e.key, e.value::text::numeric, m.received_at_ms
        FROM summaries m, jsonb_each(m.vv) AS e
        ORDER BY m.store, e.key, e.value::text::numeric DESC, m.received_at_ms;",
    ),
    (
        // What the chain overview reads, kept as the summaries are written: each store's count of
        // periods and last sync, and each summary's totals. Counting and summing them from the
        // summaries' JSON read every summary of every store on every page (87 million rows for 10,000
        // stores after a year). Filled from the summaries stored (ALTER TABLE holds writers off); as
        // with schema 3, stop every older HQ before the first of this version starts.
        4,
        "ALTER TABLE stores ADD COLUMN periods bigint NOT NULL DEFAULT 0, ADD COLUMN last_sync_ms bigint;
     ALTER TABLE summaries ADD COLUMN footfall_in numeric(20, 0) NOT NULL DEFAULT 0,
        ADD COLUMN footfall_out numeric(20, 0) NOT NULL DEFAULT 0,
        ADD COLUMN incidents numeric(20, 0) NOT NULL DEFAULT 0,
        ADD COLUMN serious numeric(20, 0) NOT NULL DEFAULT 0,
        ADD COLUMN serious_newest_ms bigint NOT NULL DEFAULT 0;
     UPDATE summaries SET
        footfall_in = least(coalesce((SELECT sum((l->>'in')::numeric) FROM jsonb_array_elements(summary->'footfall') l), 0), 18446744073709551615),
        footfall_out = least(coalesce((SELECT sum((l->>'out')::numeric) FROM jsonb_array_elements(summary->'footfall') l), 0), 18446744073709551615),
        incidents = least(coalesce((SELECT sum(k.value::text::numeric) FROM jsonb_each(summary->'incidents_by_kind') k), 0), 18446744073709551615),
        serious = greatest(coalesce((summary->>'serious_total')::numeric, 0), coalesce(jsonb_array_length(summary->'serious'), 0)),
        serious_newest_ms = coalesce((SELECT max((i->>'started_at_ms')::bigint) FROM jsonb_array_elements(summary->'serious') i), period_start_ms);
     UPDATE stores s SET periods = c.n, last_sync_ms = c.last
        FROM (SELECT store, count(*) AS n, max(received_at_ms) AS last FROM summaries GROUP BY store) c
        WHERE c.store = s.store;
     CREATE INDEX summaries_with_serious ON summaries (period_start_ms) WHERE serious > 0;
     CREATE INDEX summaries_newest_serious ON summaries (serious_newest_ms) WHERE serious > 0;",
    ),
];

/// Raises the frontier of `$1`'s nodes to the entries of the version vector `$2` (jsonb text) stored at
/// `$3`, as `History::take` does: a higher entry moves it, an equal one stored earlier keeps the earlier
/// time. Used inside the statement that writes the summary, so both land or neither does.
const RAISE_FRONTIER: &str = "INSERT INTO store_frontier (store, node, seq, since_ms)
        SELECT $1, e.key, e.value::text::numeric, $3 FROM jsonb_each($2::text::jsonb) AS e
        WHERE EXISTS (SELECT 1 FROM written)
          -- Entries that would not move are left out: an upsert that does nothing still locks its row.
          AND NOT EXISTS (SELECT 1 FROM store_frontier f WHERE f.store = $1 AND f.node = e.key
                          AND (f.seq > e.value::text::numeric
                               OR (f.seq = e.value::text::numeric AND f.since_ms <= $3)))
        -- Rows are locked in one order by every upload, so two uploads of a store cannot deadlock.
        ORDER BY e.key
        ON CONFLICT (store, node) DO UPDATE SET seq = EXCLUDED.seq, since_ms = EXCLUDED.since_ms
        WHERE store_frontier.seq < EXCLUDED.seq
           OR (store_frontier.seq = EXCLUDED.seq AND EXCLUDED.since_ms < store_frontier.since_ms)";

pub struct Postgres {
    conns: Vec<Conn>,
    next: AtomicUsize,
}

/// One connection and the statements every upload runs, prepared on it once: a query sent as text
/// costs PostgreSQL a parse and a plan, and the connection a round trip to prepare it, every time.
/// (A statement is tied to its connection; PostgreSQL plans it again by itself when the schema changes.)
struct Conn {
    client: tokio_postgres::Client,
    first_period: tokio_postgres::Statement,
    frontier: tokio_postgres::Statement,
    read_vv: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
}

impl Conn {
    async fn prepare(client: tokio_postgres::Client) -> Result<Conn, StoreError> {
        // The store's first period's length, and per node id the highest entry with the earliest time
        // a summary naming it was stored (numeric: version vector entries are u64).
        let first_period =
            client.prepare("SELECT period_secs FROM summaries WHERE store = $1 ORDER BY period_start_ms LIMIT 1");
        let frontier = client.prepare("SELECT node, seq::text, since_ms FROM store_frontier WHERE store = $1");
        let read_vv = client.prepare("SELECT vv::text FROM summaries WHERE store = $1 AND period_start_ms = $2");
        // One statement writes the summary and raises the frontier: atomic without a transaction's
        // extra round trips. Each writes only if nobody changed the row since it was read.
        // The summary's totals ($7-$10) and its newest serious incident's start ($11) are written
        // beside it, and the store's row counts the period
        // and the sync: what the chain overview reads.
        let insert_sql = format!(
            "WITH written AS (
                INSERT INTO summaries (store, period_start_ms, period_secs, vv, summary, received_at_ms,
                                       footfall_in, footfall_out, incidents, serious, serious_newest_ms)
                VALUES ($1, $4, $5, $2::text::jsonb, $6::text::jsonb, $3,
                        $7::text::numeric, $8::text::numeric, $9::text::numeric, $10::text::numeric, $11)
                ON CONFLICT DO NOTHING
                RETURNING 1
             ), raised AS ({RAISE_FRONTIER}),
             synced AS (UPDATE stores SET periods = periods + 1, last_sync_ms = greatest(last_sync_ms, $3)
                        WHERE store = $1 AND EXISTS (SELECT 1 FROM written))
             SELECT count(*) FROM written"
        );
        let update_sql = format!(
            "WITH written AS (
                UPDATE summaries SET vv = $2::text::jsonb, summary = $6::text::jsonb,
                       received_at_ms = $3, period_secs = $5, updates = updates + 1,
                       footfall_in = $7::text::numeric, footfall_out = $8::text::numeric,
                       incidents = $9::text::numeric, serious = $10::text::numeric, serious_newest_ms = $11
                WHERE store = $1 AND period_start_ms = $4 AND vv = $12::text::jsonb
                RETURNING 1
             ), raised AS ({RAISE_FRONTIER}),
             synced AS (UPDATE stores SET last_sync_ms = greatest(last_sync_ms, $3)
                        WHERE store = $1 AND EXISTS (SELECT 1 FROM written))
             SELECT count(*) FROM written"
        );
        let insert = client.prepare(&insert_sql);
        let update = client.prepare(&update_sql);
        let (first_period, frontier, read_vv, insert, update) =
            futures::try_join!(first_period, frontier, read_vv, insert, update)?;
        Ok(Conn {
            client,
            first_period,
            frontier,
            read_vv,
            insert,
            update,
        })
    }
}

/// A row of `summary::text, received_at_ms, updates`.
fn stored_row(r: &tokio_postgres::Row) -> Result<StoredSummary, StoreError> {
    let text: String = r.get(0);
    Ok(StoredSummary {
        summary: serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.into()))?,
        received_at_ms: r.get(1),
        updates: r.get::<_, i32>(2) as u32,
    })
}

/// Lets two HQ processes start against one database without racing through the migrations.
const MIGRATION_LOCK: i64 = 0x6c70_6d65_7368;

impl Postgres {
    /// Opens `connections` connections (each carries many concurrent queries) and migrates the schema.
    pub async fn connect(url: &str, connections: usize) -> Result<Postgres, StoreError> {
        let target = crate::pgtls::PgTarget::parse(url).map_err(|e| StoreError::Tls(e.into()))?;
        let first = crate::pgtls::connect(&target).await?;
        // Statements are prepared against the schema, so it is migrated first.
        migrate_to(&first, i32::MAX).await?;
        let mut conns = vec![Conn::prepare(first).await?];
        for _ in 1..connections.max(1) {
            conns.push(Conn::prepare(crate::pgtls::connect(&target).await?).await?);
        }
        Ok(Postgres {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    fn conn(&self) -> &Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        &self.conns[i]
    }

    fn client(&self) -> &tokio_postgres::Client {
        &self.conn().client
    }

    pub async fn register_store(&self, store: &str, key: &str, now_ms: i64) -> Result<(), StoreError> {
        self.client()
            .execute(
                "INSERT INTO stores (store, signing_key, registered_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (store) DO UPDATE SET signing_key = EXCLUDED.signing_key, unregistered_at_ms = NULL",
                &[&store, &key, &now_ms],
            )
            .await?;
        Ok(())
    }

    pub async fn store_key(&self, store: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .client()
            .query_opt(
                "SELECT signing_key FROM stores WHERE store = $1 AND unregistered_at_ms IS NULL",
                &[&store],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn history(&self, store: &str) -> Result<History, StoreError> {
        let c = self.conn();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&store];
        let period = c.client.query_opt(&c.first_period, &params);
        let frontier = c.client.query(&c.frontier, &params);
        let (period, frontier) = futures::try_join!(period, frontier)?;
        let mut h = History::default();
        if let Some(r) = period {
            let secs: i32 = r.get(0);
            let secs = u32::try_from(secs).map_err(|_| StoreError::Corrupt(format!("period of {secs} s").into()))?;
            h.period_secs = Some(secs);
        }
        for r in frontier {
            let node: String = r.get(0);
            let text: String = r.get(1);
            let seq = text
                .parse::<u64>()
                .map_err(|_| StoreError::Corrupt(format!("version vector entry {node} = {text}").into()))?;
            h.frontier.insert(
                node,
                crate::plausible::Frontier {
                    seq,
                    since_ms: r.get(2),
                },
            );
        }
        Ok(h)
    }

    pub async fn upsert(&self, s: &Summary, received_at_ms: i64) -> Result<Upserted, StoreError> {
        let c = self.conn();
        let vv_json = serde_json::to_string(&s.vv).map_err(|e| StoreError::Corrupt(e.into()))?;
        let body = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.into()))?;
        let period_secs = i32::try_from(s.period_secs)
            .map_err(|_| StoreError::Corrupt(format!("period of {} s", s.period_secs).into()))?;
        let t = Totals::of(s);
        let totals = [t.footfall_in, t.footfall_out, t.incidents, t.serious].map(|n| n.to_string());
        let newest = newest_serious(s);
        for _ in 0..8 {
            let row = c.client.query_opt(&c.read_vv, &[&s.store, &s.period_start_ms]).await?;
            let (stored_text, stored) = match row {
                Some(r) => {
                    let t: String = r.get(0);
                    let vv: VersionVector = serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.into()))?;
                    (Some(t), Some(vv))
                }
                None => (None, None),
            };
            let decision = Decision::decide(stored.as_ref(), &s.vv);
            if !decision.writes() {
                return Ok(Upserted {
                    decision,
                    stored_vv: stored.unwrap_or_default(),
                });
            }
            // The update's one more parameter is the vector it expects to replace.
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
                &s.store,
                &vv_json,
                &received_at_ms,
                &s.period_start_ms,
                &period_secs,
                &body,
                &totals[0],
                &totals[1],
                &totals[2],
                &totals[3],
                &newest,
            ];
            let statement = match &stored_text {
                None => &c.insert,
                Some(old) => {
                    params.push(old);
                    &c.update
                }
            };
            let row = c.client.query_one(statement, &params).await?;
            let n: i64 = row.get(0);
            if n == 1 {
                return Ok(Upserted {
                    decision,
                    stored_vv: s.vv.clone(),
                });
            }
        }
        Err(StoreError::Contended {
            store: s.store.clone(),
            period_start_ms: s.period_start_ms,
        })
    }

    /// Every registered store, or only `only`.
    pub async fn stores(&self, only: Option<&str>) -> Result<Vec<StoreRow>, StoreError> {
        let rows = self
            .client()
            .query(
                "SELECT store, signing_key, registered_at_ms, last_sync_ms, periods, unregistered_at_ms
                 FROM stores WHERE $1::text IS NULL OR store = $1 ORDER BY store",
                &[&only],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoreRow {
                store: r.get(0),
                key: r.get(1),
                registered_at_ms: r.get(2),
                last_sync_ms: r.get(3),
                periods: r.get::<_, i64>(4) as u64,
                unregistered_at_ms: r.get(5),
            })
            .collect())
    }

    pub async fn overview(
        &self,
        day_from: i64,
        week_from: i64,
        scope: Option<&[String]>,
        wanted: usize,
    ) -> Result<Overview, StoreError> {
        let c = self.client();
        let scope: Option<Vec<String>> = scope.map(<[String]>::to_vec);
        let wanted = i64::try_from(wanted).unwrap_or(i64::MAX);
        let day_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&day_from, &scope];
        let week_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&week_from, &scope];
        let newest_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&week_from, &scope, &wanted];
        // Sums come back as text: numeric has no Rust type here, and a sum may pass u64's range.
        let day = c.query(
            "SELECT store, sum(footfall_in)::text, sum(footfall_out)::text, sum(incidents)::text, sum(serious)::text
             FROM summaries WHERE period_start_ms >= $1 AND ($2::text[] IS NULL OR store = ANY($2))
             GROUP BY store",
            &day_params,
        );
        let counted = c.query_one(
            "SELECT coalesce(sum(serious), 0)::text FROM summaries
             WHERE period_start_ms >= $1 AND serious > 0 AND ($2::text[] IS NULL OR store = ANY($2))",
            &week_params,
        );
        let serious = c.query(
            "SELECT summary::text, received_at_ms, updates FROM summaries
             WHERE period_start_ms >= $1 AND serious > 0 AND ($2::text[] IS NULL OR store = ANY($2))
             ORDER BY serious_newest_ms DESC, store COLLATE \"C\", period_start_ms DESC LIMIT $3",
            &newest_params,
        );
        let (day, counted, serious) = futures::try_join!(day, counted, serious)?;
        let sum = |r: &tokio_postgres::Row, i: usize| -> u64 {
            // Beyond u64 (or absent): saturated, as the embedded store's sums are.
            r.get::<_, Option<String>>(i)
                .map_or(0, |t| t.parse::<u64>().unwrap_or(u64::MAX))
        };
        let mut o = Overview {
            serious_counted: sum(&counted, 0),
            ..Overview::default()
        };
        for r in &day {
            let t = Totals {
                footfall_in: sum(r, 1),
                footfall_out: sum(r, 2),
                incidents: sum(r, 3),
                serious: sum(r, 4),
            };
            o.day.insert(r.get(0), t);
        }
        for r in &serious {
            o.serious.push(stored_row(r)?);
        }
        Ok(o)
    }

    pub async fn summaries(&self, f: &Filter) -> Result<Vec<StoredSummary>, StoreError> {
        let limit = f.limit.map_or(i64::MAX, |l| l as i64);
        let (after_store, after_period) = f.after.clone().unzip();
        // Stores compare in the database's collation both in the cursor and in the order: pages
        // neither skip nor repeat a row.
        let rows = self
            .client()
            .query(
                "SELECT summary::text, received_at_ms, updates FROM summaries
                 WHERE ($1::text IS NULL OR store = $1) AND ($2::bigint IS NULL OR period_start_ms >= $2)
                   AND ($3::bigint IS NULL OR period_start_ms < $3)
                   AND ($5::text[] IS NULL OR store = ANY($5))
                   AND ($6::text IS NULL OR (store, period_start_ms) > ($6, $7::bigint))
                 ORDER BY store, period_start_ms LIMIT $4",
                &[
                    &f.store,
                    &f.from_ms,
                    &f.to_ms,
                    &limit,
                    &f.stores,
                    &after_store,
                    &after_period,
                ],
            )
            .await?;
        rows.iter().map(stored_row).collect()
    }
}

impl Postgres {
    /// Whether this process's connection to the database is encrypted (PostgreSQL's own view).
    pub async fn ssl_in_use(&self) -> Result<bool, StoreError> {
        let row = self
            .client()
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await?;
        Ok(row.get(0))
    }

    pub async fn unregister_store(&self, store: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = self
            .client()
            .execute(
                "UPDATE stores SET unregistered_at_ms = $2 WHERE store = $1 AND unregistered_at_ms IS NULL",
                &[&store, &now_ms],
            )
            .await?;
        Ok(n == 1)
    }

    async fn users(&self, name: Option<&str>) -> Result<Vec<HqUser>, StoreError> {
        let rows = self
            .client()
            .query(
                "SELECT name, role, stores::text, hash, changed_ms FROM hq_users
                 WHERE ($1::text IS NULL OR name = $1) ORDER BY name",
                &[&name],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.get(1);
                let stores: String = r.get(2);
                Ok(HqUser {
                    name: r.get(0),
                    role: access::HqRole::parse(&role)
                        .ok_or_else(|| StoreError::Corrupt(format!("HQ role {role:?}").into()))?,
                    stores: serde_json::from_str(&stores).map_err(|e| StoreError::Corrupt(e.into()))?,
                    hash: r.get(3),
                    changed_ms: r.get(4),
                })
            })
            .collect()
    }

    async fn put_user(&self, u: &HqUser) -> Result<(), UserError> {
        let c = self.client();
        let count: i64 = c
            .query_one("SELECT count(*) FROM hq_users WHERE name <> $1", &[&u.name])
            .await
            .map_err(StoreError::from)?
            .get(0);
        if count as usize >= access::MAX_USERS {
            return Err(UserError::TooMany);
        }
        let stores = serde_json::to_string(&u.stores).map_err(|e| StoreError::Corrupt(e.into()))?;
        c.execute(
            "INSERT INTO hq_users (name, role, stores, hash, changed_ms) VALUES ($1, $2, $3::text::jsonb, $4, $5)
             ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, stores = EXCLUDED.stores, hash = EXCLUDED.hash,
                 changed_ms = GREATEST(EXCLUDED.changed_ms, hq_users.changed_ms + 1)",
            &[&u.name, &u.role.as_str(), &stores, &u.hash, &u.changed_ms],
        )
        .await
        .map_err(StoreError::from)?;
        Ok(())
    }

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let c = self.client();
        let n = c.execute("DELETE FROM hq_users WHERE name = $1", &[&name]).await?;
        c.execute("DELETE FROM hq_sessions WHERE name = $1", &[&name]).await?;
        Ok(n == 1)
    }

    async fn open_session(&self, key: &str, s: &HqSession) -> Result<(), StoreError> {
        let c = self.client();
        c.execute(
            "INSERT INTO hq_sessions (token_hash, name, user_changed_ms, csrf, created_ms, last_used_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &key,
                &s.user,
                &s.user_changed_ms,
                &s.csrf,
                &s.created_ms,
                &s.last_used_ms,
            ],
        )
        .await?;
        let per_user = access::SESSIONS_PER_USER as i64;
        c.execute(
            "DELETE FROM hq_sessions WHERE name = $1 AND token_hash NOT IN
                (SELECT token_hash FROM hq_sessions WHERE name = $1 ORDER BY created_ms DESC LIMIT $2)",
            &[&s.user, &per_user],
        )
        .await?;
        let idle = s.last_used_ms - access::SESSION_IDLE_MS;
        let old = s.last_used_ms - access::SESSION_MAX_MS;
        c.execute(
            "DELETE FROM hq_sessions WHERE last_used_ms < $1 OR created_ms < $2",
            &[&idle, &old],
        )
        .await?;
        Ok(())
    }

    async fn session(&self, key: &str) -> Result<Option<HqSession>, StoreError> {
        let row = self
            .client()
            .query_opt(
                "SELECT name, user_changed_ms, csrf, created_ms, last_used_ms FROM hq_sessions WHERE token_hash = $1",
                &[&key],
            )
            .await?;
        Ok(row.map(|r| HqSession {
            user: r.get(0),
            user_changed_ms: r.get(1),
            csrf: r.get(2),
            created_ms: r.get(3),
            last_used_ms: r.get(4),
        }))
    }

    async fn touch_session(&self, key: &str, now_ms: i64) -> Result<(), StoreError> {
        self.client()
            .execute(
                "UPDATE hq_sessions SET last_used_ms = $2 WHERE token_hash = $1 AND last_used_ms < $2",
                &[&key, &now_ms],
            )
            .await?;
        Ok(())
    }

    async fn close_session(&self, key: &str) -> Result<(), StoreError> {
        self.client()
            .execute("DELETE FROM hq_sessions WHERE token_hash = $1", &[&key])
            .await?;
        Ok(())
    }
}

/// How long a store's key is trusted from the cache: `register-store` (a new key) and
/// `unregister-store` reach every HQ process within this, without a restart.
pub const KEY_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Keys parsed once and read again after [`KEY_TTL`]; stores without a key are not cached (a new
/// registration works at its first upload).
#[derive(Default)]
pub struct KeyCache {
    keys: tokio::sync::RwLock<HashMap<String, (libp2p_identity::PublicKey, std::time::Instant)>>,
}

/// Stores whose keys the cache holds before it starts afresh (only registered stores get in).
const MAX_CACHED_KEYS: usize = 100_000;

impl KeyCache {
    pub async fn get(&self, store: &HqStore, name: &str) -> Result<Option<libp2p_identity::PublicKey>, StoreError> {
        if let Some((k, at)) = self.keys.read().await.get(name) {
            if at.elapsed() < KEY_TTL {
                return Ok(Some(k.clone()));
            }
        }
        let Some(text) = store.store_key(name).await? else {
            self.keys.write().await.remove(name);
            return Ok(None);
        };
        let key = parse_store_key(&text).map_err(|source| StoreError::BadKey {
            store: name.to_string(),
            source,
        })?;
        let mut keys = self.keys.write().await;
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(name.to_string(), (key.clone(), std::time::Instant::now()));
        Ok(Some(key))
    }
}

/// Applies the migrations up to version `last` (tests start from an older schema), under a lock so
/// that HQ processes starting together do not race through them.
async fn migrate_to(c: &tokio_postgres::Client, last: i32) -> Result<(), StoreError> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
    let res = async {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS lpmesh_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let done: Vec<i32> = c
            .query("SELECT version FROM lpmesh_schema", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (version, sql) in MIGRATIONS {
            if done.contains(version) || *version > last {
                continue;
            }
            let script = format!("BEGIN; {sql}; INSERT INTO lpmesh_schema (version) VALUES ({version}); COMMIT;");
            c.batch_execute(&script).await?;
            tracing::info!(version, "HQ schema migrated");
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    if let Err(e) = res {
        // A failed script leaves its transaction aborted, where the unlock would fail too and hide why:
        // rolled back, and the session's end frees the lock if even that fails.
        let _ = c.batch_execute("ROLLBACK").await;
        let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
        return Err(e.into());
    }
    c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(period_start_ms: i64, vv: &[(&str, u64)]) -> Summary {
        Summary {
            store: "shop-1".into(),
            period_start_ms,
            period_secs: 3600,
            vv: VersionVector(vv.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
            ..Summary::default()
        }
    }

    /// The embedded store keeps a store's history up to date as it writes; derived again from the
    /// database (a restarted HQ), it is the same.
    #[test]
    fn an_embedded_history_kept_up_to_date_equals_one_derived_again() {
        let dir = scratch_dir("history");
        let hour = 3_600_000;
        let kept = {
            let db = Embedded::open(&dir).unwrap();
            assert_eq!(db.history("shop-1").unwrap(), History::default());
            db.upsert(&summary(5 * hour, &[("a", 4)]), 100).unwrap();
            db.upsert(&summary(3 * hour, &[("a", 2), ("b", 7)]), 200).unwrap();
            // A stale one is not stored, so it moves nothing.
            db.upsert(&summary(5 * hour, &[("a", 3)]), 300).unwrap();
            db.upsert(&summary(4 * hour, &[("a", 4), ("b", 7)]), 400).unwrap();
            db.upsert(&summary(5 * hour, &[("a", 9), ("b", 7)]), 500).unwrap();
            db.history("shop-1").unwrap()
        };
        let again = Embedded::open(&dir).unwrap().history("shop-1").unwrap();
        assert_eq!(again, kept);
        assert_eq!(kept.period_secs, Some(3600));
        let f: Vec<_> = kept
            .frontier
            .iter()
            .map(|(k, f)| (k.as_str(), f.seq, f.since_ms))
            .collect();
        assert_eq!(f, vec![("a", 9, 500), ("b", 7, 200)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    const HOUR: i64 = 3_600_000;

    /// Uploads in an order that moves the frontier every way: a new node, a higher entry, an equal one
    /// stored later (keeps the earlier time), a stale one (not stored), a replacement.
    fn uploads() -> Vec<(Summary, i64)> {
        vec![
            (summary(5 * HOUR, &[("a", 4)]), 100),
            (summary(3 * HOUR, &[("a", 2), ("b", 7)]), 200),
            (summary(5 * HOUR, &[("a", 3)]), 300),
            (summary(4 * HOUR, &[("a", 4), ("b", 7)]), 400),
            (summary(5 * HOUR, &[("a", 9), ("b", 7)]), 500),
            (summary(6 * HOUR, &[("a", 8), ("c", 1)]), 600),
            (summary(6 * HOUR, &[("a", 8), ("c", 2)]), 700),
        ]
    }

    async fn postgres(pg: &crate::testpg::TestPg) -> Postgres {
        let p = Postgres::connect(&pg.url(), 2).await.unwrap();
        p.register_store("shop-1", "key", 0).await.unwrap();
        p
    }

    /// A directory of its own for one test's embedded store.
    fn scratch_dir(what: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "lpmesh-hq-{what}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    /// A throw-away cluster (stopped when dropped) and a connection to it, migrated up to `schema`.
    async fn cluster_at(schema: i32) -> (crate::testpg::TestPg, tokio_postgres::Client) {
        let pg = tokio::task::spawn_blocking(crate::testpg::TestPg::start)
            .await
            .unwrap()
            .unwrap();
        let target = crate::pgtls::PgTarget::parse(&pg.url()).unwrap();
        let c = crate::pgtls::connect(&target).await.unwrap();
        migrate_to(&c, schema).await.unwrap();
        (pg, c)
    }

    fn embedded_history() -> History {
        let dir = scratch_dir("history");
        let db = Embedded::open(&dir).unwrap();
        for (s, at) in uploads() {
            db.upsert(&s, at).unwrap();
        }
        let h = db.history("shop-1").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        h
    }

    /// PostgreSQL keeps the frontier as it writes, one statement per upload, and its history is the
    /// embedded store's for the same uploads; a store it never heard of has none.
    #[tokio::test]
    async fn a_postgres_history_kept_as_it_writes_equals_the_embedded_one() {
        let pg = tokio::task::spawn_blocking(crate::testpg::TestPg::start)
            .await
            .unwrap()
            .unwrap();
        let p = postgres(&pg).await;
        for (s, at) in uploads() {
            p.upsert(&s, at).await.unwrap();
        }
        let kept = p.history("shop-1").await.unwrap();
        assert_eq!(kept, embedded_history());
        let f: Vec<_> = kept
            .frontier
            .iter()
            .map(|(k, f)| (k.as_str(), f.seq, f.since_ms))
            .collect();
        assert_eq!(f, vec![("a", 9, 500), ("b", 7, 200), ("c", 2, 700)]);
        assert_eq!(p.history("shop-2").await.unwrap(), History::default());
        // One store's row counts its own periods only.
        p.register_store("shop-2", "key", 0).await.unwrap();
        p.upsert(
            &Summary {
                store: "shop-2".into(),
                ..summary(HOUR, &[("z", 1)])
            },
            50,
        )
        .await
        .unwrap();
        let row = |r: &StoreRow| (r.store.clone(), r.periods, r.last_sync_ms);
        let one: Vec<_> = p.stores(Some("shop-1")).await.unwrap().iter().map(row).collect();
        assert_eq!(one, vec![("shop-1".to_string(), 4, Some(700))]);
        assert_eq!(p.stores(None).await.unwrap().len(), 2);
        assert!(p.stores(Some("shop-3")).await.unwrap().is_empty());
        // An update that lost the race (the row is no longer the one it read) writes nothing, so it
        // raises nothing either.
        let c = &p.conns[0];
        let stale = serde_json::to_string(&VersionVector::default()).unwrap();
        let row = c
            .client
            .query_one(
                &c.update,
                &[
                    &"shop-1",
                    &r#"{"a":50,"e":3}"#,
                    &900i64,
                    &(6 * HOUR),
                    &3600i32,
                    &"{}",
                    &"0",
                    &"0",
                    &"0",
                    &"0",
                    &0i64,
                    &stale,
                ],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 0);
        assert_eq!(p.history("shop-1").await.unwrap(), kept);
    }

    /// A database written before the frontier was kept gets it filled from its summaries when it
    /// migrates: the history an upload is checked against is the one it had, and it is kept from then.
    #[tokio::test]
    async fn migrating_fills_the_frontier_from_the_summaries_already_stored() {
        let (pg, c) = cluster_at(2).await;
        c.execute(
            "INSERT INTO stores (store, signing_key, registered_at_ms) VALUES ('shop-1', 'key', 0)",
            &[],
        )
        .await
        .unwrap();
        // What schema 2's upsert left for these uploads: the newest row of each period; and a node whose
        // entries compare one way as numbers and the other as text (10 > 9, "10" < "9").
        for (s, at) in [
            uploads()[1].clone(),
            uploads()[3].clone(),
            uploads()[4].clone(),
            uploads()[6].clone(),
            (summary(HOUR, &[("d", 9)]), 50),
            (summary(2 * HOUR, &[("d", 10)]), 150),
        ] {
            c.execute(
                "INSERT INTO summaries (store, period_start_ms, period_secs, vv, summary, received_at_ms)
                 VALUES ($1, $2, 3600, $3::text::jsonb, '{}', $4)",
                &[
                    &s.store,
                    &s.period_start_ms,
                    &serde_json::to_string(&s.vv).unwrap(),
                    &at,
                ],
            )
            .await
            .unwrap();
        }
        let old = postgres(&pg).await;
        let h = old.history("shop-1").await.unwrap();
        let f: Vec<_> = h
            .frontier
            .iter()
            .map(|(k, f)| (k.as_str(), f.seq, f.since_ms))
            .collect();
        // Derived from the rows alone, b's 7 was first seen at 200 and a's 9 at 500; c's 2 at 700.
        assert_eq!(f, vec![("a", 9, 500), ("b", 7, 200), ("c", 2, 700), ("d", 10, 150)]);
        assert_eq!(h.period_secs, Some(3600));
        // From now on each write raises it.
        old.upsert(&summary(7 * HOUR, &[("a", 12), ("c", 2)]), 800)
            .await
            .unwrap();
        let h = old.history("shop-1").await.unwrap();
        assert_eq!((h.frontier["a"].seq, h.frontier["a"].since_ms), (12, 800));
        assert_eq!(h.frontier["c"].since_ms, 700, "an equal entry keeps its first time");
        // The store's count and last sync were filled too, and go on with each write.
        let row = |r: &StoreRow| (r.periods, r.last_sync_ms);
        assert_eq!(
            old.stores(Some("shop-1"))
                .await
                .unwrap()
                .iter()
                .map(row)
                .collect::<Vec<_>>(),
            vec![(7, Some(800))]
        );
    }

    /// Summaries stored before their totals were kept get them when the database migrates, from their
    /// own JSON, and the stores their counts: the overview reads what the summaries say.
    #[tokio::test]
    async fn migrating_fills_the_totals_and_counts_from_the_summaries_already_stored() {
        let (pg, c) = cluster_at(3).await;
        for store in ["shop-1", "shop-2", "shop-3", "shop-4"] {
            c.execute(
                "INSERT INTO stores (store, signing_key, registered_at_ms) VALUES ($1, 'key', 5)",
                &[&store],
            )
            .await
            .unwrap();
        }
        let now = 1_800_000_000_000;
        // What schema 3 kept: the newest row of each period.
        let mut kept: BTreeMap<(String, i64), (Summary, i64)> = BTreeMap::new();
        for (s, at) in chain(now) {
            kept.insert((s.store.clone(), s.period_start_ms), (s, at));
        }
        for (s, at) in kept.values() {
            c.execute(
                "INSERT INTO summaries (store, period_start_ms, period_secs, vv, summary, received_at_ms)
                 VALUES ($1, $2, 3600, $3::text::jsonb, $4::text::jsonb, $5)",
                &[
                    &s.store,
                    &s.period_start_ms,
                    &serde_json::to_string(&s.vv).unwrap(),
                    &serde_json::to_string(s).unwrap(),
                    at,
                ],
            )
            .await
            .unwrap();
        }
        let migrated = HqStore::Postgres(Postgres::connect(&pg.url(), 1).await.unwrap());
        let dir = scratch_dir("migrated");
        let e = Embedded::open(&dir).unwrap();
        for store in ["shop-1", "shop-2", "shop-3", "shop-4"] {
            e.register_store(store, "key", 5).unwrap();
        }
        for (s, at) in chain(now) {
            e.upsert(&s, at).unwrap();
        }
        let e = HqStore::Embedded(e);
        let (day, week) = (now - 24 * HOUR, now - 7 * 24 * HOUR);
        let strip = |mut o: Overview| {
            // A row written by schema 3 counts one write; the embedded store counted the replacement.
            for r in &mut o.serious {
                r.updates = 1;
            }
            o
        };
        assert_eq!(
            strip(migrated.overview(day, week, None, 10).await.unwrap()),
            strip(e.overview(day, week, None, 10).await.unwrap())
        );
        let row = |r: &StoreRow| (r.store.clone(), r.periods, r.last_sync_ms);
        let a: Vec<_> = migrated.stores().await.unwrap().iter().map(row).collect();
        let b: Vec<_> = e.stores().await.unwrap().iter().map(row).collect();
        assert_eq!(a, b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Summaries of three stores over more than a week: footfall on two lines, incidents, serious ones
    /// (more counted than listed), a period two stores share and a replaced upload.
    fn chain(now: i64) -> Vec<(Summary, i64)> {
        use crate::summary::{Incident, LineCount};
        let hour0 = now - now.rem_euclid(HOUR);
        let s = |store: &str, hours_ago: i64, seq: u64, fin: u64, inc: u64, serious: u64| {
            let start = hour0 - hours_ago * HOUR;
            Summary {
                store: store.into(),
                period_start_ms: start,
                period_secs: 3600,
                vv: VersionVector([("n".to_string(), seq)].into_iter().collect()),
                footfall: vec![
                    LineCount {
                        camera: "door".into(),
                        line: "main".into(),
                        entered: fin,
                        left: fin / 2,
                    },
                    LineCount {
                        camera: "side".into(),
                        line: "back".into(),
                        entered: 1,
                        left: 0,
                    },
                ],
                incidents_by_kind: [("loitering".to_string(), inc), ("crowding".to_string(), 1)]
                    .into_iter()
                    .collect(),
                serious: (0..serious.min(2))
                    .map(|i| Incident {
                        incident: format!("{store}/{hours_ago}/{i}"),
                        camera: "door".into(),
                        kind: "exit_without_checkout".into(),
                        severity: "high".into(),
                        started_at_ms: start + i as i64,
                        state: "open".into(),
                        ..Incident::default()
                    })
                    .collect(),
                serious_total: serious,
                ..Summary::default()
            }
        };
        vec![
            (s("shop-1", 200, 1, 9, 9, 4), 10),  // more than a week ago
            (s("shop-1", 30, 2, 100, 5, 1), 20), // this week, not today
            (s("shop-1", 5, 3, 7, 2, 2), 30),
            (s("shop-1", 2, 4, 10, 1, 0), 40),
            (s("shop-2", 5, 1, 3, 0, 1), 50),
            (s("shop-2", 5, 2, 3, 0, 3), 90), // replaces the one before, last
            (s("shop-2", 1, 3, 4, 1, 0), 70),
            (s("shop-3", 3, 1, 1, 1, 1), 80),
        ]
    }

    /// PostgreSQL's overview, read from the totals and counts kept as it writes, is what the embedded
    /// store adds up from the summaries themselves; and it is right.
    #[tokio::test]
    async fn the_chain_overview_from_kept_totals_equals_the_one_added_up_from_the_summaries() {
        let pg = tokio::task::spawn_blocking(crate::testpg::TestPg::start)
            .await
            .unwrap()
            .unwrap();
        let p = Postgres::connect(&pg.url(), 2).await.unwrap();
        let dir = scratch_dir("overview");
        let e = Embedded::open(&dir).unwrap();
        for store in ["shop-1", "shop-2", "shop-3", "shop-4"] {
            p.register_store(store, "key", 5).await.unwrap();
            e.register_store(store, "key", 5).unwrap();
        }
        let now = 1_800_000_000_000;
        for (s, at) in chain(now) {
            p.upsert(&s, at).await.unwrap();
            e.upsert(&s, at).unwrap();
        }
        let (p, e) = (HqStore::Postgres(p), HqStore::Embedded(e));
        assert_eq!(p.stores().await.unwrap(), e.stores().await.unwrap());
        let row = |r: &StoreRow| (r.store.clone(), r.periods, r.last_sync_ms);
        let rows: Vec<_> = p.stores().await.unwrap().iter().map(row).collect();
        assert_eq!(
            rows,
            vec![
                ("shop-1".into(), 4, Some(40)),
                ("shop-2".into(), 2, Some(90)),
                ("shop-3".into(), 1, Some(80)),
                ("shop-4".into(), 0, None)
            ]
        );
        let (day, week) = (now - 24 * HOUR, now - 7 * 24 * HOUR);
        for (scope, wanted) in [(None, 2), (None, 10), (Some(vec!["shop-2".to_string()]), 1)] {
            let a = p.overview(day, week, scope.as_deref(), wanted).await.unwrap();
            let b = e.overview(day, week, scope.as_deref(), wanted).await.unwrap();
            assert_eq!(a, b, "scope {scope:?}, {wanted} wanted");
        }
        let o = p.overview(day, week, None, 2).await.unwrap();
        // Today: shop-1's periods 5 and 2 hours ago; shop-2's replaced period counts once.
        assert_eq!(
            o.day["shop-1"],
            Totals {
                footfall_in: 7 + 1 + 10 + 1,
                footfall_out: 3 + 5,
                incidents: 3 + 2,
                serious: 2
            }
        );
        assert_eq!(
            (o.day["shop-2"].footfall_in, o.day["shop-2"].serious),
            (4 + 1 + 3 + 1, 3)
        );
        assert!(!o.day.contains_key("shop-4"));
        // The week counted 1 + 2 + 3 + 1 serious incidents. The newest listed one is shop-3's (3 hours
        // ago); then shop-1's and shop-2's of 5 hours ago started together, and the store's name
        // decides.
        assert_eq!(o.serious_counted, 7);
        let listed: Vec<_> = o
            .serious
            .iter()
            .map(|r| (r.summary.store.as_str(), r.summary.serious_total))
            .collect();
        assert_eq!(listed, vec![("shop-3", 1), ("shop-1", 2)]);
        let mine = p.overview(day, week, Some(&["shop-2".to_string()]), 5).await.unwrap();
        assert_eq!((mine.day.len(), mine.serious.len(), mine.serious_counted), (1, 1, 3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
