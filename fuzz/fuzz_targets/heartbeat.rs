//! A heartbeat as gossip delivers it, and what the node does with one before it knows who sent it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lpmesh_fuzz::HeartbeatMsg;
use lpmesh_mesh::election::Election;
use lpmesh_mesh::net::Addr;
use lpmesh_mesh::record::Origin;
use lpmesh_mesh::wire;

fuzz_target!(|data: &[u8]| {
    let Some((hb, addrs, info_len)) = wire::heartbeat(data) else {
        return;
    };
    assert!(info_len < data.len(), "the node info is part of the message");
    // Node ids reach logs and the UI: any 32 bytes must print, an Ed25519 key or not.
    let _ = (hb.node.to_string(), hb.node.peer_id());
    // The node dials what heartbeats advertise; parsing and printing an address must never panic.
    for a in &addrs {
        if let Ok(addr) = a.parse::<Addr>() {
            let _ = addr.to_string().contains("/udp");
        }
    }
    // `sent_ms` is not returned: 0, the shortest, keeps the re-encoding within the size limit the
    // original met (unless the original spelled fields by index).
    let again = HeartbeatMsg {
        hb,
        sent_ms: 0,
        addrs: addrs.clone(),
        info: vec![0; info_len],
    }
    .encode()
    .expect("a heartbeat encodes");
    if again.len() <= data.len() {
        assert_eq!(
            wire::heartbeat(&again),
            Some((hb, addrs, info_len)),
            "re-encoded heartbeat"
        );
    }
    let me = Origin([0; 32]);
    let mut election = Election::new(me, 15_000);
    election.heard(hb, 1_000);
    assert_eq!(
        election.leader(1_000),
        Some(hb.node),
        "the only node heard, just now, leads"
    );
    election.prune(u64::MAX);
    assert_eq!(election.leader(u64::MAX), None, "a node silent for ever is not live");
});
