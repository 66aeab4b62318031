//! The replicated log on disk (sled).
//!
//! Keys in one tree, so that a record and the version-vector entry it advances are written in one
//! atomic batch:
//! - `r` + origin (32) + seq (8, big-endian) -> the encoded record
//! - `v` + origin (32) -> highest contiguous seq held from that origin (the version vector)
//!
//! Our own seq is the version vector's entry for our own origin: a record and its seq are committed
//! together and flushed before `append` returns, so a seq is never handed out twice, crash or not.
//! Inserting is idempotent by (origin, seq); a different record under an existing (origin, seq) is an
//! equivocation and refused.

use std::collections::BTreeMap;
use std::path::Path;

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
    #[error("stored record {origin}/{seq} is corrupt: {reason}")]
    Corrupt { origin: Origin, seq: u64, reason: String },
    #[error("the node key is not Ed25519")]
    UnsupportedKey,
    #[error("the log is in use by another process (is the node running?)")]
    Locked,
}

/// What inserting a received record did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// Already held, byte for byte.
    Duplicate,
}

/// Why a received record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Invalid(#[from] RecordError),
    #[error("{origin} already signed a different record with seq {seq}")]
    Equivocation { origin: Origin, seq: u64 },
}

impl Rejected {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Invalid(e) => e.reason(),
            Rejected::Equivocation { .. } => "equivocation",
        }
    }
}

pub struct Log {
    db: sled::Db,
    tree: sled::Tree,
    store: String,
    key: Keypair,
    origin: Origin,
    recipient: StoreRecipient,
    clock: Clock,
    vv: VersionVector,
    len: u64,
}

fn record_key(origin: &Origin, seq: u64) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[0] = b'r';
    k[1..33].copy_from_slice(&origin.0);
    k[33..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn vv_key(origin: &Origin) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = b'v';
    k[1..].copy_from_slice(&origin.0);
    k
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
        let mut vv = VersionVector::new();
        for item in tree.scan_prefix(b"v") {
            let (k, v) = item?;
            if let (Ok(o), Ok(s)) = (<[u8; 32]>::try_from(&k[1..]), <[u8; 8]>::try_from(v.as_ref())) {
                vv.insert(Origin(o), u64::from_be_bytes(s));
            }
        }
        let len = tree.scan_prefix(b"r").count() as u64;
        let mut clock = Clock::new(MAX_CLOCK_SKEW_MS);
        // Never issue a timestamp below one we already issued before a restart.
        if let Some(last) = vv.get(&origin).copied() {
            if let Some(bytes) = tree.get(record_key(&origin, last))? {
                if let Ok(r) = Record::decode(&bytes) {
                    let _ = clock.observe(r.hlc, u64::MAX / 2);
                }
            }
        }
        Ok(Self {
            db,
            tree,
            store: store.to_string(),
            key,
            origin,
            recipient,
            clock,
            vv,
            len,
        })
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
        let mut next = self.vv.get(&self.origin).copied().unwrap_or(0);
        let mut batch = sled::Batch::default();
        let mut out = Vec::with_capacity(items.len());
        for (kind, plaintext) in items {
            next += 1;
            let ciphertext = self.recipient.encrypt(plaintext)?;
            let hlc = self.clock.now(wall_ms);
            let r = Record::seal(&self.store, &self.key, next, hlc, *kind, ciphertext)?;
            batch.insert(&record_key(&self.origin, next)[..], r.encode());
            out.push(r);
        }
        if out.is_empty() {
            return Ok(out);
        }
        batch.insert(&vv_key(&self.origin)[..], &next.to_be_bytes()[..]);
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
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
        let mut outcomes = Vec::with_capacity(records.len());
        let mut batch = sled::Batch::default();
        let mut pending: BTreeMap<[u8; 41], Vec<u8>> = BTreeMap::new();
        let mut touched: Vec<Origin> = Vec::new();
        let verdicts = verify_all(records, &self.store);
        for (r, verdict) in records.iter().zip(verdicts) {
            if let Err(e) = verdict {
                outcomes.push(Err(Rejected::Invalid(e)));
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
                    if let Err(skew) = self.clock.observe(r.hlc, wall_ms) {
                        tracing::warn!(origin = %r.origin, ahead_ms = skew.ahead_ms, "record from a clock far ahead of ours");
                    }
                    batch.insert(&key[..], bytes.clone());
                    pending.insert(key, bytes);
                    if !touched.contains(&r.origin) {
                        touched.push(r.origin);
                    }
                    outcomes.push(Ok(Inserted::New));
                }
            }
        }
        if pending.is_empty() {
            return Ok(outcomes);
        }
        // Advance the version vector over whatever is now contiguous.
        let mut advanced = Vec::new();
        for origin in touched {
            let mut seq = self.vv.get(&origin).copied().unwrap_or(0);
            loop {
                let k = record_key(&origin, seq + 1);
                if pending.contains_key(&k) || self.tree.contains_key(k)? {
                    seq += 1;
                } else {
                    break;
                }
            }
            if seq > self.vv.get(&origin).copied().unwrap_or(0) {
                batch.insert(&vv_key(&origin)[..], &seq.to_be_bytes()[..]);
                advanced.push((origin, seq));
            }
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        self.len += pending.len() as u64;
        for (o, s) in advanced {
            self.vv.insert(o, s);
        }
        Ok(outcomes)
    }

    /// Up to `limit` records of `origin` from `from_seq` on, in order.
    pub fn range(&self, origin: &Origin, from_seq: u64, limit: usize) -> Result<Vec<Record>, LogError> {
        let start = record_key(origin, from_seq.max(1));
        let end = record_key(origin, u64::MAX);
        let mut out = Vec::new();
        for item in self.tree.range(start..=end).take(limit) {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k[33..41].try_into().unwrap_or([0; 8]));
            out.push(Record::decode(&v).map_err(|e| LogError::Corrupt {
                origin: *origin,
                seq,
                reason: e.to_string(),
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
            Record::decode(&v).map_err(|e| LogError::Corrupt {
                origin,
                seq,
                reason: e.to_string(),
            })
        })
    }

    pub fn get(&self, origin: &Origin, seq: u64) -> Result<Option<Record>, LogError> {
        match self.tree.get(record_key(origin, seq))? {
            Some(v) => Ok(Some(Record::decode(&v).map_err(|e| LogError::Corrupt {
                origin: *origin,
                seq,
                reason: e.to_string(),
            })?)),
            None => Ok(None),
        }
    }
}

/// Signature checks dominate taking in a large batch (a node catching up): spread them over the cores.
fn verify_all(records: &[Record], store: &str) -> Vec<Result<(), RecordError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if records.len() < 64 || threads < 2 {
        return records.iter().map(|r| r.verify(store)).collect();
    }
    let chunk = records.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|r| r.verify(store)).collect::<Vec<_>>()))
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
    }
}
