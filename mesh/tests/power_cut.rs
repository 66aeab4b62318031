//! The mesh log through repeated power cuts: a process appends records and says which appends
//! returned (acknowledged as durable); it is killed, everything not fsynced is thrown away
//! (`lpmesh_durable::lossyfs`), and the log is opened again. Every acknowledged record must be there,
//! readable and verified, and the log must open (nothing corrupt); the next round appends on top.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libp2p_identity::Keypair;
use lpmesh_durable::lossyfs::{self, LossyFs};
use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::log::Log;
use lpmesh_mesh::record::{Origin, RecordKind};

const STORE: &str = "store-power";
/// Set in the child's environment: the directory with the key files and the mount.
const CHILD_ENV: &str = "LPMESH_POWER_CUT_CHILD";

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(dir: &Path) -> (Keypair, StoreSecret) {
    let key = Keypair::from_protobuf_encoding(&std::fs::read(dir.join("node.key")).unwrap()).unwrap();
    let secret = StoreSecret::parse(&std::fs::read_to_string(dir.join("store.key")).unwrap()).unwrap();
    (key, secret)
}

fn open(dir: &Path) -> Log {
    let (key, secret) = keys(dir);
    let path = dir.join("mnt").join("log");
    // sled lets go of its lock a moment after the last handle of the previous process is dropped.
    let t = Instant::now();
    loop {
        match Log::open(&path, STORE, key.clone(), secret.recipient()) {
            Err(lpmesh_mesh::log::LogError::Locked) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r.unwrap_or_else(|e| panic!("the log does not open after a power cut: {e}")),
        }
    }
}

/// Not a test of its own: the appending process the power-cut test starts and kills. It returns at
/// once unless that test started it.
#[test]
fn power_cut_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut log = open(&dir);
    let mut n: u64 = 0;
    loop {
        // Batches of 1 to 300 records, as a node's appends and a received burst come.
        let k = 1 + (rand::random::<u64>() % 300) as usize;
        let payloads: Vec<Vec<u8>> = (0..k)
            .map(|i| format!("record {}", n + i as u64).into_bytes())
            .collect();
        let items: Vec<(RecordKind, &[u8])> = payloads.iter().map(|p| (RecordKind::Event, p.as_slice())).collect();
        let appended = log.append_batch(&items, 1_000_000).unwrap();
        n += k as u64;
        // Printed only once append_batch returned: what a node acknowledges.
        println!("acked {}", appended.last().map_or(0, |r| r.seq));
    }
}

#[test]
fn acknowledged_appends_survive_repeated_power_cuts() {
    let dir = Dir(std::env::temp_dir().join(format!("lpmesh-power-cut-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let key = Keypair::generate_ed25519();
    std::fs::write(dir.0.join("node.key"), key.to_protobuf_encoding().unwrap()).unwrap();
    std::fs::write(dir.0.join("store.key"), StoreSecret::generate().expose()).unwrap();
    let origin = Origin::of(&key).unwrap();
    let mut fs = LossyFs::mount(&mnt).unwrap_or_else(|e| {
        panic!(
            "cannot mount the test filesystem at {} (needs /dev/fuse and root, or fusermount3): {e}",
            mnt.display()
        )
    });
    let rounds = 12;
    let mut acked_total = 0u64;
    let started = Instant::now();
    for round in 0..rounds {
        // The cut comes at a different moment each round, after 0.2 to 1.4 s of appends.
        let run = Duration::from_millis(200 + 100 * ((round * 7) % 13) as u64);
        let acked = lossyfs::run_writer("power_cut_child", CHILD_ENV, &dir.0, run)
            .unwrap_or_else(|e| panic!("round {round}: {e}"))
            .into_iter()
            .max()
            .unwrap_or(0);
        assert!(acked > acked_total, "round {round}: the child acknowledged nothing new");
        acked_total = acked;
        fs.cut_power().unwrap();
        let (syncs, lost) = fs.counts();
        let log = open(&dir.0);
        let held = log.version_vector().get(&origin).copied().unwrap_or(0);
        assert!(
            held >= acked,
            "round {round}: {acked} appends were acknowledged, {held} survived the power cut"
        );
        let records = log.range(&origin, 1, usize::MAX).unwrap();
        assert_eq!(records.len() as u64, held, "round {round}: every held seq is readable");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1, "round {round}: seqs are gap-free");
            r.verify(STORE)
                .unwrap_or_else(|e| panic!("round {round}: record {} is corrupt: {e}", r.seq));
        }
        println!(
            "round {round}: {acked} acknowledged, {held} held after the cut ({lost} bytes lost, {syncs} fsyncs so far)"
        );
        // What this check wrote on close is unsynced too: the next cut may take it, as it should.
        drop(log);
    }
    println!(
        "{rounds} power cuts, {acked_total} records acknowledged, all held ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
