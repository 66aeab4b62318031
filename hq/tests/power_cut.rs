//! HQ's embedded store through repeated power cuts: a process stores summaries and says which
//! uploads were acknowledged; it is killed, everything not fsynced is thrown away
//! (`lpmesh_durable::lossyfs`), and the store is opened again. Every acknowledged summary must be
//! there, as stored, and the store must open and list cleanly; the next round stores on top.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpmesh_durable::lossyfs::{self, LossyFs};
use lpmesh_hq::store::{Embedded, Filter};
use lpmesh_hq::summary::Summary;
use lpmesh_hq::vv::VersionVector;

const STORE: &str = "shop-power";
const HOUR_MS: i64 = 3_600_000;
/// Set in the child's environment: the mount's directory.
const CHILD_ENV: &str = "LPMESH_HQ_POWER_CUT_CHILD";

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn summary(period: i64) -> Summary {
    Summary {
        store: STORE.into(),
        period_start_ms: period * HOUR_MS,
        period_secs: 3600,
        vv: VersionVector([("node-a".to_string(), period as u64 + 1)].into_iter().collect()),
        ..Summary::default()
    }
}

fn open(mnt: &Path) -> Embedded {
    // sled lets go of its lock a moment after the previous process's last handle.
    let t = Instant::now();
    loop {
        match Embedded::open(&mnt.join("hq")) {
            Ok(db) => return db,
            Err(e) if t.elapsed() > Duration::from_secs(10) => {
                panic!("HQ's store does not open after a power cut: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Not a test of its own: the storing process the power-cut test starts and kills. It returns at
/// once unless that test started it.
#[test]
fn hq_power_cut_child() {
    let Some(mnt) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let db = open(Path::new(&mnt));
    let next = db
        .summaries(&Filter {
            store: Some(STORE.into()),
            ..Filter::default()
        })
        .unwrap()
        .len() as i64;
    for period in next.. {
        db.upsert(&summary(period), 1_000).unwrap();
        // Printed only once upsert returned: what HQ acknowledges to the store.
        println!("acked {period}");
    }
}

#[test]
fn acknowledged_summaries_survive_repeated_power_cuts() {
    let dir = Dir(std::env::temp_dir().join(format!("lpmesh-hq-power-cut-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut fs = LossyFs::mount(&mnt).unwrap_or_else(|e| {
        panic!(
            "cannot mount the test filesystem at {} (needs /dev/fuse and root, or fusermount3): {e}",
            mnt.display()
        )
    });
    let rounds = 8;
    let mut acked: Option<i64> = None;
    for round in 0..rounds {
        let run = Duration::from_millis(150 + 100 * ((round * 5) % 9) as u64);
        let last = lossyfs::run_writer("hq_power_cut_child", CHILD_ENV, &mnt, run)
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .into_iter()
            .max()
            .unwrap_or(0) as i64;
        assert!(
            acked.is_none_or(|a| last > a),
            "round {round}: nothing new was acknowledged"
        );
        acked = Some(last);
        fs.cut_power().unwrap();
        let (syncs, lost) = fs.counts();
        let db = open(&mnt);
        let held = db
            .summaries(&Filter {
                store: Some(STORE.into()),
                ..Filter::default()
            })
            .unwrap_or_else(|e| panic!("round {round}: HQ's store is corrupt after the cut: {e}"));
        assert!(
            held.len() as i64 > last,
            "round {round}: summaries up to period {last} were acknowledged, {} survived the power cut",
            held.len()
        );
        for (i, s) in held.iter().enumerate() {
            assert_eq!(
                s.summary,
                summary(i as i64),
                "round {round}: period {i} is stored as it came"
            );
        }
        println!(
            "round {round}: periods 0..={last} acknowledged, {} held after the cut ({lost} bytes lost, {syncs} fsyncs so far)",
            held.len()
        );
    }
}
