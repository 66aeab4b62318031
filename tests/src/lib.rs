//! Helpers for the end-to-end tests in `tests/tests/`: finding the `lpmesh` binary and the fixtures
//! that `scripts/setup.sh` installs, running its commands, provisioning a store and its HQ. What is
//! not about lpmesh comes from the test kit, re-exported here.

use std::path::PathBuf;
use std::process::Command;

pub use lpmesh_testkit::{
    free_port, http_get, metric, now_ms, prometheus, try_http_get, ChildGuard, FaultProxy, HeldPort, Rng, TempDir,
};

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

/// Starts `lpmesh ARGS` at info level, stdout and stderr appended to `log`, so one log covers a
/// process started again and again (restart tests read what every run said); killed if the test
/// fails before it stops it.
pub fn spawn_appending(args: &[&str], log: &std::path::Path) -> ChildGuard {
    use std::process::Stdio;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let child = lpmesh()
        .args(args)
        .env("LPMESH_LOG", "info")
        .stdout(Stdio::from(f.try_clone().expect("log")))
        .stderr(Stdio::from(f))
        .spawn()
        .expect("run lpmesh");
    ChildGuard(child)
}

/// Starts `lpmesh ARGS` at info level, its stderr to `log` and its stdout beside it (`.out`); killed
/// if the test fails before it stops it.
pub fn spawn(args: &[&str], log: &std::path::Path) -> ChildGuard {
    use std::process::Stdio;
    let child = lpmesh()
        .args(args)
        .env("LPMESH_LOG", "info")
        .stdout(Stdio::from(
            std::fs::File::create(log.with_extension("out")).expect("stdout log"),
        ))
        .stderr(Stdio::from(std::fs::File::create(log).expect("stderr log")))
        .spawn()
        .expect("run lpmesh");
    ChildGuard(child)
}

/// The last `lines` lines of a process's log file, for a failure message.
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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

/// Runs `lpmesh ARGS` to completion; its stdout, or a failure with both outputs.
pub fn ok(args: &[&str]) -> String {
    let out = lpmesh().args(args).output().expect("run lpmesh");
    assert!(
        out.status.success(),
        "lpmesh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Enrols `joiner` into `member`'s store the way an installer sets up a store before its first node
/// runs: `lpmesh invite --serve` answers a one-time invitation, `lpmesh join` reads it from standard
/// input. Returns what `join` printed.
pub fn enrol(member: &std::path::Path, joiner: &std::path::Path) -> String {
    enrol_with(member, joiner, &[])
}

/// [`enrol`] with more arguments for `lpmesh invite` (`--priority N`).
pub fn enrol_with(member: &std::path::Path, joiner: &std::path::Path, invite_args: &[&str]) -> String {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let mut inviter = lpmesh()
        .args(["invite", "--data", &member.to_string_lossy(), "--serve", "127.0.0.1:0"])
        .args(invite_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lpmesh invite");
    let mut token = String::new();
    std::io::BufReader::new(inviter.stdout.take().expect("invite's stdout"))
        .read_line(&mut token)
        .expect("the invitation token");
    assert!(token.starts_with("lpmesh-invite-1."), "invite printed {token:?}");
    let mut join = lpmesh()
        .args(["join", "--data", &joiner.to_string_lossy()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lpmesh join");
    join.stdin
        .take()
        .expect("join's stdin")
        .write_all(token.as_bytes())
        .expect("token to join");
    let out = join.wait_with_output().expect("join finishes");
    let served = inviter.wait_with_output().expect("invite finishes");
    assert!(
        out.status.success() && served.status.success(),
        "join: {}{}\ninvite: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&served.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The recipient `lpmesh hq init` printed.
pub fn hq_recipient(init_output: &str) -> String {
    init_output
        .lines()
        .find_map(|l| l.strip_prefix("HQ recipient"))
        .map(|r| r.trim().to_string())
        .expect("lpmesh hq init prints the HQ recipient")
}

/// A node's `/metrics`, parsed, or `None` while nothing listens on `port` or it does not answer 200.
pub fn scrape(port: u16) -> Option<Vec<(String, f64)>> {
    let (status, body) = try_http_get(port, "/metrics").ok()?;
    (status == 200).then(|| prometheus(&body))
}

/// An HQ provisioned for a test the way an installer does it: its configuration written and `lpmesh
/// hq init` run (which makes its certificate and its recipient). Not started: the test decides when.
pub struct HqSetup {
    /// The configuration file, for `lpmesh hq --config`.
    pub config: String,
    /// What `lpmesh hq init` printed.
    pub init: String,
    /// The recipient the stores encrypt their summaries to.
    pub recipient: String,
    /// HQ's certificate, which the stores trust (`[hq] ca_cert`).
    pub cert: PathBuf,
    pub port: u16,
}

/// Provisions an HQ in `dir` (data in `dir/hq`, configuration `dir/hq.toml`) listening on `port`;
/// `extra` is appended to its configuration (`dashboard_listen`, `database_url`).
pub fn hq_setup(dir: &std::path::Path, port: u16, extra: &str) -> HqSetup {
    let data = dir.join("hq");
    let config = dir.join("hq.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{extra}",
            data.display()
        ),
    )
    .expect("write hq.toml");
    let config = config.to_string_lossy().to_string();
    let init = ok(&["hq", "init", "--config", &config]);
    HqSetup {
        recipient: hq_recipient(&init),
        init,
        config,
        cert: data.join("cert.pem"),
        port,
    }
}

impl HqSetup {
    /// Registers the store whose member node keeps its data in `member`, with the key `lpmesh
    /// store-key` prints there.
    pub fn register(&self, store: &str, member: &std::path::Path) {
        let key = ok(&["store-key", "--data", &member.to_string_lossy()]);
        assert!(key.starts_with("ed25519:"), "{key}");
        ok(&[
            "hq",
            "register-store",
            "--config",
            &self.config,
            "--store",
            store,
            "--key",
            key.trim(),
        ]);
    }
}
