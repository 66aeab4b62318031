//! Helpers for the end-to-end tests in `tests/tests/`: finding the `lpmesh` binary and the fixtures
//! that `scripts/setup.sh` installs.

use std::path::PathBuf;
use std::process::Command;

/// The `lpmesh` binary of the same build profile as the running test.
pub fn lpmesh_path() -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/lpmesh
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target directory");
    let bin = dir.join("lpmesh");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p lpmesh-node` first",
        bin.display()
    );
    bin
}

pub fn lpmesh() -> Command {
    let mut c = Command::new(lpmesh_path());
    c.env_remove("LPMESH_LOG");
    c
}

/// The cache `models/build.py` fills: the node's own rule, so tests and node never disagree.
pub use lpmesh_node::config::cache_dir;

pub fn footage() -> PathBuf {
    let p = cache_dir().join("data").join("vtest.avi");
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    p
}

/// A free TCP port on loopback (for the nodes, UIs and HQ a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// SIGINT, as Ctrl-C: the process stops in order and must exit cleanly within 20 s.
pub fn interrupt(child: &mut std::process::Child, what: &str) {
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(20) {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("{what} did not stop within 20 s of SIGINT");
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("lpmesh-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
