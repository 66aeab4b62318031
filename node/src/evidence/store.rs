//! Evidence on disk: encrypted with a key that never leaves this node, deleted by age and by size.
//!
//! Layout (directory 0700, files 0600):
//! - `<data_dir>/evidence.key`: 32 random bytes, made on first use, beside the node's other keys and
//!   outside the evidence directory;
//! - `<data_dir>/evidence/<id>.still` and `<id>.clip`: `MAGIC`, a 24-byte random nonce, then
//!   XChaCha20-Poly1305 of the JPEG or MP4 with the id and the part as associated data (a file
//!   renamed to another id or part does not decrypt);
//! - `<data_dir>/evidence/<id>.json`: what the evidence is of (incident, camera, times, sizes): no
//!   pixel. Written first, so whatever a crash leaves behind is listed and deleted in its time.
//!
//! A copy of the evidence directory (what is handed over or backed up as "the evidence") shows no
//! picture without the key. Whoever copies the whole data directory or holds the disk has the key
//! too, as they have the node's identity: the node is the trust boundary, and a backup of a data
//! directory must be kept like the node's keys.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use serde::{Deserialize, Serialize};

use crate::event::EvidenceId;

const MAGIC: &[u8; 6] = b"LPEV1\0";
const NONCE: usize = 24;
/// The largest part read back (a clip of 60 s at 30 fps and 1920 px is far below).
pub const MAX_PART_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not evidence of this node (wrong key, or altered)")]
    Sealed { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("evidence of {bytes} bytes: more than {limit} may be kept")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("cannot encrypt evidence")]
    Seal,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which part of an incident's evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// JPEG of the moment.
    Still,
    /// H.264 MP4 around it.
    Clip,
}

impl Part {
    fn ext(self) -> &'static str {
        match self {
            Part::Still => "still",
            Part::Clip => "clip",
        }
    }
}

/// What one incident's evidence is (kept beside it, unencrypted: no pixel).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub id: EvidenceId,
    pub incident: String,
    pub camera: String,
    /// The moment shown (Unix ms).
    pub at_ms: i64,
    /// When it was written (Unix ms): retention counts from here.
    pub created_ms: i64,
    pub still_bytes: u64,
    #[serde(default)]
    pub clip_bytes: u64,
    /// The clip's first and last frame (Unix ms).
    #[serde(default)]
    pub clip_from_ms: i64,
    #[serde(default)]
    pub clip_to_ms: i64,
    pub faces_hidden: bool,
}

impl Meta {
    fn bytes(&self) -> u64 {
        self.still_bytes + self.clip_bytes
    }
}

/// What [`EvidenceStore::prune`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub expired: usize,
    pub over_cap: usize,
}

/// What is kept now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub stills: u64,
    pub clips: u64,
    pub bytes: u64,
}

pub struct EvidenceStore {
    dir: PathBuf,
    cipher: XChaCha20Poly1305,
    retention_ms: i64,
    max_bytes: u64,
    /// Writes and prunes one at a time (several cameras write here).
    lock: std::sync::Mutex<()>,
}

