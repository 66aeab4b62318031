//! The `lpmesh` binary's commands; `main.rs` parses the command line and dispatches here.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod hq;
pub mod records;
pub mod store;
#[cfg(feature = "vision")]
pub mod vision;

/// The multi-threaded runtime a one-shot command (a benchmark, an HQ command) runs on: two workers are
/// what a store node or a small HQ box has to spare.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
