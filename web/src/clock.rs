//! The wall clock as every service stamps it: Unix milliseconds.

/// Now, in Unix milliseconds (negative before 1970, which a misset clock can give).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or_else(|e| -(e.duration().as_millis() as i64), |d| d.as_millis() as i64)
}

/// A free TCP port on loopback, for the services the demo, the benchmarks and the tests start
/// (another process may take it before it is bound again: good enough on one machine).
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_this_code_was_written_and_ports_are_nonzero() {
        assert!(super::now_ms() > 1_790_000_000_000);
        assert_ne!(super::free_loopback_port().unwrap(), 0);
    }
}
