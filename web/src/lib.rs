//! What every HTTP service of lpmesh (the store's tablet UI, HQ's upload API and dashboard) needs the
//! same way: logins that hold under attack, request bodies read within limits, listeners served
//! plain or over TLS with deadlines, the store's own certificate authority for its tablets and the
//! TLS clients' trust, private files written whole, one wall clock, and the Prometheus text of
//! `/metrics`.

pub mod body;
pub mod clock;
pub mod fs;
pub mod html;
pub mod login;
pub mod metrics;
pub mod serve;
pub mod tls;
