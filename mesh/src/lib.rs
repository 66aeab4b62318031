//! The store's replicated, signed, encrypted event log. Knows nothing about cameras or models: it carries
//! opaque payloads (the node's events and operator actions), encrypted to the store.
//!
//! # Layout
//!
//! - [`hlc`]: hybrid logical clock (order that survives skewed wall clocks).
//! - [`record`]: the record, its wire encoding (version byte + CBOR, size limits) and its signature.
//! - [`crypto`]: the store's age identity and recipient (payload encryption).
//! - [`keys`]: key files in the data directory and the join token.
//! - [`log`]: the log on disk (sled): durable appends with group commit, idempotent verified inserts,
//!   the version vector.
//! - [`sync`]: anti-entropy as a pure state machine, with a seeded simulation in its tests.
//! - [`election`]: the uplink leader as a pure function of heartbeats and `now` (used by the HQ uplink).
//!
//! - [`net`]: the libp2p actor: private network over TCP, gossipsub, request-response anti-entropy,
//!   mDNS and bootstrap; [`net::MeshHandle`] is how the node talks to it.
//! - [`wire`]: the decoders for what peers send, public so the fuzz targets run the node's own code.

pub mod bench;
pub mod crypto;
pub mod election;
pub mod enrol;
pub mod hlc;
pub mod keys;
pub mod log;
pub mod net;
pub mod netkeys;
pub mod record;
pub mod sync;
pub mod wire;