impl EvidenceStore {
    /// Opens (or starts) `<data_dir>/evidence`.
    pub fn open(data_dir: &Path, retention_hours: f64, max_mb: u64) -> Result<EvidenceStore, EvidenceError> {
        let dir = data_dir.join("evidence");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        let key_path = data_dir.join("evidence.key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => {
                return Err(EvidenceError::Invalid {
                    path: key_path,
                    reason: "not a 32-byte key".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
                write_private(&key_path, &k)?;
                k
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| EvidenceError::Invalid {
            path: key_path,
            reason: "not a 32-byte key".into(),
        })?;
        Ok(EvidenceStore {
            dir,
            cipher,
            retention_ms: (retention_hours * 3_600_000.0) as i64,
            max_bytes: max_mb.saturating_mul(1024 * 1024),
            lock: std::sync::Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &EvidenceId, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    fn seal(&self, id: &EvidenceId, part: Part, plain: &[u8]) -> Result<Vec<u8>, EvidenceError> {
        let mut nonce = [0u8; NONCE];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let aad = format!("{id}.{}", part.ext());
        let sealed = self
            .cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| EvidenceError::Seal)?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Keeps one incident's evidence, then deletes what is too old or over the cap.
    pub fn put(&self, meta: &Meta, still: &[u8], clip: Option<&[u8]>, now_ms: i64) -> Result<Pruned, EvidenceError> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut meta = meta.clone();
        meta.still_bytes = still.len() as u64;
        meta.clip_bytes = clip.map_or(0, |c| c.len() as u64);
        // Something that could never be read back, or that alone would empty the store, is refused.
        let largest = meta.still_bytes.max(meta.clip_bytes);
        if largest > MAX_PART_BYTES || meta.bytes() > self.max_bytes {
            return Err(EvidenceError::TooLarge {
                bytes: largest.max(meta.bytes()),
                limit: MAX_PART_BYTES.min(self.max_bytes),
            });
        }
        let json_path = self.path(&meta.id, "json");
        let json = serde_json::to_vec(&meta).map_err(|source| EvidenceError::Encode {
            path: json_path.clone(),
            source,
        })?;
        write_private(&json_path, &json)?;
        write_private(&self.path(&meta.id, "still"), &self.seal(&meta.id, Part::Still, still)?)?;
        if let Some(c) = clip {
            write_private(&self.path(&meta.id, "clip"), &self.seal(&meta.id, Part::Clip, c)?)?;
        }
        Ok(self.prune_locked(now_ms))
    }

    /// The decrypted part, `None` when there is none (never kept, or already deleted).
    pub fn read(&self, id: &EvidenceId, part: Part) -> Result<Option<Vec<u8>>, EvidenceError> {
        let path = self.path(id, part.ext());
        let bytes = match std::fs::File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(io(&path))?.len();
                if len > MAX_PART_BYTES {
                    return Err(EvidenceError::Invalid {
                        path,
                        reason: format!("{len} bytes: larger than any evidence this node writes"),
                    });
                }
                let mut b = Vec::with_capacity(len as usize);
                std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_PART_BYTES), &mut b).map_err(io(&path))?;
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        if bytes.len() < MAGIC.len() + NONCE || &bytes[..MAGIC.len()] != MAGIC {
            return Err(EvidenceError::Sealed { path });
        }
        let nonce = &bytes[MAGIC.len()..MAGIC.len() + NONCE];
        let aad = format!("{id}.{}", part.ext());
        self.cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: &bytes[MAGIC.len() + NONCE..],
                    aad: aad.as_bytes(),
                },
            )
            .map(Some)
            .map_err(|_| EvidenceError::Sealed { path })
    }

    pub fn meta(&self, id: &EvidenceId) -> Option<Meta> {
        let b = std::fs::read(self.path(id, "json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Every piece of evidence kept, oldest first.
    pub fn list(&self) -> Vec<Meta> {
        let mut out: Vec<Meta> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| {
                let name = d.file_name().into_string().ok()?;
                let id = EvidenceId::parse(name.strip_suffix(".json")?)?;
                self.meta(&id)
            })
            .collect();
        out.sort_by_key(|m| (m.created_ms, m.id.clone()));
        out
    }

    pub fn usage(&self) -> Usage {
        usage_of(&self.list())
    }

    /// Deletes evidence older than the retention, then the oldest until the rest fits the cap.
    pub fn prune(&self, now_ms: i64) -> Pruned {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.prune_locked(now_ms)
    }

    fn prune_locked(&self, now_ms: i64) -> Pruned {
        let mut pruned = Pruned::default();
        let mut kept = Vec::new();
        let listed = self.list();
        self.remove_strays(&listed, now_ms);
        for m in listed {
            // Written by a clock far ahead, it would outlive its retention: it goes now.
            let from_the_future = m.created_ms > now_ms.saturating_add(86_400_000);
            if now_ms.saturating_sub(m.created_ms) > self.retention_ms || from_the_future {
                self.remove(&m.id);
                pruned.expired += 1;
            } else {
                kept.push(m);
            }
        }
        let mut total: u64 = kept.iter().map(Meta::bytes).sum();
        for m in &kept {
            if total <= self.max_bytes {
                break;
            }
            self.remove(&m.id);
            total = total.saturating_sub(m.bytes());
            pruned.over_cap += 1;
        }
        if pruned != Pruned::default() {
            tracing::info!(expired = pruned.expired, over_cap = pruned.over_cap, "evidence deleted");
        }
        pruned
    }

    /// Parts with no description (a write cut short, a description unreadable), and unfinished
    /// writes, once older than an hour: nothing in the directory outlives its retention unlisted.
    fn remove_strays(&self, listed: &[Meta], now_ms: i64) {
        let known: std::collections::HashSet<&str> = listed.iter().map(|m| m.id.as_str()).collect();
        for d in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = d.file_name().to_string_lossy().to_string();
            let id = name.split('.').next().unwrap_or_default();
            if known.contains(id) && !name.ends_with(".tmp") {
                continue;
            }
            let age_ms = d
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(i64::MAX, |t| now_ms.saturating_sub(t.as_millis() as i64));
            if age_ms > 3_600_000 {
                let _ = std::fs::remove_file(d.path());
            }
        }
    }

    fn remove(&self, id: &EvidenceId) {
        // The description goes last: evidence is listed by it, so a crash midway leaves it listed
        // (or a stray) and the next prune finishes the job.
        for ext in ["clip", "still", "json"] {
            let p = self.path(id, ext);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot delete evidence");
                }
            }
        }
    }
}

