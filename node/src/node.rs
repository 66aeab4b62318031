//! Running a node: the store mesh plus this node's cameras, their events appended to the log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::keys::{self, JoinToken, KeyError, StoreSecrets};
use lpmesh_mesh::log::{Log, LogError};
use lpmesh_mesh::net::{self, MeshConfig, MeshError, MeshHandle};
use lpmesh_mesh::record::{Record, RecordKind};

use crate::config::NodeConfig;
use crate::event::Event;
use crate::summary::Entry;

/// Events from cameras waiting to be appended (each append takes whatever is queued: group commit).
pub const EVENT_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Setup(String),
}

/// Where the log lives inside the data directory.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// `lpmesh init`: the store's secrets and this node's identity.
pub fn init(store: &str, data_dir: &Path) -> Result<lpmesh_mesh::net::NodeId, NodeError> {
    let secrets = StoreSecrets::generate(store)?;
    let key = keys::create_node_key(data_dir)?;
    secrets.save(data_dir)?;
    Ok(key.public().to_peer_id())
}

/// `lpmesh invite`: a token for a new node of the same store.
pub fn invite(data_dir: &Path, bootstrap: Vec<String>) -> Result<String, NodeError> {
    let secrets = StoreSecrets::load(data_dir)?;
    Ok(JoinToken { secrets, bootstrap }.encode())
}

/// `lpmesh join`: enrols this data directory into the token's store. Returns the store and bootstrap list.
pub fn join(token: &str, data_dir: &Path) -> Result<(String, Vec<String>, lpmesh_mesh::net::NodeId), NodeError> {
    let t = JoinToken::decode(token)?;
    let key = keys::create_node_key(data_dir)?;
    t.secrets.save(data_dir)?;
    Ok((t.secrets.store.clone(), t.bootstrap, key.public().to_peer_id()))
}

/// Starts the mesh for this node's configuration.
pub fn start_mesh(cfg: &NodeConfig) -> Result<MeshHandle, NodeError> {
    let key = keys::load_node_key(&cfg.data_dir)?;
    let secrets = StoreSecrets::load(&cfg.data_dir)?;
    if secrets.store != cfg.store {
        return Err(NodeError::Setup(format!(
            "{} belongs to store {:?}, but the configuration says store {:?}",
            cfg.data_dir.display(),
            secrets.store,
            cfg.store
        )));
    }
    let mut mc = MeshConfig::new(&cfg.store, secrets.psk()?, log_dir(&cfg.data_dir));
    let parse = |v: &[String]| -> Result<Vec<net::Addr>, NodeError> {
        v.iter()
            .map(|a| a.parse().map_err(|e| NodeError::Setup(format!("bad address {a}: {e}"))))
            .collect()
    };
    mc.listen = parse(&cfg.mesh.listen)?;
    mc.bootstrap = parse(&cfg.mesh.bootstrap)?;
    mc.announce = cfg.mesh.announce.as_deref().map(parse).transpose()?;
    mc.mdns = cfg.mesh.mdns;
    mc.anti_entropy_interval = Duration::from_secs_f64(cfg.mesh.anti_entropy_secs);
    mc.priority = cfg.mesh.priority;
    mc.heartbeat_interval = Duration::from_secs_f64(cfg.mesh.heartbeat_secs);
    mc.leader_timeout = Duration::from_secs_f64(cfg.mesh.leader_timeout_secs);
    mc.retention = Some(Duration::from_secs_f64(cfg.mesh.retention_days * 86_400.0));
    Ok(net::start(mc, key, secrets.recipient()?)?)
}

/// Appends camera events to the mesh as they come, batching whatever is queued into one commit.
/// Where alerts go when the log cannot take events (a full or failing disk): the node, its alerts and
/// the UI's base URL for the links.
pub type AlertFallback = Option<(crate::alerts::Alerts, String, String)>;

