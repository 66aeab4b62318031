//! The uplink's outbox on disk: per period, the version vector HQ said it stored.
//!
//! What HQ acknowledged is written and made durable (sled's flush, then [`SledSync`]) before the
//! uplink counts the period as done or reports the sync: a node that loses power after HQ's answer
//! may send a period again (HQ takes a repeat as a no-op), but never counts one HQ did not confirm.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lpmesh_durable::SledSync;
use lpmesh_hq::vv::VersionVector;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Db { path: PathBuf, source: sled::Error },
    #[error("outbox {path}: cannot make it durable: {source}")]
    Sync { path: PathBuf, source: std::io::Error },
    #[error("outbox {path}: the commit did not finish: {source}")]
    Task {
        path: PathBuf,
        source: tokio::task::JoinError,
    },
    #[error("outbox {path}: cannot encode an entry: {source}")]
    Encode { path: PathBuf, source: serde_json::Error },
}

#[derive(Serialize, Deserialize)]
struct Done {
    hq_vv: VersionVector,
    acked_ms: i64,
}

/// Cheap to clone: the commit runs on a blocking thread.
#[derive(Clone)]
pub struct Outbox {
    db: sled::Db,
    sync: Arc<Mutex<SledSync>>,
    path: PathBuf,
}

/// Periods sort by their key: the sign bit flipped, big-endian.
fn period_key(p: i64) -> [u8; 8] {
    ((p as u64) ^ (1 << 63)).to_be_bytes()
}

