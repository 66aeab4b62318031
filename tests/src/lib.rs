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
