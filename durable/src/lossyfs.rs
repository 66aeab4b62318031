//! A filesystem that loses what was not fsynced when its "power" is cut, for tests (feature
//! `lossyfs`; the approach of Jepsen's LazyFS).
//!
//! It lives in memory behind FUSE. Each file keeps the bytes written to it and the bytes it held at
//! its last `fsync`/`fdatasync`; each directory keeps its entries and those it held at its last
//! `fsync`. [`LossyFs::cut_power`] puts every file and directory back to its synced state, as a
//! machine that lost power finds its disk: a file created but never synced is gone unless its
//! directory was synced, and a file's unsynced writes (what `sync_file_range` or the page cache
//! held) are gone. Nothing is kept half-written: a cut loses all of an unsynced write or none.
//!
//! Data is served with direct I/O and attributes are never cached, so the kernel keeps no copy of
//! its own; the tests still unmount around a cut ([`LossyFs::remount`]) so that no process holds a
//! file across it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

const ROOT: u64 = 1;
/// Attributes and entries are never cached by the kernel: after a cut they change under it.
const TTL: Duration = Duration::ZERO;
/// `FOPEN_DIRECT_IO`: reads and writes go to the filesystem, not the page cache.
const DIRECT_IO: u32 = 1;

enum Kind {
    File {
        data: Vec<u8>,
        synced: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        synced: BTreeMap<OsString, u64>,
    },
}

struct Inode {
    kind: Kind,
    mode: u16,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next: u64,
    /// fsync and fsyncdir calls, and the bytes the last cut threw away.
    syncs: u64,
    lost_bytes: u64,
}

