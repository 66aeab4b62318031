//! Loopback ports and a bare HTTP client.

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

/// A plain HTTP GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).expect("an HTTP answer")
}

/// [`http_get`], or the I/O error (a process killed mid-answer resets the connection).
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    // A port held by a listener that never answers (a test's held port, a stopped process's
    // backlog) must not hang the test that asks it.
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_held_port_is_taken_until_released() {
        let mut held = super::HeldPort::new();
        assert!(std::net::TcpListener::bind(("127.0.0.1", held.port())).is_err());
        held.release();
        assert!(std::net::TcpListener::bind(("127.0.0.1", held.port())).is_ok());
    }
}
