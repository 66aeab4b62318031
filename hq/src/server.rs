//! The HQ receiver: two HTTPS (rustls) listeners. The upload listener, which every store reaches,
//! serves `POST /api/v1/summaries` and `/health` and nothing else; the dashboard listener (loopback or
//! an internal address) serves the logged-in dashboard, the export and `/metrics`
//! ([`crate::dashboard`], [`crate::signin`]).
//!
//! `POST /api/v1/summaries` takes one envelope (`application/octet-stream`) and answers JSON:
//!
//! | outcome | status | body |
//! |---|---|---|
//! | stored, replaced, unchanged, concurrent (either way) | 200 | `{"status": …, "stored_vv": {…}}` |
//! | stale (older than what HQ holds: a replay or a slow leader) | 409 | same, with HQ's version vector |
//! | malformed envelope | 400 | `{"error": "malformed", "message": …}` |
//! | signature does not verify | 401 | `bad_signature` |
//! | store not registered | 403 | `unknown_store` |
//! | larger than `max_envelope_bytes` | 413 | `too_large` |
//! | not for this HQ's key, or a bad summary inside | 422 | `undecryptable` / `bad_summary` |
//! | impossible for the store ([`crate::plausible`]): period ahead of now + one period, not the store's period length, misaligned, vector entry beyond the store's frontier | 422 | `future_period` / `period_length` / `misaligned_period` / `implausible_vv` |
//!
//! A node counts a period as done once `stored_vv` includes the version vector it sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lpmesh_web::metrics::Exposition;
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, EnvelopeError};
use crate::plausible::{self, Implausible};
use crate::store::{HqStore, KeyCache, StoreError};
use crate::vv::{Decision, VersionVector};

pub const INGEST_PATH: &str = "/api/v1/summaries";

pub struct HqState {
    pub store: HqStore,
    pub identity: age::x25519::Identity,
    pub keys: KeyCache,
    pub metrics: Metrics,
    pub max_envelope_bytes: usize,
    pub dashboard: DashboardOptions,
    pub limiter: lpmesh_web::login::LoginLimiter,
    pub gate: lpmesh_web::login::HashGate,
    /// Verified when the typed name is nobody's, so that a login takes as long either way.
    pub dummy_hash: String,
}

/// What the dashboard listener allows (from [`crate::config::HqConfig`]).
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    /// The longest span one export request may cover.
    pub export_max_days: u32,
    /// A bearer token that lets a scraper read `/metrics` without a login.
    pub metrics_token: Option<String>,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            export_max_days: crate::config::DEFAULT_EXPORT_MAX_DAYS,
            metrics_token: None,
        }
    }
}

impl HqState {
    pub fn new(store: HqStore, identity: age::x25519::Identity, max_envelope_bytes: usize) -> Arc<HqState> {
        Self::with_dashboard(store, identity, max_envelope_bytes, DashboardOptions::default())
    }

    pub fn with_dashboard(
        store: HqStore,
        identity: age::x25519::Identity,
        max_envelope_bytes: usize,
        dashboard: DashboardOptions,
    ) -> Arc<HqState> {
        Arc::new(HqState {
            store,
            identity,
            keys: KeyCache::default(),
            metrics: Metrics::default(),
            max_envelope_bytes,
            dashboard,
            limiter: Default::default(),
            gate: Default::default(),
            dummy_hash: lpmesh_web::login::hash_password("not anyone's password").unwrap_or_default(),
        })
    }
}

/// HQ's counters, served on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub received: AtomicU64,
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    logins: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Counts a dashboard login by outcome (`ok`, `wrong`, `backoff`, `busy`, `cross_origin`, `malformed`).
    pub fn login(&self, outcome: &'static str) {
        *self
            .logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_insert(0) += 1;
    }

    pub fn logins(&self) -> BTreeMap<&'static str, u64> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn outcome(&self, d: Decision) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(d.as_str())
            .or_insert(0) += 1;
    }

    fn rejected(&self, reason: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_insert(0) += 1;
    }

    pub fn outcomes(&self) -> BTreeMap<&'static str, u64> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// HQ's counters as Prometheus text ([`lpmesh_web::metrics::CONTENT_TYPE`]).
    pub fn prometheus(&self) -> Result<String, std::fmt::Error> {
        let mut x = Exposition::default();
        x.counter(
            "lpmesh_hq_envelopes_received_total",
            "Envelopes posted to HQ.",
            self.received.load(Ordering::Relaxed),
        );
        let by = |key: &'static str, counts: BTreeMap<&'static str, u64>| {
            counts.into_iter().map(move |(k, n)| ([(key, k)], n))
        };
        x.counters(
            "lpmesh_hq_summaries_total",
            "Accepted envelopes by what HQ did with them.",
            by("outcome", self.outcomes()),
        );
        x.counters(
            "lpmesh_hq_rejected_total",
            "Refused envelopes by reason.",
            by("reason", self.rejections()),
        );
        x.counters(
            "lpmesh_hq_logins_total",
            "Dashboard logins by outcome.",
            by("outcome", self.logins()),
        );
        x.encode()
    }
}