fn usage_of(list: &[Meta]) -> Usage {
    list.iter().fold(Usage::default(), |mut u, m| {
        u.stills += 1;
        u.clips += u64::from(m.clip_bytes > 0);
        u.bytes += m.bytes();
        u
    })
}

/// What a node's data directory holds as evidence, read from the descriptions alone (no key needed,
/// none made): for reports about a stopped node.
pub fn usage_in(data_dir: &Path) -> Usage {
    let dir = data_dir.join("evidence");
    let list: Vec<Meta> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|d| serde_json::from_slice(&std::fs::read(d.path()).ok()?).ok())
        .collect();
    usage_of(&list)
}

/// Writes `bytes` to `path` readable by this user only, whole or not at all.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    lpmesh_web::fs::write_private_atomic(path, &path.with_extension("tmp"), bytes)
        .map_err(|(path, source)| EvidenceError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &EvidenceId, created_ms: i64) -> Meta {
        Meta {
            id: id.clone(),
            incident: "n/cam/1-0".into(),
            camera: "cam".into(),
            at_ms: created_ms,
            created_ms,
            still_bytes: 0,
            clip_bytes: 0,
            clip_from_ms: 0,
            clip_to_ms: 0,
            faces_hidden: true,
        }
    }

    use lpmesh_web::clock::now_ms;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lpmesh-evidence-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    // A JPEG's first bytes, as a decoder would look for them.
    const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 a still of the moment";

    #[test]
    fn kept_encrypted_and_read_back_only_with_this_nodes_key() {
        let d = tmp("seal");
        let s = EvidenceStore::open(&d, 72.0, 100).unwrap();
        let id = EvidenceId::random();
        s.put(&meta(&id, 1000), JPEG, Some(b"\x00\x00\x00\x18ftypmp42 the clip"), 1000)
            .unwrap();
        assert_eq!(s.read(&id, Part::Still).unwrap().unwrap(), JPEG);
        assert!(s
            .read(&id, Part::Clip)
            .unwrap()
            .unwrap()
            .starts_with(b"\x00\x00\x00\x18ftyp"));
        // On disk: no image signature, no plaintext, owner-only files.
        let on_disk = std::fs::read(d.join("evidence").join(format!("{id}.still"))).unwrap();
        assert!(!on_disk.windows(3).any(|w| w == b"\xff\xd8\xff"));
        assert!(!on_disk.windows(4).any(|w| w == b"JFIF"));
        let mode = std::fs::metadata(d.join("evidence").join(format!("{id}.still")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // Another node's key (a copied directory without its key) reads nothing.
        let other = tmp("seal-other");
        let o = EvidenceStore::open(&other, 72.0, 100).unwrap();
        std::fs::copy(
            d.join("evidence").join(format!("{id}.still")),
            other.join("evidence").join(format!("{id}.still")),
        )
        .unwrap();
        assert!(matches!(o.read(&id, Part::Still), Err(EvidenceError::Sealed { .. })));
        // A part renamed to another id or part does not decrypt either.
        let id2 = EvidenceId::random();
        std::fs::copy(
            d.join("evidence").join(format!("{id}.still")),
            d.join("evidence").join(format!("{id2}.still")),
        )
        .unwrap();
        assert!(matches!(s.read(&id2, Part::Still), Err(EvidenceError::Sealed { .. })));
        std::fs::copy(
            d.join("evidence").join(format!("{id}.still")),
            d.join("evidence").join(format!("{id}.clip")),
        )
        .unwrap();
        assert!(matches!(s.read(&id, Part::Clip), Err(EvidenceError::Sealed { .. })));
        assert_eq!(s.read(&EvidenceId::random(), Part::Still).unwrap(), None);
        // The same key after a restart.
        let again = EvidenceStore::open(&d, 72.0, 100).unwrap();
        assert_eq!(again.read(&id, Part::Still).unwrap().unwrap(), JPEG);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn deleted_after_the_retention_and_oldest_first_over_the_cap() {
        let d = tmp("prune");
        // One megabyte of cap, three hours of retention; the clock is ours.
        let s = EvidenceStore::open(&d, 3.0, 1).unwrap();
        let hour = 3_600_000;
        let part = vec![7u8; 300 * 1024];
        let ids: Vec<EvidenceId> = (0..3).map(|_| EvidenceId::random()).collect();
        for (i, id) in ids.iter().enumerate() {
            let at = i as i64 * hour;
            assert_eq!(s.put(&meta(id, at), &part, None, at).unwrap(), Pruned::default());
        }
        assert_eq!(s.usage().stills, 3);
        // A fourth pushes past 1 MiB: the oldest goes, not the newest.
        let id3 = EvidenceId::random();
        let p = s.put(&meta(&id3, 3 * hour), &part, Some(&part[..1]), 3 * hour).unwrap();
        assert_eq!(
            p,
            Pruned {
                expired: 0,
                over_cap: 1
            }
        );
        assert!(s.meta(&ids[0]).is_none() && s.read(&ids[0], Part::Still).unwrap().is_none());
        assert!(s.meta(&id3).is_some());
        assert_eq!(
            s.usage(),
            Usage {
                stills: 3,
                clips: 1,
                bytes: 3 * 300 * 1024 + 1
            }
        );
        // Just inside the retention nothing goes; just past it, what is older than 3 h does.
        assert_eq!(s.prune(4 * hour), Pruned::default());
        assert_eq!(
            s.prune(4 * hour + 1),
            Pruned {
                expired: 1,
                over_cap: 0
            }
        );
        assert!(s.meta(&ids[1]).is_none());
        assert_eq!(
            s.prune(7 * hour),
            Pruned {
                expired: 2,
                over_cap: 0
            }
        );
        assert_eq!(s.usage(), Usage::default());
        assert_eq!(std::fs::read_dir(d.join("evidence")).unwrap().count(), 0);
        // Strays (a write cut short) go once they are an hour old, by the clock given.
        std::fs::write(d.join("evidence").join(format!("{}.still", EvidenceId::random())), b"x").unwrap();
        std::fs::write(d.join("evidence").join("abc.tmp"), b"x").unwrap();
        s.prune(now_ms() + 30 * 60_000);
        assert_eq!(std::fs::read_dir(d.join("evidence")).unwrap().count(), 2);
        s.prune(now_ms() + 2 * hour);
        assert_eq!(std::fs::read_dir(d.join("evidence")).unwrap().count(), 0);
        // Too large to keep: refused, nothing written.
        let big = vec![0u8; 2 * 1024 * 1024];
        assert!(matches!(
            s.put(&meta(&EvidenceId::random(), 0), &big, None, 0),
            Err(EvidenceError::TooLarge { .. })
        ));
        assert_eq!(std::fs::read_dir(d.join("evidence")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