pub async fn append_events(mesh: MeshHandle, mut rx: tokio::sync::mpsc::Receiver<Event>, fallback: AlertFallback) {
    // Events the log could not take, appended when it can again (oldest dropped past the bound).
    let mut held: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    let mut dropped = 0u64;
    loop {
        let mut batch: Vec<Event> = Vec::new();
        if held.is_empty() {
            match rx.recv().await {
                Some(e) => batch.push(e),
                None => break,
            }
        } else {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => batch.push(e),
                    None => break,
                },
                _ = tokio::time::sleep(HELD_RETRY) => {}
            }
        }
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let fresh = batch.len();
        let retry: Vec<Event> = held.drain(..).collect();
        let all: Vec<Event> = retry.into_iter().chain(batch).collect();
        let items: Vec<(RecordKind, Vec<u8>)> = all
            .iter()
            .filter_map(|e| serde_json::to_vec(e).ok())
            .map(|b| (RecordKind::Event, b))
            .collect();
        match mesh.append(items).await {
            Ok(_) => {
                if all.len() > fresh {
                    tracing::info!(events = all.len() - fresh, "held events are in the store log now");
                }
            }
            Err(e) => {
                if fresh > 0 {
                    tracing::error!(error = %e, events = fresh, held = all.len() - fresh, "cannot append events to the store log; holding them");
                }
                // Detection goes on; the guards still hear what the cameras saw, straight from here.
                if let Some((alerts, node, link)) = &fallback {
                    for ev in all[all.len() - fresh..]
                        .iter()
                        .filter(|ev| crate::alerts::is_alertable(ev, node))
                    {
                        alerts.submit(crate::alerts::Alert::from_event(ev, link));
                    }
                }
                held.extend(all);
                while held.len() > MAX_HELD_EVENTS {
                    held.pop_front();
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        tracing::error!(
                            dropped,
                            "the log has been unwritable too long: oldest held events dropped"
                        );
                    }
                }
            }
        }
    }
    if !held.is_empty() {
        tracing::error!(
            events = held.len(),
            "events not in the store log at shutdown (it could not take them)"
        );
    }
}

/// Events held in memory while the log cannot take them (a full disk): about 10 MB.
const MAX_HELD_EVENTS: usize = 16_384;
const HELD_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// An own event reaching the log this late was held back (the log could not take it) and was alerted
/// from the camera queue then: alerting again would repeat it.
const LATE_FOR_ALERT_MS: i64 = 30_000;

/// Decrypts and parses an event record.
pub fn open_event(secret: &StoreSecret, r: &Record) -> Option<Event> {
    match open_entry(secret, r)? {
        Entry::Event(e) => Some(e),
        Entry::Action(_) => None,
    }
}

/// Decrypts and parses any record: an event or an operator action.
pub fn open_entry(secret: &StoreSecret, r: &Record) -> Option<Entry> {
    let plain = secret.decrypt(&r.ciphertext).ok()?;
    match r.kind {
        RecordKind::Event => serde_json::from_slice(&plain).ok().map(Entry::Event),
        RecordKind::Action => serde_json::from_slice(&plain).ok().map(Entry::Action),
    }
}

/// Hands every record of the log to `f`, origin by origin, a thousand at a time (the views that
/// follow the log read it whole at start).
pub async fn read_log(mesh: &MeshHandle, mut f: impl FnMut(&Record)) -> Result<(), MeshError> {
    for (origin, high) in mesh.version_vector().await? {
        let mut from = 1;
        while from <= high {
            let recs = mesh.range(origin, from, 1000).await?;
            let Some(last) = recs.last().map(|r| r.seq) else { break };
            recs.iter().for_each(&mut f);
            from = last + 1;
        }
    }
    Ok(())
}

/// `lpmesh events`: the store's events as this node holds them (the node must not be running: the
/// database allows one process at a time).
pub fn read_events(data_dir: &Path) -> Result<Vec<Event>, NodeError> {
    let key = keys::load_node_key(data_dir)?;
    let secrets = StoreSecrets::load(data_dir)?;
    let log = Log::open(&log_dir(data_dir), &secrets.store, key, secrets.recipient()?)?;
    let secret = secrets.store_secret()?;
    let mut out = Vec::new();
    for r in log.all() {
        if let Some(e) = open_event(&secret, &r?) {
            out.push(e);
        }
    }
    out.sort_by_key(|e| (e.at_ms, e.incident.clone()));
    Ok(out)
}

/// Sends this node's new incidents to its alert routes, as they become durable in the log. A node
/// alerts only for its own cameras, so one incident is one alert for the whole store.
pub async fn follow_alerts(
    mesh: MeshHandle,
    secret: StoreSecret,
    alerts: crate::alerts::Alerts,
    node: String,
    link_base: String,
) {
    let mut sub = mesh.subscribe();
    let me = mesh.origin();
    loop {
        match sub.recv().await {
            Ok(r) => {
                if r.origin != me {
                    continue;
                }
                if let Some(e) = open_event(&secret, &r) {
                    let late = chrono::Utc::now().timestamp_millis() - e.at_ms > LATE_FOR_ALERT_MS;
                    if crate::alerts::is_alertable(&e, &node) && !late {
                        alerts.submit(crate::alerts::Alert::from_event(&e, &link_base));
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(missed = n, "alerting fell behind the log; some alerts were not sent");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
