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

/// Starts `lpmesh ARGS` at info level, its stderr to `log` and its stdout beside it (`.out`).
pub fn spawn(args: &[&str], log: &std::path::Path) -> std::process::Child {
    use std::process::Stdio;
    lpmesh()
        .args(args)
        .env("LPMESH_LOG", "info")
        .stdout(Stdio::from(
            std::fs::File::create(log.with_extension("out")).expect("stdout log"),
        ))
        .stderr(Stdio::from(std::fs::File::create(log).expect("stderr log")))
        .spawn()
        .expect("run lpmesh")
}

/// A free TCP port on loopback (for the nodes, UIs and HQ a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A loopback port kept bound until `release`: a port from `free_port` is free only until anything
/// else binds port 0 (the test's own proxies and helper processes included), so a port a test will
/// hand to a process it starts later is held until just before that start.
pub struct HeldPort {
    port: u16,
    listener: Option<std::net::TcpListener>,
}

impl HeldPort {
    pub fn new() -> HeldPort {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("a bound address").port();
        HeldPort {
            port,
            listener: Some(listener),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Lets the port go, for the process about to bind it.
    pub fn release(&mut self) {
        self.listener = None;
    }
}

impl Default for HeldPort {
    fn default() -> Self {
        Self::new()
    }
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
    try_http_get(port, path).expect("an HTTP answer")
}

/// [`http_get`], or the I/O error (a process killed mid-answer resets the connection).
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
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

/// A TCP proxy for one link, made to fail on command: the fault injector of the partition and churn
/// tests, and the wire tap of the privacy test. Blocking cuts the open connections and refuses new
/// ones; delay holds every chunk; loss cuts a connection at a chunk with the given chance (what heavy
/// packet loss does to a TCP connection in the end). Threads per connection; they end with it.
pub struct FaultProxy {
    port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    blocked: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
    loss_per_mille: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<Vec<std::net::TcpStream>>,
    capture: std::sync::atomic::AtomicBool,
    captured: std::sync::Mutex<Vec<u8>>,
    bytes: std::sync::atomic::AtomicU64,
    cuts: std::sync::atomic::AtomicU64,
}

/// At most this much is kept by a capturing proxy.
const MAX_CAPTURE: usize = 256 << 20;

impl FaultProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub fn start(target: std::net::SocketAddr) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if st.blocked.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Ok(outbound) = std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))
                else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone()) {
                    let mut open = st.open.lock().unwrap_or_else(|p| p.into_inner());
                    open.retain(|s| s.peer_addr().is_ok());
                    open.push(a);
                    open.push(b);
                }
                for (from, to) in [(inbound.try_clone(), outbound.try_clone()), (Ok(outbound), Ok(inbound))] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let st = st.clone();
                        std::thread::spawn(move || pump(from, to, &st));
                    }
                }
            }
        });
        FaultProxy { port, state }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every open connection and refuses new ones (or lets them through again).
    pub fn block(&self, on: bool) {
        self.state.blocked.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            for s in self.state.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub fn set_delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// The chance, in thousandths, that a connection is cut at each chunk it carries.
    pub fn set_loss(&self, per_mille: u64) {
        self.state
            .loss_per_mille
            .store(per_mille, std::sync::atomic::Ordering::SeqCst);
    }

    /// Keeps a copy of every byte the link carries, both ways, from now on.
    pub fn capture(&self) {
        self.state.capture.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn captured(&self) -> Vec<u8> {
        self.state.captured.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bytes carried and connections cut by loss so far.
    pub fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.state.bytes.load(SeqCst), self.state.cuts.load(SeqCst))
    }
}

fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, st: &ProxyState) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering::SeqCst;
    let mut buf = vec![0u8; 16 * 1024];
    // Per-connection randomness without a dependency: the clock's nanoseconds, then xorshift.
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64 | 1);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if st.blocked.load(SeqCst) {
            break;
        }
        let delay = st.delay_ms.load(SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 1000 < st.loss_per_mille.load(SeqCst) {
            st.cuts.fetch_add(1, SeqCst);
            break;
        }
        if st.capture.load(SeqCst) {
            let mut c = st.captured.lock().unwrap_or_else(|p| p.into_inner());
            if c.len() + n <= MAX_CAPTURE {
                c.extend_from_slice(&buf[..n]);
            }
        }
        st.bytes.fetch_add(n as u64, SeqCst);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
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

/// A small deterministic generator (xorshift), so a failing randomised run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
