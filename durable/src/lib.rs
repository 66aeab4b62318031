//! What makes a write survive losing the page cache (a kernel crash, a pulled plug), for the stores
//! that acknowledge writes as durable: the mesh log, HQ's embedded store, the uplink's outbox and the
//! files they keep beside them.
//!
//! sled 0.34's `flush` ends with `sync_file_range` on Linux. That writes the data's pages to the
//! device but neither the file's size nor the device's volatile cache, so a log that grew may come
//! back shorter after the power goes. sled also writes a value or node too large for its segments
//! as a file of its own under `blobs/` and never syncs it or its directory. [`SledSync::sync`], called
//! after each flush, fsyncs what sled did not; fsync acts on the file, whichever descriptor asks.
//! It costs about 0.1 ms per commit on this project's reference machine, against 4–5 ms for a batch
//! of 500 records: acknowledged writes are batched, so durability costs little.

#[cfg(feature = "lossyfs")]
pub mod lossyfs;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The files sled keeps in its directory.
const SLED_LOG: &str = "db";
const SLED_CONF: &str = "conf";
const SLED_BLOBS: &str = "blobs";

/// Syncs a sled database's files after its own flush. One per open database.
pub struct SledSync {
    dir: PathBuf,
    log: File,
    /// Blob files synced already, with the length they had: one listed while sled was still
    /// writing it is synced again once it has grown.
    blobs: HashMap<OsString, u64>,
}

impl SledSync {
    /// For the database sled has opened in `dir`. Syncs what its creation wrote: the directory's own
    /// entry, the configuration, and the log file.
    pub fn open(dir: &Path) -> io::Result<SledSync> {
        let log = File::open(dir.join(SLED_LOG))?;
        let mut s = SledSync {
            dir: dir.to_path_buf(),
            log,
            blobs: HashMap::new(),
        };
        if let Ok(conf) = File::open(dir.join(SLED_CONF)) {
            conf.sync_all()?;
        }
        s.sync()?;
        sync_dir(dir)?;
        // Each directory's entry lives in its parent: a data directory made just now (HQ's first
        // start makes `<data>/hq.db` and `<data>` itself) is lost with the power unless every
        // directory above it is synced too. The parent must sync; further up, a directory this user
        // may not read is left to whoever made it.
        let absolute = std::path::absolute(dir)?;
        for (i, up) in absolute.ancestors().skip(1).enumerate() {
            match sync_dir(up) {
                Err(e) if i == 0 => return Err(e),
                _ => {}
            }
        }
        Ok(s)
    }

    /// Makes everything sled has flushed durable: new blob files and their directory, then the log.
    pub fn sync(&mut self) -> io::Result<()> {
        let blobs = self.dir.join(SLED_BLOBS);
        let mut present = HashMap::new();
        let mut added = false;
        match std::fs::read_dir(&blobs) {
            Ok(entries) => {
                for e in entries {
                    let name = e?.file_name();
                    let f = match File::open(blobs.join(&name)) {
                        Ok(f) => f,
                        // sled removed it meanwhile (a blob replaced by a newer value).
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    let len = f.metadata()?.len();
                    if self.blobs.get(&name) != Some(&len) {
                        f.sync_all()?;
                        added = true;
                    }
                    present.insert(name, len);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if added || present.len() != self.blobs.len() {
            sync_dir(&blobs)?;
        }
        self.blobs = present;
        self.log.sync_data()
    }
}

/// Makes a directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` whole or not at all, durably: written to `tmp` (created with
/// `mode`), synced, renamed over `path`, and the rename synced. The error names the file that failed.
pub fn replace_file(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), (PathBuf, io::Error)> {
    use std::os::unix::fs::OpenOptionsExt;
    fn on(p: &Path) -> impl FnOnce(io::Error) -> (PathBuf, io::Error) + '_ {
        move |e| (p.to_path_buf(), e)
    }
    // A leftover temporary file (a crash mid-write) goes first: created afresh, it gets `mode`, and
    // O_EXCL refuses to follow a link someone put there.
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((tmp.to_path_buf(), e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(on(tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(on(tmp))?;
    std::fs::rename(tmp, path).map_err(on(path))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent).map_err(on(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lpmesh-durable-{tag}-{}-{}", std::process::id(), line!()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn syncs_a_sled_database_and_follows_its_blob_files() {
        let d = scratch("sled");
        let db = sled::open(d.join("db1")).unwrap();
        let mut s = SledSync::open(&d.join("db1")).unwrap();
        db.insert(b"small", &b"x"[..]).unwrap();
        db.flush().unwrap();
        s.sync().unwrap();
        // Larger than a quarter of sled's 512 KiB segments: written as a blob file.
        db.insert(b"large", vec![7u8; 300 * 1024]).unwrap();
        db.flush().unwrap();
        s.sync().unwrap();
        assert!(!s.blobs.is_empty(), "the blob file was seen and synced");
        db.remove(b"large").unwrap();
        db.flush().unwrap();
        s.sync().unwrap();
        drop(db);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_database_is_an_error_not_a_new_file() {
        let d = scratch("missing");
        assert!(SledSync::open(&d.join("nothing-here")).is_err());
        assert!(!d.join("nothing-here").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replaced_whole_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("replace");
        let (p, t) = (d.join("f"), d.join("f.tmp"));
        replace_file(&p, &t, b"one", 0o600).unwrap();
        // A leftover temporary file with wider permissions, or a link in its place: neither is used.
        std::fs::write(&t, b"left over").unwrap();
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_file(&p, &t, b"two", 0o600).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), &t).unwrap();
        replace_file(&p, &t, b"two", 0o600).unwrap();
        assert!(!d.join("elsewhere").exists(), "the link was not followed");
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!t.exists());
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (e, _) = replace_file(&p, &d.join("no/such/dir.tmp"), b"x", 0o600).unwrap_err();
        assert!(
            e.ends_with("no/such/dir.tmp"),
            "the error names the file: {}",
            e.display()
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"two", "a failed write leaves the old file");
        let _ = std::fs::remove_dir_all(&d);
    }
}
