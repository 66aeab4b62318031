//! The replicated log on disk (sled).
//!
//! Keys in one tree, so that a record and the version-vector entry it advances are written in one
//! atomic batch:
//! - `r` + origin (32) + seq (8, big-endian) -> the encoded record
//! - `v` + origin (32) -> highest contiguous seq held from that origin (the version vector)
//! - `f` + origin (32) -> the newest expired record of that origin (the expiry floor)
//!
//! # Retention
//!
//! Records older than the retention period (by their signed HLC time) are removed. An origin's HLC
//! grows with its seq, so what has expired is always a prefix `1..=floor` of each origin: the same
//! prefix on every node, so logs stay convergent. The version vector never goes back; it counts expired
//! seqs as held. The floor record is kept (signed, so it cannot be made up) and sent to a peer that asks
//! for seqs below it: a node that never saw those records takes a received record that has expired by
//! its own clock as proof that everything before it has, and moves its version vector past them instead
//! of asking forever.
//!
//! Member and key records are the exception ([`RecordKind::is_kept`]): they stay in the tree below
//! the floor, are sent before the floor record to a peer that asks from below it, and are taken by a
//! receiver whatever their age. Without them a store would forget who belongs to it (and every
//! non-founder node would be refused) once its admissions were older than the retention period.
//!
//! Our own seq is the version vector's entry for our own origin: a record and its seq are committed
//! together and flushed before `append` returns, so a seq is never handed out twice, crash or not.
//! Inserting is idempotent by (origin, seq); a different record under an existing (origin, seq) is an
//! equivocation and refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libp2p_identity::Keypair;

use crate::crypto::{CryptoError, StoreRecipient};
use crate::hlc::{Clock, Timestamp};
use crate::record::{Origin, Record, RecordError, RecordKind};

pub type VersionVector = BTreeMap<Origin, u64>;

/// Remote clocks more than this far ahead of ours are not followed (and are logged).
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("stored record {origin}/{seq} is corrupt: {source}")]
    Corrupt {
        origin: Origin,
        seq: u64,
        #[source]
        source: RecordError,
    },
    #[error("the node key is not Ed25519")]
    UnsupportedKey,
    #[error("the log is in use by another process (is the node running?)")]
    Locked,
    #[error("the log failed to write (disk full?) and is waiting to be reopened")]
    Unavailable,
    /// Our own seq reached `u64::MAX` (never in practice; a checked add rather than a wrap).
    #[error("this node has used up its sequence numbers")]
    SeqExhausted,
}

/// What inserting a received record did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Already held, byte for byte.
    Duplicate,
    /// Older than the retention period: not stored, but it moved the expiry floor (or was below it).
    Expired,
}

/// What one pass of [`Log::expire`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub removed: u64,
    /// Whether the pass stopped at its limit (call again).
    pub more: bool,
}

/// Why a received record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Invalid(#[from] RecordError),
    #[error("{origin} already signed a different record with seq {seq}")]
    Equivocation { origin: Origin, seq: u64 },
    /// Signed at a time further ahead of our wall clock than [`MAX_CLOCK_SKEW_MS`]: not stored (yet).
    /// Anti-entropy offers it again, and it is taken once real time has caught up.
    #[error("{origin}/{seq} is {ahead_ms} ms ahead of our clock")]
    Future { origin: Origin, seq: u64, ahead_ms: u64 },
    /// Signed by a node the store has not admitted (as far as this node knows yet): not stored.
    /// Offered again by anti-entropy, it is taken once the admission has arrived.
    #[error("{origin} is not a member of the store")]
    NotMember { origin: Origin },
}

impl Rejected {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Invalid(e) => e.reason(),
            Rejected::Equivocation { .. } => "equivocation",
            Rejected::Future { .. } => "future",
            Rejected::NotMember { .. } => "not_member",
        }
    }

    /// Whether passing this record on is misbehaviour (the sender is scored down and banned). A record
    /// from the future is not: an honest node whose clock runs ahead signs them, and an honest relay
    /// whose clock runs ahead of ours passes them on.
    pub fn is_offence(&self) -> bool {
        // A relay may hold an admission we have not seen yet: passing on a newcomer's records is no
        // offence either.
        !matches!(self, Rejected::Future { .. } | Rejected::NotMember { .. })
    }

    /// Whether `sender` is to blame for passing this record on. An equivocation is its origin's
    /// fault: an honest relay that holds the other version (a member signed two records with one seq
    /// and gave one to each half of the store) is not banned for it, or one member could split the
    /// mesh by getting honest nodes banned.
    pub fn blames(&self, sender: &libp2p::PeerId) -> bool {
        match self {
            Rejected::Equivocation { origin, .. } => origin.peer_id().as_ref() == Some(sender),
            other => other.is_offence(),
        }
    }
}

/// Received records with their signatures checked, for [`Log::insert_checked`]. Made by [`check`],
/// which may run on any thread: the network actor checks large anti-entropy answers off its own
/// thread, so they cannot hold up gossip, heartbeats and appends.
#[derive(Debug)]
pub struct Checked {
    store: String,
    records: Vec<Record>,
    verdicts: Vec<Result<(), RecordError>>,
}

impl Checked {
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn into_records(self) -> Vec<Record> {
        self.records
    }
}

/// Checks the signatures of received records for `store` (CPU only, spread over the cores).
pub fn check(records: Vec<Record>, store: &str) -> Checked {
    let verdicts = verify_all(&records, store);
    Checked {
        store: store.to_string(),
        records,
        verdicts,
    }
}

pub struct Log {
    dir: PathBuf,
    /// A write failed: sled keeps an IO error for good, so nothing goes through until a reopen.
    failed: bool,
    db: sled::Db,
    tree: sled::Tree,
    /// What sled's flush leaves unsynced (see `lpmesh_durable`).
    sync: lpmesh_durable::SledSync,
    store: String,
    key: Keypair,
    origin: Origin,
    /// The store's first key: key-epoch records are written to it (see [`Log::set_write_recipient`]).
    recipient: StoreRecipient,
    /// The current key epoch's recipient, for every other record (`None`: the first key).
    write: Option<StoreRecipient>,
    clock: Clock,
    vv: VersionVector,
    len: u64,
    retention_ms: Option<u64>,
    /// Per origin, the newest expired record (its seq is the floor).
    floors: BTreeMap<Origin, Record>,
    /// The nodes whose records are stored, when the store keeps a member list (`None`: everyone
    /// holding the network key, as stores did before).
    members: Option<std::collections::HashSet<Origin>>,
}

