//! A record as gossip delivers it, alone or in a bundle: from any peer of the store, or from anything that
//! got onto the network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lpmesh_fuzz::{assert_record_round_trips, store_secret, STORE};
use lpmesh_mesh::record::{bundles, Record, RecordError, MAX_BUNDLE_RECORDS};
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
    // The same bytes as a payload a reader opens (a whole age file or a sealed one with its wrapped
    // data key): opened or refused, never a panic; and a payload sealed here opens again.
    let _ = store_secret().decrypt(data);
    if data.len() <= 4096 {
        let sealed = store_secret()
            .recipient()
            .encrypt(data)
            .expect("encrypting cannot fail");
        assert!(
            store_secret().decrypt(&sealed).ok().as_deref() == Some(data),
            "a sealed payload opens again"
        );
    }
    // The same bytes as a bundle: taken whole or refused whole, never a panic.
    match wire::gossip_bundle(data, STORE) {
        Ok(records) => {
            assert!(!records.is_empty() && records.len() <= MAX_BUNDLE_RECORDS);
            for r in &records {
                assert_record_round_trips(r);
                assert_eq!(wire::gossip_record(&r.encode(), STORE).as_ref(), Ok(r));
            }
            let encoded: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
            let again: Vec<Record> = bundles(encoded.iter().map(Vec::as_slice))
                .iter()
                .flat_map(|b| wire::gossip_bundle(b, STORE).expect("a re-packed bundle is taken"))
                .collect();
            assert_eq!(again, records);
        }
        Err(e) => {
            let _ = (e.reason(), e.to_string());
        }
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
