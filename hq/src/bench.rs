//! `lpmesh bench hq`: how many summaries per second one HQ process ingests into PostgreSQL, over HTTPS,
//! with signature verification and decryption included.
//!
//! S stores are registered; each sends a day of hourly summaries (sealed beforehand, so the stores'
//! cost is not counted), posted by 32 concurrent clients on loopback. The clients share the machine
//! with HQ and PostgreSQL, so the figure is a lower bound of HQ's capacity. The throw-away cluster
//! runs with fsync on, as a production database would: every acknowledged summary is on disk.
//!
//! By default each client keeps its connection (a store's uploads after an outage come in a burst on
//! one connection); with fresh connections every upload opens its own TCP connection and pays a full
//! TLS handshake (a new client, so no session to resume), as the hourly uploads of 10,000 stores do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::HqClient;
use crate::envelope::{seal, store_key_to_string};
use crate::server::{serve, HqState};
use crate::store::{HqStore, Postgres};
use crate::summary::{AckStats, CameraUptime, Incident, LineCount, Summary};
use crate::testpg::TestPg;
use crate::vv::VersionVector;

#[derive(Debug, thiserror::Error)]
#[error("bench hq: {0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

#[derive(Debug, Serialize)]
pub struct HqBench {
    pub stores: usize,
    pub summaries: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub summaries_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Summaries per second a chain of 10,000 stores sends with hourly periods.
    pub chain_10k_hourly_per_s: f64,
    /// The share of this HQ process that chain needs.
    pub chain_10k_share: f64,
    pub envelope_bytes: usize,
    pub database: String,
    /// Whether the database fsyncs its commits: `true` for the cluster the bench starts itself;
    /// `None` for one given by URL (its settings are its own).
    pub fsync: Option<bool>,
    /// Every upload on a connection and TLS handshake of its own.
    pub fresh_connections: bool,
    /// TCP connections (and TLS handshakes) the uploads made.
    pub connections: usize,
    /// HQ's connections to PostgreSQL (`database_connections`).
    pub database_connections: usize,
    /// Reading what the chain overview shows (the stores, the day's totals, the newest serious
    /// incidents) from the data just ingested, median of 5.
    pub overview_ms: f64,
    /// Decoding the week's summaries, as the overview did before schema 4, median of 5.
    pub week_decoded_ms: f64,
}

fn sample(store: &str, period: i64, nodes: &[String], k: u64) -> Summary {
    Summary {
        store: store.to_string(),
        period_start_ms: period,
        period_secs: 3600,
        vv: VersionVector(nodes.iter().map(|n| (n.clone(), 100 + k)).collect()),
        footfall: (0..3)
            .map(|i| LineCount {
                camera: format!("cam-{i}"),
                line: "door".into(),
                entered: 40 + k,
                left: 38 + k,
            })
            .collect(),
        peak_occupancy: [("cam-0/floor".to_string(), 7)].into_iter().collect(),
        incidents_by_kind: [("loitering".to_string(), 3), ("exit_without_checkout".to_string(), 1)]
            .into_iter()
            .collect(),
        incidents_by_severity: [("low".to_string(), 3), ("high".to_string(), 1)].into_iter().collect(),
        incidents_by_camera: [("cam-0".to_string(), 4)].into_iter().collect(),
        incidents_by_zone: [("cam-0/floor".to_string(), 4)].into_iter().collect(),
        acknowledgements: AckStats {
            acknowledged: 1,
            ack_secs_mean: Some(12.0),
            ack_secs_p90: Some(12.0),
            ack_secs_max: Some(12.0),
            ..AckStats::default()
        },
        cameras: (0..3)
            .map(|i| CameraUptime {
                camera: format!("cam-{i}"),
                offline_secs: 0.0,
                uptime: 1.0,
            })
            .collect(),
        serious: vec![Incident {
            incident: format!("{store}/cam-0/{k}"),
            camera: "cam-0".into(),
            zone: Some("exit".into()),
            kind: "exit_without_checkout".into(),
            severity: "high".into(),
            started_at_ms: period + 1000,
            state: "acknowledged".into(),
            acknowledged_at_ms: Some(period + 13_000),
            ..Incident::default()
        }],
        serious_total: 1,
    }
}

