//! Reading a request's body when the client may be hostile: a deadline for the head and for the body,
//! a size limit, and an answer the client can still read when it sends too much.

use axum::body::Body;

/// How long a request may take to send its head, and its body.
pub const HEADER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// How a body read by [`read_body`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// All of it came, or reading stopped past the drain limit.
    Complete,
    /// The body deadline passed first.
    Deadline,
    /// The connection broke off.
    Broken,
}

/// What [`read_body`] read.
pub struct BodyRead {
    /// The body's first `limit` bytes (all of it when `seen <= limit`).
    pub bytes: Vec<u8>,
    /// Bytes received; over `limit` means too large.
    pub seen: usize,
    pub end: BodyEnd,
}

/// Reads `body` within [`BODY_DEADLINE`], keeping up to `limit` bytes and reading on (thrown away) up
/// to `drain`: a client that trickles its body does not hold the connection.
pub async fn read_body(body: Body, limit: usize, drain: usize) -> BodyRead {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + BODY_DEADLINE;
    let end = loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break BodyEnd::Deadline,
            Ok(None) => break BodyEnd::Complete,
            Ok(Some(Err(_))) => break BodyEnd::Broken,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len();
                    if seen <= limit {
                        bytes.extend_from_slice(data);
                    } else if seen > drain {
                        break BodyEnd::Complete;
                    }
                }
            }
        }
    };
    BodyRead { bytes, seen, end }
}
