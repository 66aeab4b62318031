//! Decoders for what peers send, the same code the swarm runs, public so the fuzz targets
//! (`fuzz/`) exercise exactly what a hostile peer can reach.

use libp2p::request_response::Codec;
use libp2p::StreamProtocol;

use crate::election::Heartbeat;
use crate::net::{sync_codec, MAX_HEARTBEAT_BYTES, SYNC_PROTOCOL_NAME};
pub use crate::net::{HeartbeatMsg, SyncRequest};
use crate::record::Record;

/// A heartbeat gossip message; `None` is what the node rejects (and counts as `bad_heartbeat`).
pub(crate) fn decode_heartbeat(bytes: &[u8]) -> Option<HeartbeatMsg> {
    if bytes.len() > MAX_HEARTBEAT_BYTES {
        return None;
    }
    ciborium::from_reader(bytes).ok()
}

/// What a heartbeat message said, for the fuzz targets and tests.
pub fn heartbeat(bytes: &[u8]) -> Option<(Heartbeat, Vec<String>, usize)> {
    decode_heartbeat(bytes).map(|m| (m.hb, m.addrs, m.info.len()))
}

/// What an anti-entropy request carried.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncMessage {
    Summary {
        origins: usize,
        reply: bool,
    },
    /// Records that decoded, and how many were refused.
    Records {
        decoded: Vec<Record>,
        refused: usize,
    },
}

/// Reads an anti-entropy request from a stream's bytes through the swarm's own codec (size limit
/// included), then decodes the records in it as the node does.
pub fn sync_request(bytes: &[u8]) -> Result<SyncMessage, std::io::Error> {
    let mut codec = sync_codec();
    let mut io = futures::io::Cursor::new(bytes);
    let protocol = StreamProtocol::new(SYNC_PROTOCOL_NAME);
    let request = futures::executor::block_on(codec.read_request(&protocol, &mut io))?;
    Ok(match request {
        SyncRequest::Summary { vv, reply } => SyncMessage::Summary {
            origins: vv.len(),
            reply,
        },
        SyncRequest::Records { records, .. } => {
            let mut decoded = Vec::new();
            let mut refused = 0;
            for b in records {
                match Record::decode(&b) {
                    Ok(r) => decoded.push(r),
                    Err(_) => refused += 1,
                }
            }
            SyncMessage::Records { decoded, refused }
        }
    })
}

/// A gossiped record as the node receives it: decoded, then verified for this store.
pub fn gossip_record(bytes: &[u8], store: &str) -> Result<Record, crate::record::RecordError> {
    let r = Record::decode(bytes)?;
    r.verify(store)?;
    Ok(r)
}

/// A gossiped bundle as the node receives it: every record decoded and verified, or none taken.
pub fn gossip_bundle(bytes: &[u8], store: &str) -> Result<Vec<Record>, crate::record::RecordError> {
    let records = crate::record::decode_bundle(bytes)?;
    for r in &records {
        r.verify(store)?;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(heartbeat(&[0xff; 16]).is_none());
        assert!(heartbeat(&vec![0u8; MAX_HEARTBEAT_BYTES + 1]).is_none());
        assert!(sync_request(&[0xa1, 0x00]).is_err());
        assert!(gossip_record(&[1, 2, 3], "s").is_err());
        assert!(gossip_bundle(&[crate::record::BUNDLE_TAG, 0, 1, 0, 0, 0, 3, 1, 2, 3], "s").is_err());
    }

    /// A heartbeat as nodes from before `last_progress_ms` wrote it.
    #[derive(serde::Serialize)]
    struct OldHeartbeat {
        node: crate::record::Origin,
        hq_reachable: bool,
        priority: u8,
    }

    #[derive(serde::Serialize)]
    struct OldHeartbeatMsg {
        hb: OldHeartbeat,
        sent_ms: u64,
        addrs: Vec<String>,
        #[serde(with = "serde_bytes")]
        info: Vec<u8>,
    }

    fn sample(last_progress_ms: u64) -> HeartbeatMsg {
        HeartbeatMsg {
            hb: Heartbeat {
                node: crate::record::Origin([7; 32]),
                hq_reachable: true,
                priority: 3,
                last_progress_ms,
            },
            sent_ms: 1_764_000_000_000,
            addrs: vec!["/ip4/10.0.0.5/tcp/7420".into()],
            info: b"{}".to_vec(),
        }
    }

    #[test]
    fn heartbeats_from_before_the_progress_field_still_read_and_unknown_progress_is_written_as_before() {
        let old = OldHeartbeatMsg {
            hb: OldHeartbeat {
                node: crate::record::Origin([7; 32]),
                hq_reachable: true,
                priority: 3,
            },
            sent_ms: 1_764_000_000_000,
            addrs: vec!["/ip4/10.0.0.5/tcp/7420".into()],
            info: b"{}".to_vec(),
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).expect("encode");
        let (hb, _, _) = heartbeat(&bytes).expect("an old heartbeat reads");
        assert_eq!(hb, sample(0).hb, "progress unknown");
        assert_eq!(
            sample(0).encode(),
            Some(bytes),
            "0 is left out: old nodes read exactly what they wrote"
        );
        let new = sample(1_764_000_000_000).encode().expect("encode");
        assert_eq!(heartbeat(&new).map(|h| h.0), Some(sample(1_764_000_000_000).hb));
    }

    #[test]
    fn the_committed_heartbeat_seeds_still_read() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/heartbeat");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return; // Not in a packaged crate.
        };
        for e in entries {
            let path = e.expect("read the corpus").path();
            let bytes = std::fs::read(&path).expect("read a seed");
            assert!(heartbeat(&bytes).is_some(), "{} no longer decodes", path.display());
        }
    }

    #[test]
    fn the_largest_honest_heartbeat_fits() {
        let mut m = sample(u64::MAX);
        m.hb.priority = u8::MAX;
        m.sent_ms = u64::MAX;
        m.info = vec![0xff; crate::net::MAX_NODE_INFO_BYTES];
        m.addrs = vec!["/dns4/camera-node-backroom.store-0042.example.com/tcp/65535".into(); 4];
        let bytes = m.encode().expect("encode");
        assert!(bytes.len() <= MAX_HEARTBEAT_BYTES, "{} bytes", bytes.len());
        assert!(heartbeat(&bytes).is_some());
    }

    #[test]
    fn a_summary_request_reads_back() {
        let req = SyncRequest::Summary {
            vv: vec![],
            reply: true,
        };
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &req).expect("encode");
        assert_eq!(
            sync_request(&bytes).expect("decode"),
            SyncMessage::Summary {
                origins: 0,
                reply: true
            }
        );
    }
}
