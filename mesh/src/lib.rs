//! The store's replicated, signed, encrypted event log and the private libp2p network that carries it.
//!
//! This crate knows nothing about cameras or models. It is filled by issue [3/7] (see ARCHITECTURE.md);
//! until then it only reserves its place in the workspace so that `node` depends on it from the start.
