//! An anti-entropy request as a peer's stream delivers it, read by the swarm's own codec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lpmesh_fuzz::{assert_record_round_trips, SyncRequest};
use lpmesh_mesh::record::Record;
use lpmesh_mesh::wire::{self, SyncMessage};

fuzz_target!(|data: &[u8]| {
    // The request type read by plain CBOR, apart from the codec: it tells how many records the request
    // carried, so none can go missing between the codec and the record decoder unnoticed.
    let mirror = cbor4ii::serde::from_slice::<SyncRequest>(data);
    match wire::sync_request(data) {
        Ok(SyncMessage::Summary { origins, reply }) => match mirror {
            Ok(SyncRequest::Summary { vv, reply: r }) => assert_eq!((origins, reply), (vv.len(), r)),
            other => panic!("the node read a summary request, the mirror read {other:?}"),
        },
        Ok(SyncMessage::Records { decoded, refused }) => {
            let Ok(SyncRequest::Records { records, .. }) = mirror else {
                panic!("the node read a records request, the mirror read {mirror:?}");
            };
            assert_eq!(decoded.len() + refused, records.len(), "records lost or made up");
            let alone: Vec<Record> = records.iter().filter_map(|b| Record::decode(b).ok()).collect();
            assert_eq!(decoded, alone, "a request's records decode as each would on its own");
            decoded.iter().for_each(assert_record_round_trips);
        }
        Err(e) => {
            let _ = e.to_string();
            // Far below the codec's size limit, so the codec saw every byte the mirror saw.
            assert!(mirror.is_err(), "the node refused what the mirror reads: {e}");
        }
    }
});
