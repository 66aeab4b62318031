//! HQ: what stores send (summaries in signed, encrypted envelopes), the receiver that takes them, and
//! where it keeps them. No video, no ML, nothing of the node: this crate is all an HQ server needs.
//!
//! # Layout
//!
//! - [`vv`]: version vectors and the rule that decides which summary of a period HQ keeps (pure).
//! - [`summary`]: the summary of one store and period; the type is the privacy boundary towards HQ.
//! - [`envelope`]: sealing (age to HQ, signed by the store) and opening (verify, decrypt, check).
//! - [`plausible`]: what HQ refuses as impossible for a store (future periods, foreign period lengths,
//!   version vector entries beyond what the store could have written), whoever signed it (pure).
//! - [`store`]: PostgreSQL or embedded (sled) storage, and the registry of store keys.
//! - [`server`]: the HTTPS receiver (axum + rustls): ingestion, health, metrics.
//! - [`dashboard`]: the chain-wide dashboard and the CSV/JSON export.
//! - [`client`]: the store side: posting envelopes over HTTPS.
//! - [`config`], [`tls`], [`service`]: `lpmesh hq`'s configuration, HQ's identity and certificate.
//! - [`bench`]: `lpmesh bench hq`, ingestion into PostgreSQL over HTTPS.
//! - [`testpg`]: a throw-away PostgreSQL cluster for tests and the benchmark.

pub mod access;
pub mod bench;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod envelope;
pub mod pgtls;
pub mod plausible;
pub mod server;
pub mod service;
pub mod signin;
pub mod store;
pub mod summary;
#[doc(hidden)]
pub mod testpg;
pub mod tls;
pub mod vv;