/// Runs the benchmark against `database_url`, or a throw-away cluster when there is none.
pub async fn run(
    stores: usize,
    periods: usize,
    database_url: Option<String>,
    fresh_connections: bool,
    database_connections: usize,
) -> Result<HqBench, BenchError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let own_cluster = database_url.is_none();
    let (pg, url) = match database_url {
        Some(u) => (None, u),
        None => {
            // fsync on, as a production database runs: the tests' clusters run without it.
            let pg = tokio::task::spawn_blocking(|| TestPg::start_with(true))
                .await
                .map_err(err)?
                .map_err(err)?;
            let u = pg.url();
            (Some(pg), u)
        }
    };
    let dir = std::env::temp_dir().join(format!("lpmesh-bench-hq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err)?;
    let store = HqStore::Postgres(Postgres::connect(&url, database_connections).await.map_err(err)?);
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let cert = crate::tls::load_or_create_cert(&dir, None, None, &["localhost".to_string()]).map_err(err)?;
    // Sealing is the stores' work, done before the clock starts.
    // Periods that ended before this hour: HQ refuses periods ahead of its clock.
    let hours = i64::try_from(periods.max(24)).unwrap_or(i64::MAX);
    let base =
        chrono::Utc::now().timestamp_millis().div_euclid(3_600_000) * 3_600_000 - hours.saturating_mul(3_600_000);
    let mut envelopes = Vec::with_capacity(stores * periods);
    for i in 0..stores {
        let name = format!("bench-{i:05}");
        let key = libp2p_identity::Keypair::generate_ed25519();
        let text = store_key_to_string(&key.public()).ok_or_else(|| err("key"))?;
        store.register_store(&name, &text, base).await.map_err(err)?;
        let nodes: Vec<String> = (0..3).map(|n| format!("node{n}x{i}")).collect();
        for p in 0..periods {
            let s = sample(&name, base + p as i64 * 3_600_000, &nodes, p as u64);
            envelopes.push(seal(&s, &recipient, &key).map_err(err)?.encode());
        }
    }
    let envelope_bytes = envelopes.iter().map(Vec::len).sum::<usize>() / envelopes.len().max(1);
    let state = HqState::new(store, identity, crate::envelope::MAX_ENVELOPE_BYTES);
    let running = serve(
        state.clone(),
        "127.0.0.1:0".parse().map_err(err)?,
        cert.cert_pem,
        cert.key_pem,
    )
    .await
    .map_err(err)?;
    let url = format!("https://localhost:{}", running.addr.port());
    let new_client = {
        let (url, ca) = (url.clone(), cert.cert_path.clone());
        move || HqClient::new(&url, Some(&ca), Duration::from_secs(30)).map_err(err)
    };
    let client = new_client()?;
    client.probe().await.map_err(err)?;
    let concurrency = 32;
    let total = envelopes.len();
    let queue = Arc::new(std::sync::Mutex::new(envelopes));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let q = queue.clone();
        let c = client.clone();
        let new_client = new_client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let next = q.lock().map(|mut v| v.pop()).unwrap_or(None);
                let Some(env) = next else { break };
                let t = Instant::now();
                // A fresh client has no connection and no TLS session: the upload pays for both,
                // and the client's own setup (reading the CA) is part of what a store pays too.
                if fresh_connections {
                    new_client()?.post(env).await.map_err(err)?;
                } else {
                    c.post(env).await.map_err(err)?;
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<Vec<f64>, BenchError>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.extend(t.await.map_err(err)??);
    }
    let seconds = start.elapsed().as_secs_f64();
    running.shutdown(Duration::from_secs(5)).await;
    let stored = state.metrics.outcomes().get("stored").copied().unwrap_or(0) as usize;
    if stored != total {
        return Err(err(format!("HQ stored {stored} of {total} summaries")));
    }
    let (overview_ms, week_decoded_ms) = overview_reads(&state.store).await?;
    drop(state);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let rate = total as f64 / seconds;
    let chain = 10_000.0 / 3600.0;
    Ok(HqBench {
        stores,
        summaries: total,
        concurrency,
        seconds,
        summaries_per_s: rate,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        chain_10k_hourly_per_s: chain,
        chain_10k_share: chain / rate,
        envelope_bytes,
        database: "postgresql".into(),
        fsync: own_cluster.then_some(true),
        fresh_connections,
        connections: if fresh_connections {
            total
        } else {
            concurrency.min(total)
        },
        database_connections,
        overview_ms,
        week_decoded_ms,
    })
}

/// Times what the chain overview reads now, and what it read before (the whole week decoded).
async fn overview_reads(store: &HqStore) -> Result<(f64, f64), BenchError> {
    const DAY_MS: i64 = 86_400_000;
    let now = lpmesh_web::clock::now_ms();
    let (mut kept, mut decoded) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        store.stores().await.map_err(err)?;
        store
            .overview(now - DAY_MS, now - 7 * DAY_MS, None, 200)
            .await
            .map_err(err)?;
        kept.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let week = crate::store::Filter {
            from_ms: Some(now - 7 * DAY_MS),
            ..Default::default()
        };
        store.summaries(&week).await.map_err(err)?;
        decoded.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(kept), median(decoded)))
}