/// HQ's answer to an accepted (or stale) envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub status: String,
    pub stored_vv: VersionVector,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Envelope(EnvelopeError),
    #[error(transparent)]
    Implausible(Implausible),
    #[error(transparent)]
    Store(StoreError),
}

impl IngestError {
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Envelope(e) => e.reason(),
            IngestError::Implausible(e) => e.reason(),
            IngestError::Store(_) => "storage",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Envelope(e) => match e {
                EnvelopeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                EnvelopeError::Malformed(_) | EnvelopeError::Version(_) => StatusCode::BAD_REQUEST,
                EnvelopeError::UnknownStore(_) => StatusCode::FORBIDDEN,
                EnvelopeError::BadSignature => StatusCode::UNAUTHORIZED,
                EnvelopeError::Undecryptable(_) | EnvelopeError::BadSummary(_) | EnvelopeError::Invalid(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                EnvelopeError::Seal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            // Well-formed and signed, but nothing the store could have sent: sending it again will not help.
            IngestError::Implausible(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // Not the sender's fault: it should try again later.
            IngestError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let body = Refusal {
            error: self.reason().to_string(),
            message: self.to_string(),
        };
        (self.status(), Json(body)).into_response()
    }
}

/// Verifies, decrypts and stores one envelope, and counts the outcome. The order matters: nothing is
/// decrypted before the signature of a registered store checks out and what it claims is possible for
/// that store at `now_ms` (HQ's clock, also the time it is stored with).
pub async fn ingest(state: &HqState, bytes: &[u8], now_ms: i64) -> Result<Ack, IngestError> {
    state.metrics.received.fetch_add(1, Ordering::Relaxed);
    match ingest_inner(state, bytes, now_ms).await {
        Ok((decision, store, period, stored_vv)) => {
            state.metrics.outcome(decision);
            match decision {
                Decision::ConcurrentReplace | Decision::ConcurrentKeep => {
                    tracing::warn!(
                    store, period, outcome = decision.as_str(),
                    "two summaries of one period from concurrent log states (a partition); kept the tie-break winner"
                )
                }
                Decision::Stale => tracing::info!(store, period, "stale summary refused (replay or slow leader)"),
                _ => tracing::debug!(store, period, outcome = decision.as_str(), "summary"),
            }
            Ok(Ack {
                status: decision.as_str().to_string(),
                stored_vv,
            })
        }
        Err(e) => {
            state.metrics.rejected(e.reason());
            tracing::info!(reason = e.reason(), error = %e, "envelope refused");
            Err(e)
        }
    }
}

async fn ingest_inner(
    state: &HqState,
    bytes: &[u8],
    now_ms: i64,
) -> Result<(Decision, String, i64, VersionVector), IngestError> {
    if bytes.len() > state.max_envelope_bytes {
        return Err(IngestError::Envelope(EnvelopeError::TooLarge(bytes.len())));
    }
    let env = Envelope::decode(bytes).map_err(IngestError::Envelope)?;
    let key = state
        .keys
        .get(&state.store, &env.store)
        .await
        .map_err(IngestError::Store)?
        .ok_or_else(|| IngestError::Envelope(EnvelopeError::UnknownStore(env.store.clone())))?;
    env.verify(&key).map_err(IngestError::Envelope)?;
    // The envelope's period and vector are the summary's (`open` refuses any difference), so they are
    // judged before the decryption is paid for.
    let history = state.store.history(&env.store).await.map_err(IngestError::Store)?;
    if let Err(e) = plausible::check(env.period_start_ms, env.period_secs, &env.vv, &history, now_ms) {
        // Signed by the store: a leaked key, or a store whose clock or configuration is wrong.
        tracing::warn!(store = %env.store, reason = e.reason(), error = %e, "impossible upload refused");
        return Err(IngestError::Implausible(e));
    }
    // Decryption and JSON parsing cost CPU: keep them off the async workers.
    let summary = tokio::task::block_in_place(|| env.open(&state.identity)).map_err(IngestError::Envelope)?;
    let up = state.store.upsert(&summary, now_ms).await.map_err(IngestError::Store)?;
    Ok((up.decision, env.store, env.period_start_ms, up.stored_vv))
}

use lpmesh_web::clock::now_ms;

/// Bytes of an oversized body read (and thrown away) before answering 413: a client still sending
/// when the server answers and closes would see a broken connection instead of the refusal.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

pub use lpmesh_web::body::{read_body, BodyEnd, BodyRead, BODY_DEADLINE, HEADER_DEADLINE};

/// The body, or `Err(size read)` when it is larger than `limit`; what came by the deadline is judged.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, usize> {
    let read = read_body(body, limit, DRAIN_LIMIT).await;
    if read.seen > limit {
        Err(read.seen)
    } else {
        Ok(read.bytes)
    }
}

async fn post_summary(State(state): State<Arc<HqState>>, body: Body) -> Response {
    let bytes = match read_limited(body, state.max_envelope_bytes).await {
        Ok(b) => b,
        Err(size) => {
            state.metrics.received.fetch_add(1, Ordering::Relaxed);
            let e = IngestError::Envelope(EnvelopeError::TooLarge(size));
            state.metrics.rejected(e.reason());
            return e.into_response();
        }
    };
    match ingest(&state, &bytes, now_ms()).await {
        Ok(ack) => {
            let status = if ack.status == Decision::Stale.as_str() {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            (status, Json(ack)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn health() -> &'static str {
    "ok\n"
}

/// The upload listener's routes: what a store needs, nothing an outsider could read.
pub fn app(state: Arc<HqState>) -> Router {
    Router::new()
        .route(INGEST_PATH, post(post_summary))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// A running HQ listener.
pub use lpmesh_web::serve::{Running, ServeError};

/// Serves HQ's upload API over HTTPS on `addr` (port 0 picks a free one; see [`Running::addr`]).
pub async fn serve(
    state: Arc<HqState>,
    addr: SocketAddr,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
) -> Result<Running, ServeError> {
    lpmesh_web::serve::serve(app(state), addr, Some((cert_pem, key_pem)), "HQ upload").await
}

/// Serves the dashboard, the export and `/metrics` over HTTPS on `addr`.
pub async fn serve_dashboard(
    state: Arc<HqState>,
    addr: SocketAddr,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
) -> Result<Running, ServeError> {
    lpmesh_web::serve::serve(
        crate::dashboard::app(state),
        addr,
        Some((cert_pem, key_pem)),
        "HQ dashboard",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_their_names_labels_and_help() {
        let m = Metrics::default();
        m.received.store(3, Ordering::Relaxed);
        m.outcome(Decision::Insert);
        m.outcome(Decision::Stale);
        m.rejected("bad_signature");
        m.login("ok");
        m.login("wrong");
        // Exactly what the hand-written exposition printed before prometheus-client wrote it.
        let want = "# HELP lpmesh_hq_envelopes_received_total Envelopes posted to HQ.\n\
             # TYPE lpmesh_hq_envelopes_received_total counter\n\
             lpmesh_hq_envelopes_received_total 3\n\
             # HELP lpmesh_hq_summaries_total Accepted envelopes by what HQ did with them.\n\
             # TYPE lpmesh_hq_summaries_total counter\n\
             lpmesh_hq_summaries_total{outcome=\"stale\"} 1\n\
             lpmesh_hq_summaries_total{outcome=\"stored\"} 1\n\
             # HELP lpmesh_hq_rejected_total Refused envelopes by reason.\n\
             # TYPE lpmesh_hq_rejected_total counter\n\
             lpmesh_hq_rejected_total{reason=\"bad_signature\"} 1\n\
             # HELP lpmesh_hq_logins_total Dashboard logins by outcome.\n\
             # TYPE lpmesh_hq_logins_total counter\n\
             lpmesh_hq_logins_total{outcome=\"ok\"} 1\n\
             lpmesh_hq_logins_total{outcome=\"wrong\"} 1\n";
        assert_eq!(m.prometheus().unwrap(), want);
    }
}