fn record_key(origin: &Origin, seq: u64) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[0] = b'r';
    k[1..33].copy_from_slice(&origin.0);
    k[33..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn vv_key(origin: &Origin) -> [u8; 33] {
    prefixed(b'v', origin)
}

fn floor_key(origin: &Origin) -> [u8; 33] {
    prefixed(b'f', origin)
}

fn prefixed(tag: u8, origin: &Origin) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = tag;
    k[1..].copy_from_slice(&origin.0);
    k
}

fn seq_of(key: &[u8]) -> u64 {
    key.get(33..41)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

impl Log {
    /// Opens (or creates) the log in `dir` for `store`, appending as the owner of `key`.
    pub fn open(dir: &Path, store: &str, key: Keypair, recipient: StoreRecipient) -> Result<Self, LogError> {
        let origin = Origin::of(&key).ok_or(LogError::UnsupportedKey)?;
        let db = sled::Config::new().path(dir).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => LogError::Locked,
            other => LogError::Db(other),
        })?;
        let tree = db.open_tree("log")?;
        let sync = lpmesh_durable::SledSync::open(dir).map_err(sled::Error::from)?;
        let mut vv = VersionVector::new();
        for item in tree.scan_prefix(b"v") {
            let (k, v) = item?;
            if let (Ok(o), Ok(s)) = (<[u8; 32]>::try_from(&k[1..]), <[u8; 8]>::try_from(v.as_ref())) {
                vv.insert(Origin(o), u64::from_be_bytes(s));
            }
        }
        let mut floors = BTreeMap::new();
        for item in tree.scan_prefix(b"f") {
            let (_, v) = item?;
            // A floor that does not decode only costs asking peers for what expired again.
            if let Ok(r) = Record::decode(&v) {
                floors.insert(r.origin, r);
            }
        }
        let len = tree.scan_prefix(b"r").count() as u64;
        let mut clock = Clock::new(MAX_CLOCK_SKEW_MS);
        // Never issue a timestamp below one we already issued before a restart (our newest record may
        // have expired: then the floor is it).
        if let Some(last) = vv.get(&origin).copied() {
            if let Some(bytes) = tree.get(record_key(&origin, last))? {
                if let Ok(r) = Record::decode(&bytes) {
                    let _ = clock.observe(r.hlc, u64::MAX / 2);
                }
            }
        }
        if let Some(f) = floors.get(&origin) {
            let _ = clock.observe(f.hlc, u64::MAX / 2);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            failed: false,
            db,
            tree,
            sync,
            store: store.to_string(),
            key,
            origin,
            recipient,
            write: None,
            clock,
            vv,
            len,
            retention_ms: None,
            floors,
            members: None,
        })
    }

    /// Applies a batch and flushes; any failure stops writes until [`Log::reopen`] (after a failed
    /// flush what the database holds in memory may not be on disk, and our next seq must not be
    /// issued twice).
    fn commit(&mut self, batch: sled::Batch) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Unavailable);
        }
        let r = self
            .tree
            .apply_batch(batch)
            .and_then(|_| self.db.flush())
            .and_then(|_| self.sync.sync().map_err(sled::Error::from));
        if let Err(e) = r {
            self.failed = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Stores records only from these nodes (and this one); `None` stores everyone's.
    pub fn set_members(&mut self, members: Option<std::collections::HashSet<Origin>>) {
        self.members = members;
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Opens the database again after a failed write (space freed, disk back): what is on disk is
    /// what was durable, and the version vector, floors and clock are read from it again.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        // The old instance holds the directory's lock: swap it out before opening the directory again.
        let placeholder = sled::Config::new().temporary(true).open()?;
        let tree = placeholder.open_tree("log")?;
        drop(std::mem::replace(&mut self.tree, tree));
        drop(std::mem::replace(&mut self.db, placeholder));
        self.failed = true;
        let mut fresh = Log::open(&self.dir, &self.store, self.key.clone(), self.recipient.clone())?;
        fresh.retention_ms = self.retention_ms;
        fresh.write = self.write.take();
        *self = fresh;
        Ok(())
    }

    /// Records of ours are encrypted to `recipient` from now on (a new key epoch), but for key-epoch
    /// records: they hand the new keys over, so they stay readable with the store's first key.
    pub fn set_write_recipient(&mut self, recipient: Option<StoreRecipient>) {
        self.write = recipient;
    }

    /// Records older than this (by their HLC time) are removed by [`Log::expire`] and not taken from
    /// peers; `None` keeps everything.
    pub fn set_retention(&mut self, retention_ms: Option<u64>) {
        self.retention_ms = retention_ms;
    }

    /// Seqs of `origin` at or below this have expired.
    pub fn floor(&self, origin: &Origin) -> u64 {
        self.floors.get(origin).map_or(0, |r| r.seq)
    }

    /// Every origin's expiry floor.
    pub fn floors(&self) -> BTreeMap<Origin, u64> {
        self.floors.iter().map(|(o, r)| (*o, r.seq)).collect()
    }

    /// The time before which records expire now, if a retention is set.
    pub fn cutoff(&self, wall_ms: u64) -> Option<u64> {
        self.retention_ms.map(|r| wall_ms.saturating_sub(r))
    }

    /// Removes up to `max` records older than the retention period, with one flush.
    pub fn expire(&mut self, wall_ms: u64, max: usize) -> Result<Expired, LogError> {
        let Some(cutoff) = self.cutoff(wall_ms).filter(|_| !self.failed) else {
            return Ok(Expired::default());
        };
        let mut batch = sled::Batch::default();
        let mut out = Expired::default();
        let mut new_floors: Vec<Record> = Vec::new();
        let mut next = record_key(&Origin([0; 32]), 0).to_vec();
        // One seek per origin, then only the expired prefix is read.
        'origins: while let Some(item) = self.tree.range(next.as_slice()..).next() {
            let (k, _) = item?;
            if k.first() != Some(&b'r') || k.len() != 41 {
                break;
            }
            let origin = Origin(k[1..33].try_into().unwrap_or([0; 32]));
            let mut last = None;
            for item in self.tree.range(record_key(&origin, 0)..=record_key(&origin, u64::MAX)) {
                let (k, v) = item?;
                let r = Record::decode(&v).map_err(|e| LogError::Corrupt {
                    origin,
                    seq: seq_of(&k),
                    source: e,
                })?;
                if r.hlc.wall_ms >= cutoff {
                    break;
                }
                if out.removed as usize >= max {
                    out.more = true;
                    if let Some(l) = last.take() {
                        new_floors.push(l);
                    }
                    break 'origins;
                }
                if !r.kind.is_kept() {
                    batch.remove(&k[..]);
                    out.removed += 1;
                }
                last = Some(r);
            }
            if let Some(l) = last {
                new_floors.push(l);
            }
            match origin.0.iter().all(|&b| b == 0xff) {
                true => break,
                false => next = record_key(&origin, u64::MAX).to_vec(),
            }
            next.push(0);
        }
        if out.removed == 0 {
            return Ok(out);
        }
        let mut advanced = Vec::new();
        for f in new_floors {
            // Kept records below the floor are read again on every pass: never move a floor back.
            if f.seq <= self.floor(&f.origin) {
                continue;
            }
            batch.insert(&floor_key(&f.origin)[..], f.encode());
            let held = self.vv.get(&f.origin).copied().unwrap_or(0).max(f.seq);
            let seq = self.contiguous_from(&f.origin, held, &BTreeMap::new())?;
            if seq > self.vv.get(&f.origin).copied().unwrap_or(0) {
                batch.insert(&vv_key(&f.origin)[..], &seq.to_be_bytes()[..]);
                advanced.push((f.origin, seq));
            }
            self.floors.insert(f.origin, f);
        }
        self.commit(batch)?;
        self.len = self.len.saturating_sub(out.removed);
        for (o, s) in advanced {
            self.vv.insert(o, s);
        }
        Ok(out)
    }

    /// The highest seq of `origin` reachable from `seq` through records held or about to be.
    fn contiguous_from(
        &self,
        origin: &Origin,
        mut seq: u64,
        pending: &BTreeMap<[u8; 41], Vec<u8>>,
    ) -> Result<u64, LogError> {
        // Seqs come from peers (a record may be signed with seq u64::MAX): stop there, never wrap.
        while let Some(next) = seq.checked_add(1) {
            let k = record_key(origin, next);
            if pending.contains_key(&k) || self.tree.contains_key(k)? {
                seq = next;
            } else {
                break;
            }
        }
        Ok(seq)
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// Records held (including ones beyond a gap).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clock(&self) -> Timestamp {
        self.clock.last()
    }

    /// Encrypts, signs and durably stores new records of our own, with one flush for all of them
    /// (group commit). Returns them for gossip; they are durable when this returns.
    pub fn append_batch(&mut self, items: &[(RecordKind, &[u8])], wall_ms: u64) -> Result<Vec<Record>, LogError> {
        if self.failed {
            return Err(LogError::Unavailable);
        }
        let mut next = self.vv.get(&self.origin).copied().unwrap_or(0);
        // Seqs and times in order here; the encryption and the signature of each record (nearly all
        // of an append's cost) spread over the cores.
        let mut stamped = Vec::with_capacity(items.len());
        for (kind, plaintext) in items {
            next = next.checked_add(1).ok_or(LogError::SeqExhausted)?;
            stamped.push((next, self.clock.now(wall_ms), *kind, *plaintext));
        }
        if stamped.is_empty() {
            return Ok(Vec::new());
        }
        let (store, key, first) = (&self.store, &self.key, &self.recipient);
        let current = self.write.as_ref().unwrap_or(first);
        let seal = |part: &[(u64, Timestamp, RecordKind, &[u8])]| -> Result<Vec<Record>, LogError> {
            part.iter()
                .map(|(seq, hlc, kind, plaintext)| {
                    let recipient = if *kind == RecordKind::Keys { first } else { current };
                    let ciphertext = recipient.encrypt(plaintext)?;
                    Ok(Record::seal(store, key, *seq, *hlc, *kind, ciphertext)?)
                })
                .collect()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let out: Vec<Record> = if stamped.len() < 64 || threads < 2 {
            seal(&stamped)?
        } else {
            let chunk = stamped.len().div_ceil(threads);
            let parts: Vec<Result<Vec<Record>, LogError>> = std::thread::scope(|s| {
                let handles: Vec<_> = stamped.chunks(chunk).map(|c| s.spawn(move || seal(c))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(Err(LogError::Unavailable)))
                    .collect()
            });
            let mut all = Vec::with_capacity(stamped.len());
            for p in parts {
                all.extend(p?);
            }
            all
        };
        let mut batch = sled::Batch::default();
        for r in &out {
            batch.insert(&record_key(&self.origin, r.seq)[..], r.encode());
        }
        batch.insert(&vv_key(&self.origin)[..], &next.to_be_bytes()[..]);
        self.commit(batch)?;
        self.vv.insert(self.origin, next);
        self.len += out.len() as u64;
        Ok(out)
    }

    pub fn append(&mut self, kind: RecordKind, plaintext: &[u8], wall_ms: u64) -> Result<Record, LogError> {
        let mut v = self.append_batch(&[(kind, plaintext)], wall_ms)?;
        v.pop().ok_or(LogError::UnsupportedKey)
    }

    /// Verifies and stores records received from peers, with one flush for the batch. Each gets its
    /// own outcome; a bad record does not stop the others.
    pub fn insert_batch(
        &mut self,
        records: &[Record],
        wall_ms: u64,
    ) -> Result<Vec<Result<Inserted, Rejected>>, LogError> {
        if self.failed {
            return Err(LogError::Unavailable);
        }
        let verdicts = verify_all(records, &self.store);
        self.insert_verified(records, verdicts, wall_ms)
    }

    /// [`Log::insert_batch`] for records whose signatures [`check`] has checked already.
    pub fn insert_checked(
        &mut self,
        checked: &Checked,
        wall_ms: u64,
    ) -> Result<Vec<Result<Inserted, Rejected>>, LogError> {
        if self.failed {
            return Err(LogError::Unavailable);
        }
        if checked.store != self.store || checked.verdicts.len() != checked.records.len() {
            // Checked for another store (never done): check again for ours rather than trust it.
            let verdicts = verify_all(&checked.records, &self.store);
            return self.insert_verified(&checked.records, verdicts, wall_ms);
        }
        self.insert_verified(&checked.records, checked.verdicts.clone(), wall_ms)
    }

    fn insert_verified(
        &mut self,
        records: &[Record],
        verdicts: Vec<Result<(), RecordError>>,
        wall_ms: u64,
    ) -> Result<Vec<Result<Inserted, Rejected>>, LogError> {
        let mut outcomes = Vec::with_capacity(records.len());
        let mut batch = sled::Batch::default();
        let mut pending: BTreeMap<[u8; 41], Vec<u8>> = BTreeMap::new();
        let mut touched: Vec<Origin> = Vec::new();
        let mut new_floors: BTreeMap<Origin, &Record> = BTreeMap::new();
        let cutoff = self.cutoff(wall_ms);
        for (r, verdict) in records.iter().zip(verdicts) {
            if let Err(e) = verdict {
                outcomes.push(Err(Rejected::Invalid(e)));
                continue;
            }
            let floor = new_floors.get(&r.origin).map_or(self.floor(&r.origin), |f| f.seq);
            let kept = r.kind.is_kept();
            if r.seq <= floor && !kept {
                outcomes.push(Ok(Inserted::Expired));
                continue;
            }
            if cutoff.is_some_and(|c| r.hlc.wall_ms < c) && r.seq > floor {
                new_floors.insert(r.origin, r);
                if !kept {
                    outcomes.push(Ok(Inserted::Expired));
                    continue;
                }
            }
            if r.origin != self.origin && self.members.as_ref().is_some_and(|m| !m.contains(&r.origin)) {
                outcomes.push(Err(Rejected::NotMember { origin: r.origin }));
                continue;
            }
            let key = record_key(&r.origin, r.seq);
            let bytes = r.encode();
            let existing = match pending.get(&key) {
                Some(b) => Some(b.clone()),
                None => self.tree.get(key)?.map(|v| v.to_vec()),
            };
            match existing {
                Some(old) if old == bytes => outcomes.push(Ok(Inserted::Duplicate)),
                Some(_) => outcomes.push(Err(Rejected::Equivocation {
                    origin: r.origin,
                    seq: r.seq,
                })),
                None => {
                    // Not stored (and not held: the origin's version vector stops before it); offered
                    // again by anti-entropy, it is taken once our clock has caught up. Only new records
                    // are refused: one we hold already stays a duplicate if our clock stepped back.
                    if let Err(skew) = self.clock.check(r.hlc, wall_ms) {
                        tracing::warn!(origin = %r.origin, seq = r.seq, ahead_ms = skew.ahead_ms, "record from a clock far ahead of ours refused");
                        outcomes.push(Err(Rejected::Future {
                            origin: r.origin,
                            seq: r.seq,
                            ahead_ms: skew.ahead_ms,
                        }));
                        continue;
                    }
                    // Within the skew just checked, so this cannot fail.
                    let _ = self.clock.observe(r.hlc, wall_ms);
                    batch.insert(&key[..], bytes.clone());
                    pending.insert(key, bytes);
                    if !touched.contains(&r.origin) {
                        touched.push(r.origin);
                    }
                    outcomes.push(Ok(Inserted::New));
                }
            }
        }
        if pending.is_empty() && new_floors.is_empty() {
            return Ok(outcomes);
        }
        // An expired record received proves every earlier seq of its origin expired too: drop what we
        // hold below it, and count them as held.
        let mut removed = 0u64;
        let is_kept = |bytes: &[u8]| Record::decode(bytes).is_ok_and(|r| r.kind.is_kept());
        for (origin, f) in &new_floors {
            batch.insert(&floor_key(origin)[..], f.encode());
            for item in self.tree.range(record_key(origin, 0)..=record_key(origin, f.seq)) {
                let (k, v) = item?;
                if !is_kept(&v) {
                    batch.remove(&k[..]);
                    removed += 1;
                }
            }
            pending.retain(|k, v| k[1..33] != origin.0 || seq_of(k) > f.seq || is_kept(v));
            if !touched.contains(origin) {
                touched.push(*origin);
            }
        }
        // Advance the version vector over whatever is now contiguous.
        let mut advanced = Vec::new();
        for origin in touched {
            let held = self
                .vv
                .get(&origin)
                .copied()
                .unwrap_or(0)
                .max(self.floor_after(&origin, &new_floors));
            let seq = self.contiguous_from(&origin, held, &pending)?;
            if seq > self.vv.get(&origin).copied().unwrap_or(0) {
                batch.insert(&vv_key(&origin)[..], &seq.to_be_bytes()[..]);
                advanced.push((origin, seq));
            }
        }
        self.commit(batch)?;
        self.len = self.len.saturating_add(pending.len() as u64).saturating_sub(removed);
        for (o, s) in advanced {
            self.vv.insert(o, s);
        }
        for (o, f) in new_floors {
            self.floors.insert(o, f.clone());
        }
        Ok(outcomes)
    }

    fn floor_after(&self, origin: &Origin, new_floors: &BTreeMap<Origin, &Record>) -> u64 {
        new_floors.get(origin).map_or(self.floor(origin), |f| f.seq)
    }

    /// [`Log::range`] for a peer: when `from_seq` is at or below the expiry floor, the kept records
    /// below it, then the floor record come first, so the peer holds who belongs to the store and can
    /// move past what expired.
    pub fn range_for_peer(&self, origin: &Origin, from_seq: u64, limit: usize) -> Result<Vec<Record>, LogError> {
        match self.floors.get(origin) {
            Some(f) if from_seq <= f.seq && limit > 0 => {
                // Below the floor, only kept records are still in the tree.
                let mut out: Vec<Record> = self
                    .range(origin, from_seq, limit)?
                    .into_iter()
                    .take_while(|r| r.seq < f.seq)
                    .collect();
                if out.len() < limit {
                    out.push(f.clone());
                }
                // A floor at u64::MAX (signed so by its origin) has nothing after it.
                if let Some(next) = f.seq.checked_add(1).filter(|_| out.len() < limit) {
                    out.extend(self.range(origin, next, limit - out.len())?);
                }
                Ok(out)
            }
            _ => self.range(origin, from_seq, limit),
        }
    }

    /// Up to `limit` records of `origin` from `from_seq` on, in order.
    pub fn range(&self, origin: &Origin, from_seq: u64, limit: usize) -> Result<Vec<Record>, LogError> {
        if self.failed {
            return Err(LogError::Unavailable);
        }
        let start = record_key(origin, from_seq.max(1));
        let end = record_key(origin, u64::MAX);
        let mut out = Vec::new();
        for item in self.tree.range(start..=end).take(limit) {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k[33..41].try_into().unwrap_or([0; 8]));
            out.push(Record::decode(&v).map_err(|e| LogError::Corrupt {
                origin: *origin,
                seq,
                source: e,
            })?);
        }
        Ok(out)
    }

    /// Every record held, by origin then seq.
    pub fn all(&self) -> impl Iterator<Item = Result<Record, LogError>> + '_ {
        self.tree.scan_prefix(b"r").map(|item| {
            let (k, v) = item?;
            let origin = Origin(k[1..33].try_into().unwrap_or([0; 32]));
            let seq = u64::from_be_bytes(k[33..41].try_into().unwrap_or([0; 8]));
            Record::decode(&v).map_err(|e| LogError::Corrupt { origin, seq, source: e })
        })
    }

    pub fn get(&self, origin: &Origin, seq: u64) -> Result<Option<Record>, LogError> {
        match self.tree.get(record_key(origin, seq))? {
            Some(v) => Ok(Some(Record::decode(&v).map_err(|e| LogError::Corrupt {
                origin: *origin,
                seq,
                source: e,
            })?)),
            None => Ok(None),
        }
    }
}