impl State {
    fn new() -> State {
        let mut s = State {
            next: ROOT + 1,
            ..State::default()
        };
        s.inodes.insert(
            ROOT,
            Inode {
                kind: Kind::Dir {
                    entries: BTreeMap::new(),
                    synced: BTreeMap::new(),
                },
                mode: 0o755,
            },
        );
        s
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.inodes.get(&ino)?;
        let (kind, size) = match &n.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64),
            Kind::Dir { entries, .. } => (FileType::Directory, entries.len() as u64),
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm: n.mode,
            nlink: 1,
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entries(&mut self, dir: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match &mut self.inodes.get_mut(&dir)?.kind {
            Kind::Dir { entries, .. } => Some(entries),
            Kind::File { .. } => None,
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        self.entries(parent)?.get(name).copied()
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, mode: u16) -> Result<u64, i32> {
        let ino = self.next;
        let entries = self.entries(parent).ok_or(libc::ENOTDIR)?;
        if entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        entries.insert(name.to_os_string(), ino);
        self.next += 1;
        self.inodes.insert(ino, Inode { kind, mode });
        Ok(ino)
    }

    fn data(&mut self, ino: u64) -> Result<&mut Vec<u8>, i32> {
        match &mut self.inodes.get_mut(&ino).ok_or(libc::ENOENT)?.kind {
            Kind::File { data, .. } => Ok(data),
            Kind::Dir { .. } => Err(libc::EISDIR),
        }
    }

    fn cut(&mut self) {
        let mut lost = 0u64;
        for n in self.inodes.values_mut() {
            match &mut n.kind {
                Kind::File { data, synced } => {
                    if data != synced {
                        let changed = data.iter().zip(synced.iter()).filter(|(a, b)| a != b).count();
                        lost += (changed + data.len().abs_diff(synced.len())) as u64;
                    }
                    *data = synced.clone();
                }
                Kind::Dir { entries, synced } => *entries = synced.clone(),
            }
        }
        self.lost_bytes = lost;
    }
}

struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_file(&self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, i32> {
        let mut s = self.state();
        let file = Kind::File {
            data: Vec::new(),
            synced: Vec::new(),
        };
        let ino = s.add(parent, name, file, (mode & 0o7777) as u16)?;
        s.attr(ino).ok_or(libc::EIO)
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        match s.lookup(parent, name).and_then(|ino| s.attr(ino)) {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        if let Some(size) = size {
            match s.data(ino) {
                Ok(d) => d.resize(size as usize, 0),
                Err(e) => return reply.error(e),
            }
        }
        if let Some(m) = mode {
            if let Some(n) = s.inodes.get_mut(&ino) {
                n.mode = (m & 0o7777) as u16;
            }
        }
        match s.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.new_file(parent, name, mode) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let mut s = self.state();
        let dir = Kind::Dir {
            entries: BTreeMap::new(),
            synced: BTreeMap::new(),
        };
        match s
            .add(parent, name, dir, (mode & 0o7777) as u16)
            .and_then(|ino| s.attr(ino).ok_or(libc::EIO))
        {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.state().entries(parent).and_then(|e| e.remove(name)) {
            Some(_) => reply.ok(),
            None => reply.error(libc::ENOENT),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let Some(ino) = s.lookup(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        if s.entries(ino).is_some_and(|e| !e.is_empty()) {
            return reply.error(libc::ENOTEMPTY);
        }
        s.entries(parent).map(|e| e.remove(name));
        reply.ok();
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        _flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let Some(ino) = s.entries(parent).and_then(|e| e.remove(name)) else {
            return reply.error(libc::ENOENT);
        };
        match s.entries(newparent) {
            Some(e) => {
                e.insert(newname.to_os_string(), ino);
                reply.ok();
            }
            None => reply.error(libc::ENOTDIR),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.state().inodes.contains_key(&ino) {
            true => reply.opened(0, DIRECT_IO),
            false => reply.error(libc::ENOENT),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.new_file(parent, name, mode) {
            Ok(a) => reply.created(&TTL, &a, 0, 0, DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let mut s = self.state();
        match s.data(ino) {
            Ok(d) => {
                let start = (offset.max(0) as usize).min(d.len());
                let end = (start + size as usize).min(d.len());
                reply.data(&d[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        match s.data(ino) {
            Ok(d) => {
                let start = offset.max(0) as usize;
                if d.len() < start + data.len() {
                    d.resize(start + data.len(), 0);
                }
                d[start..start + data.len()].copy_from_slice(data);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut s = self.state();
        s.syncs += 1;
        match s.inodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, synced }) => {
                *synced = data.clone();
                reply.ok();
            }
            Some(Kind::Dir { entries, synced }) => {
                *synced = entries.clone();
                reply.ok();
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.state().inodes.contains_key(&ino) {
            true => reply.opened(0, 0),
            false => reply.error(libc::ENOENT),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let mut s = self.state();
        let Some(entries) = s.entries(ino).map(|e| e.clone()) else {
            return reply.error(libc::ENOTDIR);
        };
        let mut all = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ROOT, FileType::Directory, "..".into()),
        ];
        for (name, child) in entries {
            let kind = match s.inodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((child, kind, name));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&mut self, req: &Request<'_>, ino: u64, fh: u64, datasync: bool, reply: ReplyEmpty) {
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// A mounted lossy filesystem. Unmounted when dropped.
pub struct LossyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl LossyFs {
    /// Mounts an empty filesystem at `mountpoint` (an existing empty directory). Needs `/dev/fuse`
    /// and the right to mount (root, or `fusermount3` from Debian's `fuse3`).
    pub fn mount(mountpoint: &Path) -> io::Result<LossyFs> {
        let mut fs = LossyFs {
            state: Arc::new(Mutex::new(State::new())),
            mountpoint: mountpoint.to_path_buf(),
            session: None,
        };
        fs.remount()?;
        Ok(fs)
    }

    /// Unmounts (when mounted) and mounts the same contents again: the kernel forgets what it knew.
    pub fn remount(&mut self) -> io::Result<()> {
        drop(self.session.take());
        let options = [
            MountOption::FSName("lpmesh-lossyfs".into()),
            MountOption::DefaultPermissions,
        ];
        self.session = Some(fuser::spawn_mount2(Fs(self.state.clone()), &self.mountpoint, &options)?);
        Ok(())
    }

    /// The power goes: everything not fsynced is lost, and the filesystem is mounted again. Stop the
    /// processes using it first (a killed process is what a power cut leaves).
    pub fn cut_power(&mut self) -> io::Result<()> {
        drop(self.session.take());
        self.state.lock().unwrap_or_else(|p| p.into_inner()).cut();
        self.remount()
    }

    /// fsync calls seen so far, and the bytes the last cut threw away.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.syncs, s.lost_bytes)
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

/// One writer between two power cuts, for the cut tests. The writer is a test of the calling test
/// binary (`child_test`, which must return at once unless `env` is set) that prints `acked N` after
/// each write it would acknowledge; it runs with `env` set to `value` until it has acknowledged a
/// first write and then for `run`, and is killed (SIGKILL: it stops mid-write, as a machine does).
/// Returns every N it printed, in order, those printed just before the kill included.
pub fn run_writer(child_test: &str, env: &str, value: &Path, run: Duration) -> io::Result<Vec<u64>> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", child_test, "--nocapture", "--test-threads", "1"])
        .env(env, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the writer's output is not piped"))?;
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("acked ").and_then(|s| s.parse().ok()) {
                let _ = tx.send(n);
            }
        }
    });
    // The first write comes once the store has opened (recovery, and the previous writer's lock let go).
    let first = rx.recv_timeout(Duration::from_secs(60));
    let mut acked = Vec::new();
    if let Ok(n) = first {
        acked.push(n);
        let t = Instant::now();
        while t.elapsed() < run {
            if let Ok(n) = rx.recv_timeout(Duration::from_millis(20)) {
                acked.push(n);
            }
        }
    }
    // A writer that stopped by itself (a panic, a wrong test name) did not run until the cut.
    if let Some(status) = child.try_wait()? {
        let _ = reader.join();
        return Err(io::Error::other(format!(
            "the writer {child_test} stopped by itself ({status}) after acknowledging {}",
            acked.last().map_or("nothing".into(), |n| n.to_string())
        )));
    }
    child.kill()?;
    child.wait()?;
    let _ = reader.join();
    // Acknowledgements printed before the kill but read after it count too.
    acked.extend(rx.try_iter());
    if acked.is_empty() {
        return Err(io::Error::other(format!(
            "the writer {child_test} acknowledged nothing"
        )));
    }
    Ok(acked)
}
