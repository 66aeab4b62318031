//! What the fuzz targets and the seed generator (`examples/make-corpus.rs`) share: fixed keys, so the
//! committed seeds still verify and open in every run, and the wire types the seeds are made of.

use std::sync::OnceLock;

use libp2p_identity::Keypair;
use lpmesh_mesh::record::{Record, RecordError, MAX_RECORD_BYTES};

/// The store every seed record belongs to; `record` verifies against it.
pub const STORE: &str = "fuzz-store";

/// HQ's age identity for the `hq_envelope` target. A key for fuzzing only, committed on purpose: the seed
/// envelopes are encrypted to it, and an identity made afresh each run could never open them.
pub const HQ_IDENTITY: &str = "AGE-SECRET-KEY-1D3CX6ETNDQSXVAT60GSXSUFQD9JX2MN5D968JTPQWP6KYMRFVVSSN58FXU";

fn fixed_key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes are an Ed25519 secret key")
}

/// The Ed25519 key of the node that signs the seed records (fixed, so regenerating the seeds is stable).
pub fn node_key() -> &'static Keypair {
    static KEY: OnceLock<Keypair> = OnceLock::new();
    KEY.get_or_init(|| fixed_key(1))
}

/// The store's signing key, as registered at HQ, for the `hq_envelope` target.
pub fn store_key() -> &'static Keypair {
    static KEY: OnceLock<Keypair> = OnceLock::new();
    KEY.get_or_init(|| fixed_key(2))
}

pub fn hq_identity() -> &'static age::x25519::Identity {
    static ID: OnceLock<age::x25519::Identity> = OnceLock::new();
    ID.get_or_init(|| HQ_IDENTITY.parse().expect("HQ_IDENTITY is an age secret key"))
}

/// A store key for opening payloads (any age identity will do: the target checks refusals, not secrets).
pub fn store_secret() -> &'static lpmesh_mesh::crypto::StoreSecret {
    static SECRET: OnceLock<lpmesh_mesh::crypto::StoreSecret> = OnceLock::new();
    SECRET
        .get_or_init(|| lpmesh_mesh::crypto::StoreSecret::parse(HQ_IDENTITY).expect("HQ_IDENTITY is an age secret key"))
}

/// The wire types the mesh decodes, as the seed generator writes them.
pub use lpmesh_mesh::wire::{HeartbeatMsg, SyncRequest};

/// A record that decoded must survive its own encoding: the node stores and relays `encode()`, never the
/// bytes it received, so a record whose encoding reads back different (or not at all) would change or
/// vanish on the next hop.
pub fn assert_record_round_trips(r: &Record) {
    let bytes = r.encode();
    match Record::decode(&bytes) {
        Ok(back) => {
            assert_eq!(&back, r, "a record changed through encode/decode");
            assert_eq!(back.encode(), bytes, "encoding is not stable");
        }
        // Input may spell fields by index, shorter than the names `encode` writes: near the size limit the
        // canonical encoding can be a little larger than what was received.
        Err(RecordError::TooLarge(n)) => assert!(n > MAX_RECORD_BYTES),
        Err(e) => panic!("a decoded record does not decode after encode: {e}"),
    }
    // The reason label and message must be printable for every refusal (metrics, logs).
    if let Err(e) = r.verify(STORE) {
        let _ = (e.reason(), e.to_string());
    }
}
