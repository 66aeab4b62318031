//! A record as gossip delivers it: from any peer of the store, or from anything that got onto the network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lpmesh_fuzz::{assert_record_round_trips, STORE};
use lpmesh_mesh::record::{Record, RecordError};
use lpmesh_mesh::wire;

fuzz_target!(|data: &[u8]| {
    let gossiped = wire::gossip_record(data, STORE);
    match Record::decode(data) {
        Ok(r) => {
            assert_record_round_trips(&r);
            // The node accepts exactly what decodes and verifies, nothing looser.
            assert_eq!(gossiped, r.verify(STORE).map(|()| r));
        }
        Err(e) => assert_eq!(gossiped, Err(e)),
    }
    if let Ok(r) = gossiped {
        assert!(r.seq >= 1, "an accepted record has a sequence number");
        assert!(r.origin.peer_id().is_some(), "an accepted record names a real node");
        // The signature covers the fields, not the bytes: what the node relays (its own encoding) must
        // verify on the next node too.
        assert_eq!(wire::gossip_record(&r.encode(), STORE).as_ref(), Ok(&r));
        assert!(matches!(
            wire::gossip_record(data, "another-store"),
            Err(RecordError::WrongStore(_))
        ));
    }
});
