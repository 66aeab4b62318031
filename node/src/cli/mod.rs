//! The `lpmesh` binary's commands; `main.rs` parses the command line and dispatches here.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod hq;
pub mod records;
pub mod store;
#[cfg(feature = "vision")]
pub mod vision;
