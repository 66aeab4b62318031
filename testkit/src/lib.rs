//! The test kit: what the tests of every lpmesh crate need, with no dependency on any of them, so
//! that `mesh`, `hq`, `node` and the end-to-end tests share one copy.
//!
//! Test code: it panics with a clear message instead of returning errors.

pub mod dir;
pub mod net;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod wait;

pub use dir::TempDir;
pub use net::{free_port, http_get, try_http_get, HeldPort};
pub use process::ChildGuard;
pub use prometheus::{metric, prometheus};
pub use proxy::FaultProxy;
pub use wait::{eventually, eventually_every, now_ms, Rng};