fn period_of(k: &[u8]) -> Option<i64> {
    let k = <[u8; 8]>::try_from(k).ok()?;
    Some((u64::from_be_bytes(k) ^ (1 << 63)) as i64)
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`, with what HQ acknowledged so far.
    pub fn open(path: &Path) -> Result<(Outbox, BTreeMap<i64, VersionVector>), OutboxError> {
        let db_err = |source| OutboxError::Db {
            path: path.to_path_buf(),
            source,
        };
        let db = sled::open(path).map_err(db_err)?;
        let sync = SledSync::open(path).map_err(|source| OutboxError::Sync {
            path: path.to_path_buf(),
            source,
        })?;
        let mut done = BTreeMap::new();
        for kv in db.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let Some(p) = period_of(&k) else {
                continue;
            };
            match serde_json::from_slice::<Done>(&v) {
                Ok(d) => {
                    done.insert(p, d.hq_vv);
                }
                // Forgetting what HQ acknowledged only costs a re-send, which HQ takes as a no-op.
                Err(e) => {
                    tracing::warn!(period = p, error = %e, "unreadable outbox entry; the period will be sent again")
                }
            }
        }
        let outbox = Outbox {
            db,
            sync: Arc::new(Mutex::new(sync)),
            path: path.to_path_buf(),
        };
        Ok((outbox, done))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes HQ's acknowledgement of `period`; durable only after [`Outbox::commit`].
    pub fn put(&self, period: i64, hq_vv: &VersionVector, acked_ms: i64) -> Result<(), OutboxError> {
        let entry = Done {
            hq_vv: hq_vv.clone(),
            acked_ms,
        };
        let bytes = serde_json::to_vec(&entry).map_err(|source| OutboxError::Encode {
            path: self.path.clone(),
            source,
        })?;
        self.db
            .insert(period_key(period), bytes)
            .map_err(|source| OutboxError::Db {
                path: self.path.clone(),
                source,
            })?;
        Ok(())
    }

    /// Forgets the periods before `period` (the log's retention dropped them), but those in `keep`.
    pub fn forget_before(&self, period: i64, keep: &BTreeSet<i64>) -> Result<usize, OutboxError> {
        let mut n = 0;
        for k in self.db.range(..period_key(period)).keys() {
            let k = k.map_err(|source| OutboxError::Db {
                path: self.path.clone(),
                source,
            })?;
            if period_of(&k).is_some_and(|p| keep.contains(&p)) {
                continue;
            }
            self.db.remove(k).map_err(|source| OutboxError::Db {
                path: self.path.clone(),
                source,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// Makes everything put so far durable: sled's flush, then the fsyncs sled leaves out.
    pub fn commit_blocking(&self) -> Result<(), OutboxError> {
        self.db.flush().map_err(|source| OutboxError::Db {
            path: self.path.clone(),
            source,
        })?;
        let mut sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        sync.sync().map_err(|source| OutboxError::Sync {
            path: self.path.clone(),
            source,
        })
    }

    /// [`Outbox::commit_blocking`] off the async threads.
    pub async fn commit(&self) -> Result<(), OutboxError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.commit_blocking())
            .await
            .map_err(|source| OutboxError::Task {
                path: self.path.clone(),
                source,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lpmesh_durable::lossyfs::{self, LossyFs};
    use std::time::{Duration, Instant};

    /// Set in the writer's environment: the mount's directory.
    const CHILD_ENV: &str = "LPMESH_OUTBOX_POWER_CUT_CHILD";

    fn vv(period: i64) -> VersionVector {
        VersionVector(
            [("node-a".to_string(), period as u64 + 1), ("node-b".to_string(), 7)]
                .into_iter()
                .collect(),
        )
    }

    fn open(dir: &Path) -> (Outbox, BTreeMap<i64, VersionVector>) {
        // sled lets go of its lock a moment after the previous process's last handle.
        let t = Instant::now();
        loop {
            match Outbox::open(&dir.join("uplink")) {
                Ok(o) => return o,
                Err(e) if t.elapsed() > Duration::from_secs(10) => {
                    panic!("the outbox does not open after a power cut: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    #[test]
    fn acknowledgements_read_back_in_order_and_old_ones_are_forgotten() {
        let dir = std::env::temp_dir().join(format!("lpmesh-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (o, done) = open(&dir);
            assert!(done.is_empty());
            for p in [-3, 5, 0, 1_000_000] {
                o.put(p, &vv(p), 1).unwrap();
            }
            o.put(5, &vv(50), 2).unwrap();
            o.commit_blocking().unwrap();
        }
        let (o, done) = open(&dir);
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![-3, 0, 5, 1_000_000]);
        assert_eq!(done[&5], vv(50), "the latest acknowledgement of a period wins");
        assert_eq!(o.forget_before(5, &BTreeSet::from([-3])).unwrap(), 1);
        o.commit_blocking().unwrap();
        drop(o);
        let (_, done) = open(&dir);
        assert_eq!(
            done.keys().copied().collect::<Vec<_>>(),
            vec![-3, 5, 1_000_000],
            "a waiting period is kept"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Not a test of its own: the writer the power-cut test starts and kills. It returns at once
    /// unless that test started it.
    #[test]
    fn outbox_power_cut_child() {
        let Some(mnt) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let (o, done) = open(Path::new(&mnt));
        let mut next = done.keys().next_back().map_or(0, |p| p + 1);
        loop {
            // As the uplink commits: the acknowledgements of one step (up to 16 periods) together.
            let k = 1 + (rand::random::<u64>() % 16) as i64;
            for p in next..next + k {
                o.put(p, &vv(p), 1).unwrap();
            }
            o.commit_blocking().unwrap();
            next += k;
            // Printed only once the commit returned: what the uplink then counts as done.
            println!("acked {}", next - 1);
        }
    }

    #[test]
    fn acknowledgements_survive_repeated_power_cuts() {
        let dir = std::env::temp_dir().join(format!("lpmesh-outbox-power-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut fs = LossyFs::mount(&mnt).unwrap_or_else(|e| {
            panic!(
                "cannot mount the test filesystem at {} (needs /dev/fuse and root, or fusermount3): {e}",
                mnt.display()
            )
        });
        let mut acked_before = None;
        for round in 0..8u64 {
            let run = Duration::from_millis(150 + 100 * ((round * 5) % 9));
            let acked = lossyfs::run_writer("uplink::outbox::tests::outbox_power_cut_child", CHILD_ENV, &mnt, run)
                .unwrap_or_else(|e| panic!("round {round}: {e}"))
                .into_iter()
                .max()
                .unwrap_or(0) as i64;
            assert!(
                acked_before.is_none_or(|a| acked > a),
                "round {round}: nothing new was acknowledged"
            );
            acked_before = Some(acked);
            fs.cut_power().unwrap();
            let (syncs, lost) = fs.counts();
            let (_, done) = open(&mnt);
            for p in 0..=acked {
                assert_eq!(
                    done.get(&p),
                    Some(&vv(p)),
                    "round {round}: periods up to {acked} were acknowledged; period {p} did not survive the power cut as written"
                );
            }
            println!(
                "round {round}: periods 0..={acked} acknowledged, {} held after the cut ({lost} bytes lost, {syncs} fsyncs so far)",
                done.len()
            );
        }
        drop(fs);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
