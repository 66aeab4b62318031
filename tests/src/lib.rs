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

/// A plain HTTP GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Parses Prometheus text: every sample line is `name{labels} value`; returns (name+labels, value).
pub fn prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l:?}"));
            let name_ok = series
                .split('{')
                .next()
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            assert!(name_ok, "bad metric name in {l:?}");
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_string(), v)
        })
        .collect()
}

/// The value of one series (name with labels, exactly as printed) in parsed Prometheus samples.
pub fn metric(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}
