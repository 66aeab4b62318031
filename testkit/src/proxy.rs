//! A TCP proxy that fails on command.

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