/// Signature checks dominate taking in a large batch (a node catching up): checked as one batch
/// equation per chunk (about 2.5 times cheaper per signature than one by one when the records share
/// an origin), the chunks spread over the cores.
fn verify_all(records: &[Record], store: &str) -> Vec<Result<(), RecordError>> {
    fn verify_chunk(records: &[Record], store: &str) -> Vec<Result<(), RecordError>> {
        // A batch comes from few origins: each origin's key is parsed once per chunk.
        let mut keys: std::collections::HashMap<Origin, Option<crate::record::VerifyingKey>> = Default::default();
        let mut batch = ed25519_zebra::batch::Verifier::new();
        let mut items = Vec::new();
        let mut out: Vec<Result<(), RecordError>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = keys.entry(r.origin).or_insert_with(|| r.origin.verifying_key());
                let item = r.batch_item(store, key.as_ref())?;
                batch.queue(item.clone());
                items.push((i, item));
                Ok(())
            })
            .collect();
        // The batch says whether all hold (ZIP 215: exactly when each does alone); when one does
        // not, each is checked alone to find it, which a peer that sent it pays for with a ban.
        if !items.is_empty() && batch.verify(rand::thread_rng()).is_err() {
            for (i, item) in items {
                if item.verify_single().is_err() {
                    out[i] = Err(RecordError::BadSignature);
                }
            }
        }
        out
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if records.len() < 64 || threads < 2 {
        return verify_chunk(records, store);
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|c| s.spawn(move || verify_chunk(c, store)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(RecordError::Malformed("verification panicked".into())); chunk])
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::StoreSecret;
    use proptest::prelude::*;

    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "lpmesh-log-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(dir: &Dir, key: &Keypair, secret: &StoreSecret) -> Log {
        // sled lets go of its lock a moment after the last handle is dropped (its flusher thread):
        // a reopen right after a drop may have to wait, as the node's own reopen does.
        for _ in 0..100 {
            match Log::open(&dir.0, "store-1", key.clone(), secret.recipient()) {
                Ok(l) => return l,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        Log::open(&dir.0, "store-1", key.clone(), secret.recipient()).unwrap()
    }

    #[test]
    fn appends_are_durable_and_seq_continues_after_a_restart() {
        let dir = Dir::new("restart");
        let key = Keypair::generate_ed25519();
        let secret = StoreSecret::generate();
        let mut log = open(&dir, &key, &secret);
        let a = log.append(RecordKind::Event, b"one", 1000).unwrap();
        let b = log
            .append_batch(&[(RecordKind::Event, b"two"), (RecordKind::Action, b"three")], 1000)
            .unwrap();
        assert_eq!((a.seq, b[0].seq, b[1].seq), (1, 2, 3));
        assert!(b[1].hlc > a.hlc);
        drop(log);
        let mut log = open(&dir, &key, &secret);
        assert_eq!(log.version_vector().get(&log.origin()), Some(&3));
        assert_eq!(log.len(), 3);
        // The wall clock went backwards across the restart: seq and hlc still move forward.
        let c = log.append(RecordKind::Event, b"four", 10).unwrap();
        assert_eq!(c.seq, 4);
        assert!(c.hlc > b[1].hlc);
        let r = log.get(&log.origin(), 2).unwrap().unwrap();
        assert_eq!(secret.decrypt(&r.ciphertext).unwrap(), b"two");
    }

    #[test]
    fn received_records_are_verified_idempotent_and_fill_gaps() {
        let (da, db) = (Dir::new("a"), Dir::new("b"));
        let secret = StoreSecret::generate();
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut a = open(&da, &ka, &secret);
        let mut b = open(&db, &kb, &secret);
        let recs: Vec<Record> = (0..5)
            .map(|i| a.append(RecordKind::Event, format!("e{i}").as_bytes(), 1000).unwrap())
            .collect();
        // Out of order: 3 and 5 first; the version vector waits for the gap.
        let out = b.insert_batch(&[recs[2].clone(), recs[4].clone()], 1000).unwrap();
        assert_eq!(out, vec![Ok(Inserted::New), Ok(Inserted::New)]);
        assert_eq!(b.version_vector().get(&a.origin()), None);
        let out = b
            .insert_batch(&[recs[0].clone(), recs[1].clone(), recs[1].clone()], 1000)
            .unwrap();
        assert_eq!(out, vec![Ok(Inserted::New), Ok(Inserted::New), Ok(Inserted::Duplicate)]);
        assert_eq!(b.version_vector().get(&a.origin()), Some(&3));
        b.insert_batch(&[recs[3].clone()], 1000).unwrap();
        assert_eq!(b.version_vector().get(&a.origin()), Some(&5));
        assert_eq!(b.len(), 5);

        // A forged, a foreign-store and an equivocating record are refused; honest ones still land.
        let mut forged = recs[0].clone();
        forged.ciphertext[0] ^= 1;
        let foreign = Record::seal("store-2", &ka, 6, Timestamp::default(), RecordKind::Event, vec![1]).unwrap();
        let equivocation = Record::seal("store-1", &ka, 2, Timestamp::default(), RecordKind::Event, vec![9]).unwrap();
        let honest = a.append(RecordKind::Event, b"e5", 1000).unwrap();
        let out = b.insert_batch(&[forged, foreign, equivocation, honest], 1000).unwrap();
        assert_eq!(out[0], Err(Rejected::Invalid(RecordError::BadSignature)));
        assert!(matches!(out[1], Err(Rejected::Invalid(RecordError::WrongStore(_)))));
        assert_eq!(
            out[2],
            Err(Rejected::Equivocation {
                origin: a.origin(),
                seq: 2
            })
        );
        assert_eq!(out[3], Ok(Inserted::New));
        assert_eq!(b.version_vector().get(&a.origin()), Some(&6));
        assert_eq!(
            b.range(&a.origin(), 2, 3)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
    }

    #[test]
    fn a_batch_check_finds_each_bad_signature_among_many_and_agrees_with_checking_alone() {
        let secret = StoreSecret::generate();
        let dir = Dir::new("batch");
        let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        let mut log = open(&dir, &keys[0], &secret);
        let items: Vec<(RecordKind, &[u8])> = (0..300).map(|_| (RecordKind::Event, &b"e"[..])).collect();
        let mut records = log.append_batch(&items, 1000).unwrap();
        for k in &keys[1..] {
            records.push(Record::seal("store-1", k, 1, Timestamp::default(), RecordKind::Event, vec![1]).unwrap());
        }
        // All good: one batch, every verdict Ok.
        assert!(verify_all(&records, "store-1").iter().all(Result::is_ok));
        // Bad ones scattered through both halves (the chunks of two cores): each found, no other.
        let bad = [0usize, 7, 150, 299, 301];
        for &i in &bad {
            records[i].signature[10] ^= 1;
        }
        records[42].signature.truncate(10);
        // A small-order origin: anyone could make its signatures check, so it has no key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        records[200].origin = Origin(identity);
        let verdicts = verify_all(&records, "store-1");
        for (i, v) in verdicts.iter().enumerate() {
            let expected = if bad.contains(&i) || i == 42 {
                Err(RecordError::BadSignature)
            } else if i == 200 {
                Err(RecordError::BadOrigin)
            } else {
                Ok(())
            };
            assert_eq!(v, &expected, "record {i}");
            assert_eq!(
                &records[i].verify("store-1"),
                v,
                "record {i}: the batch and the single check agree"
            );
        }
    }

    fn seqs(log: &Log, origin: &Origin) -> Vec<u64> {
        log.range(origin, 1, 1000).unwrap().iter().map(|r| r.seq).collect()
    }

    #[test]
    fn expiry_removes_the_same_prefix_everywhere_and_a_newcomer_moves_past_it() {
        let (da, db, dc) = (Dir::new("ea"), Dir::new("eb"), Dir::new("ec"));
        let secret = StoreSecret::generate();
        let (ka, kb, kc) = (
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
            Keypair::generate_ed25519(),
        );
        let mut a = open(&da, &ka, &secret);
        let mut b = open(&db, &kb, &secret);
        // Five old records (t = 1000..1004 s) and three recent ones (t = 10_000 s).
        let mut recs = Vec::new();
        for i in 0..5u64 {
            recs.push(a.append(RecordKind::Event, &[i as u8], 1_000_000 + i * 1000).unwrap());
        }
        for i in 0..3u64 {
            recs.push(a.append(RecordKind::Event, &[9], 10_000_000 + i).unwrap());
        }
        b.insert_batch(&recs, 10_000_000).unwrap();
        let retention = Some(5_000_000);
        a.set_retention(retention);
        b.set_retention(retention);
        let now = 10_000_500;
        let removed = a.expire(now, 3).unwrap();
        assert_eq!(removed, Expired { removed: 3, more: true });
        assert_eq!(
            a.expire(now, 100).unwrap(),
            Expired {
                removed: 2,
                more: false
            }
        );
        assert_eq!(a.expire(now, 100).unwrap(), Expired::default());
        b.expire(now, 100).unwrap();
        let origin = a.origin();
        assert_eq!(seqs(&a, &origin), vec![6, 7, 8]);
        assert_eq!(seqs(&a, &origin), seqs(&b, &origin));
        assert_eq!((a.floor(&origin), a.len()), (5, 3));
        // The version vector never goes back, and our own seqs go on after a restart.
        assert_eq!(a.version_vector().get(&origin), Some(&8));
        drop(a);
        let mut a = open(&da, &ka, &secret);
        a.set_retention(retention);
        assert_eq!((a.floor(&origin), a.len()), (5, 3));
        assert_eq!(a.append(RecordKind::Event, b"next", now).unwrap().seq, 9);

        // A node that never saw the old records asks from seq 1: the floor record comes first and
        // takes it past them, so it does not ask again.
        let mut c = open(&dc, &kc, &secret);
        c.set_retention(retention);
        let answer = b.range_for_peer(&origin, 1, 100).unwrap();
        assert_eq!(answer.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6, 7, 8]);
        let out = c.insert_batch(&answer, now).unwrap();
        assert_eq!(out[0], Ok(Inserted::Expired));
        assert_eq!(c.version_vector().get(&origin), Some(&8));
        assert_eq!(seqs(&c, &origin), vec![6, 7, 8]);
        // Old records arriving late (a node back after days) are not stored either.
        assert_eq!(c.insert_batch(&recs[..2], now).unwrap(), vec![Ok(Inserted::Expired); 2]);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn member_and_key_records_outlive_the_retention_period_and_reach_a_newcomer() {
        let (da, dc) = (Dir::new("ka"), Dir::new("kc"));
        let secret = StoreSecret::generate();
        let (ka, kc) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut a = open(&da, &ka, &secret);
        let old = |i: u64| 1_000_000 + i * 1000;
        let mut recs = vec![a.append(RecordKind::Member, b"admission", old(0)).unwrap()];
        for i in 1..4u64 {
            recs.push(a.append(RecordKind::Event, &[i as u8], old(i)).unwrap());
        }
        recs.push(a.append(RecordKind::Keys, b"epoch", old(4)).unwrap());
        recs.push(a.append(RecordKind::Event, b"old", old(5)).unwrap());
        for i in 0..2u64 {
            recs.push(a.append(RecordKind::Event, b"new", 10_000_000 + i).unwrap());
        }
        let retention = Some(5_000_000);
        a.set_retention(retention);
        let now = 10_000_500;
        assert_eq!(
            a.expire(now, 100).unwrap().removed,
            4,
            "the events expire, not the others"
        );
        assert_eq!(a.expire(now, 100).unwrap(), Expired::default());
        let origin = a.origin();
        assert_eq!(seqs(&a, &origin), vec![1, 5, 7, 8]);
        assert_eq!((a.floor(&origin), a.len()), (6, 4));

        // A newcomer asking from seq 1 gets the kept records, then the floor, then the rest, and
        // moves past what expired: it does not ask again.
        let answer = a.range_for_peer(&origin, 1, 100).unwrap();
        assert_eq!(answer.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 5, 6, 7, 8]);
        let mut c = open(&dc, &kc, &secret);
        c.set_retention(retention);
        let out = c.insert_batch(&answer, now).unwrap();
        assert_eq!(out[..3], [Ok(Inserted::New), Ok(Inserted::New), Ok(Inserted::Expired)]);
        assert_eq!(c.version_vector().get(&origin), Some(&8));
        assert_eq!(seqs(&c, &origin), vec![1, 5, 7, 8]);
        // A limit that cuts the answer short still starts with the kept records.
        let short = a.range_for_peer(&origin, 1, 1).unwrap();
        assert_eq!(short.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
        // A kept record that is itself the newest expired one is the floor, and is stored.
        let mut d = open(&Dir::new("kd"), &Keypair::generate_ed25519(), &secret);
        d.set_retention(retention);
        let out = d.insert_batch(&[recs[4].clone(), recs[6].clone()], now).unwrap();
        assert_eq!(out, vec![Ok(Inserted::New), Ok(Inserted::New)]);
        assert_eq!((d.floor(&origin), d.version_vector().get(&origin)), (5, Some(&5)));
    }

    #[test]
    fn a_received_expired_record_drops_what_it_covers() {
        let (da, db) = (Dir::new("fa"), Dir::new("fb"));
        let secret = StoreSecret::generate();
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut a = open(&da, &ka, &secret);
        let mut b = open(&db, &kb, &secret);
        let recs: Vec<Record> = (0..4u64)
            .map(|i| a.append(RecordKind::Event, &[i as u8], 1_000_000 + i * 1000).unwrap())
            .collect();
        // b holds 1 and 2, then learns (by record 3, expired by its clock) that 1..=3 have expired.
        b.insert_batch(&recs[..2], 1_000_000).unwrap();
        b.set_retention(Some(1000));
        let out = b.insert_batch(&recs[2..], 1_003_500).unwrap();
        assert_eq!(out, vec![Ok(Inserted::Expired), Ok(Inserted::New)]);
        assert_eq!(seqs(&b, &a.origin()), vec![4]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.version_vector().get(&a.origin()), Some(&4));
        // No retention set: nothing is removed.
        a.set_retention(None);
        assert_eq!(a.expire(u64::MAX, 100).unwrap(), Expired::default());
    }

    #[test]
    fn records_from_a_clock_far_ahead_are_refused_until_our_clock_catches_up() {
        let (da, db) = (Dir::new("ha"), Dir::new("hb"));
        let secret = StoreSecret::generate();
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut a = open(&da, &ka, &secret);
        let mut b = open(&db, &kb, &secret);
        let now = 100_000_000;
        let ahead = now + MAX_CLOCK_SKEW_MS + 60_000;
        // a's seq 1 is on time, 2 and 3 come from its clock running 6 minutes ahead of b's.
        let mut recs = vec![a.append(RecordKind::Event, b"on time", now).unwrap()];
        recs.extend(
            a.append_batch(&[(RecordKind::Event, b"early"), (RecordKind::Event, b"early")], ahead)
                .unwrap(),
        );
        let out = b.insert_batch(&recs, now).unwrap();
        assert_eq!(out[0], Ok(Inserted::New));
        for (o, r) in out[1..].iter().zip(&recs[1..]) {
            assert_eq!(
                *o,
                Err(Rejected::Future {
                    origin: a.origin(),
                    seq: r.seq,
                    ahead_ms: MAX_CLOCK_SKEW_MS + 60_000
                })
            );
            assert!(!o.as_ref().unwrap_err().is_offence(), "a skewed clock is no offence");
            assert_eq!(o.as_ref().unwrap_err().reason(), "future");
        }
        // Not held: the version vector stops before them, and b's own clock was not dragged along.
        assert_eq!(b.version_vector().get(&a.origin()), Some(&1));
        assert_eq!(b.len(), 1);
        let mine = b.append(RecordKind::Event, b"mine", now + 1).unwrap();
        assert_eq!((mine.seq, mine.hlc.wall_ms), (1, now + 1));
        // At the bound exactly is still taken; later, the refused records are taken too.
        let edge = a.append(RecordKind::Event, b"edge", ahead).unwrap();
        assert_eq!(
            b.insert_batch(std::slice::from_ref(&edge), ahead - MAX_CLOCK_SKEW_MS)
                .unwrap(),
            vec![Ok(Inserted::New)]
        );
        let out = b.insert_batch(&recs, ahead).unwrap();
        assert_eq!(out, vec![Ok(Inserted::Duplicate), Ok(Inserted::New), Ok(Inserted::New)]);
        assert_eq!(b.version_vector().get(&a.origin()), Some(&edge.seq));
        // Records checked on another thread go through the same rules.
        let checked = check(vec![recs[0].clone(), edge], "store-1");
        assert_eq!(checked.records().len(), 2);
        assert_eq!(
            b.insert_checked(&checked, ahead).unwrap(),
            vec![Ok(Inserted::Duplicate), Ok(Inserted::Duplicate)]
        );
        let mut forged = recs[1].clone();
        forged.ciphertext[0] ^= 1;
        let foreign = check(vec![forged], "store-2");
        let out = b.insert_checked(&foreign, ahead).unwrap();
        assert_eq!(
            out,
            vec![Err(Rejected::Invalid(RecordError::BadSignature))],
            "checked again for our store"
        );
    }

    #[test]
    fn peer_given_seqs_at_u64_max_neither_panic_nor_wrap() {
        let (da, db) = (Dir::new("ma"), Dir::new("mb"));
        let secret = StoreSecret::generate();
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let a_origin = Origin::of(&ka).unwrap();
        let mut b = open(&db, &kb, &secret);
        let seal = |seq: u64, wall_ms: u64| {
            let ct = secret.recipient().encrypt(b"x").unwrap();
            let hlc = Timestamp { wall_ms, logical: 0 };
            Record::seal("store-1", &ka, seq, hlc, RecordKind::Event, ct).unwrap()
        };
        let top = [seal(u64::MAX - 1, 1000), seal(u64::MAX, 1001)];
        assert_eq!(b.insert_batch(&top, 2000).unwrap(), vec![Ok(Inserted::New); 2]);
        assert_eq!(b.version_vector().get(&a_origin), None, "held beyond a gap");
        assert_eq!(b.range(&a_origin, u64::MAX, 10).unwrap().len(), 1);
        assert_eq!(b.range_for_peer(&a_origin, u64::MAX, usize::MAX).unwrap().len(), 1);
        // The record at u64::MAX expires and becomes the floor: the version vector reaches the top
        // and a peer asking from 1 gets only the floor record.
        b.set_retention(Some(500));
        let expired = b.expire(1_000_000, 10).unwrap();
        assert_eq!(expired.removed, 2);
        assert_eq!(b.floor(&a_origin), u64::MAX);
        assert_eq!(b.version_vector().get(&a_origin), Some(&u64::MAX));
        let answer = b.range_for_peer(&a_origin, 1, 10).unwrap();
        assert_eq!(answer.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![u64::MAX]);
        assert_eq!(
            b.insert_batch(&[seal(7, 1000)], 1_000_000).unwrap(),
            vec![Ok(Inserted::Expired)]
        );
        // Our own seq cannot wrap either: a log whose own entry is at the top refuses to append.
        drop(b);
        let mut a = open(&da, &ka, &secret);
        a.vv.insert(a_origin, u64::MAX);
        assert!(matches!(
            a.append(RecordKind::Event, b"one more", 5),
            Err(LogError::SeqExhausted)
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any delivery order, with duplicates, gives the same log and version vector as the model.
        #[test]
        fn log_matches_an_in_memory_model(order in prop::collection::vec(0usize..12, 0..40)) {
            let (src_dir, dst_dir) = (Dir::new("src"), Dir::new("dst"));
            let secret = StoreSecret::generate();
            let (ks, kd) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            let mut src = open(&src_dir, &ks, &secret);
            let mut dst = open(&dst_dir, &kd, &secret);
            let recs: Vec<Record> = (0..12).map(|i| src.append(RecordKind::Event, &[i as u8], 1000).unwrap()).collect();
            let mut model: std::collections::BTreeSet<u64> = Default::default();
            for chunk in order.chunks(3) {
                let batch: Vec<Record> = chunk.iter().map(|&i| recs[i].clone()).collect();
                let out = dst.insert_batch(&batch, 1000).unwrap();
                for (&i, o) in chunk.iter().zip(out) {
                    let new = model.insert(recs[i].seq);
                    // Duplicates within one batch are reported as duplicates too.
                    prop_assert!(matches!(o, Ok(Inserted::New) | Ok(Inserted::Duplicate)));
                    if new { prop_assert_eq!(o, Ok(Inserted::New)); }
                }
            }
            let contiguous = (1..).take_while(|s| model.contains(s)).count() as u64;
            prop_assert_eq!(dst.version_vector().get(&src.origin()).copied().unwrap_or(0), contiguous);
            prop_assert_eq!(dst.len(), model.len() as u64);
            drop(dst);
            let dst = open(&dst_dir, &kd, &secret);
            prop_assert_eq!(dst.version_vector().get(&src.origin()).copied().unwrap_or(0), contiguous);
        }

        /// Seqs anywhere in u64, the top included, in any order: the version vector is what is
        /// contiguous from 1, ranges stay in bounds, and nothing panics or wraps.
        #[test]
        fn extreme_seqs_keep_the_version_vector_right(
            picks in prop::collection::vec(prop_oneof![1u64..6, (u64::MAX - 4)..=u64::MAX, any::<u64>()], 1..12),
            from in any::<u64>(),
            limit in prop_oneof![0usize..4, Just(usize::MAX)],
        ) {
            let dst_dir = Dir::new("xd");
            let secret = StoreSecret::generate();
            let (ks, kd) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            let origin = Origin::of(&ks).unwrap();
            let mut dst = open(&dst_dir, &kd, &secret);
            let mut model: std::collections::BTreeSet<u64> = Default::default();
            for seq in picks.into_iter().filter(|s| *s > 0) {
                let r = Record::seal("store-1", &ks, seq, Timestamp { wall_ms: 1000, logical: 0 }, RecordKind::Event, vec![1]).unwrap();
                let out = dst.insert_batch(&[r], 1000).unwrap();
                prop_assert_eq!(out[0].clone(), if model.insert(seq) { Ok(Inserted::New) } else { Ok(Inserted::Duplicate) });
            }
            let contiguous = (1..=u64::MAX).take_while(|s| model.contains(s)).count() as u64;
            prop_assert_eq!(dst.version_vector().get(&origin).copied().unwrap_or(0), contiguous);
            let got = dst.range_for_peer(&origin, from, limit).unwrap();
            let want: Vec<u64> = model.range(from.max(1)..).copied().take(limit).collect();
            prop_assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
        }
    }
}
