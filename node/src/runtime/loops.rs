//! The node's background loops: a named set that reports any loop that ends, and the small loops that
//! have no other home.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lpmesh_mesh::net::MeshHandle;
use tokio::task::{Id, JoinError, JoinSet};

use crate::alerts::{Alerts, CameraState};
use crate::board::CameraBoard;
use crate::bounds::Reader;

/// The node's background loops, each under a name. A loop that ends while the node runs is reported by
/// name (a panic included) instead of vanishing; at shutdown, once the ordered part is done, the rest
/// are stopped together.
#[derive(Default)]
pub(crate) struct Loops {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Loops {
    pub(crate) fn spawn(&mut self, name: &'static str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The name of a loop that ended, saying so when it panicked.
    fn name_of(&mut self, ended: Result<(Id, ()), JoinError>) -> &'static str {
        let (id, panicked) = match ended {
            Ok((id, ())) => (id, false),
            Err(e) => (e.id(), e.is_panic()),
        };
        let name = self.names.remove(&id).unwrap_or("?");
        if panicked {
            tracing::error!(task = name, "a background loop of the node panicked");
        }
        name
    }

    /// Waits for a loop to end and says which; pending forever when none is running.
    pub(crate) async fn ended(&mut self) -> &'static str {
        match self.set.join_next_with_id().await {
            Some(r) => self.name_of(r),
            None => std::future::pending().await,
        }
    }

    pub(crate) async fn stop(mut self) {
        self.set.abort_all();
        while let Some(r) = self.set.join_next_with_id().await {
            self.name_of(r);
        }
    }
}

/// A nearly full disk is said, loudly and in the metrics; detection and alerts go on.
pub(crate) async fn disk_watch(dir: PathBuf) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        if let Some((free, total)) = crate::ops::disk_space(&dir) {
            if crate::ops::nearly_full(free, total) {
                tracing::warn!(free_mb = free / (1024 * 1024), data_dir = %dir.display(), "the disk is nearly full: free space, or events will stop being stored (detection and alerts go on)");
            }
        }
    }
}

/// Every event of the store in this node's log, as it arrives.
pub(crate) async fn event_log(mesh: MeshHandle, reader: Reader) {
    let mut sub = mesh.subscribe();
    let me = mesh.origin();
    loop {
        match sub.recv().await {
            Ok(r) => {
                if let Some(e) = reader.event(&r) {
                    let from = if r.origin == me { "here" } else { "peer" };
                    tracing::info!(from, node = %e.node, camera = %e.camera, kind = e.kind.as_str(), phase = ?e.phase, zone = ?e.zone, "event");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "event display fell behind");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// The mesh's counters in the log every minute (for nodes without a metrics scraper).
pub(crate) async fn mesh_counters(mesh: MeshHandle) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.tick().await;
    loop {
        every.tick().await;
        match mesh.stats().await {
            Ok(s) => tracing::info!(
                peers = s.peers,
                log_records = s.records,
                appended = s.appended,
                received_gossip = s.received_gossip,
                received_sync = s.received_sync,
                sent_sync = s.sent_sync,
                repaired = s.repaired,
                sync_rounds = s.sync_rounds,
                rejected = ?s.rejected,
                handshake_failures = s.handshake_failures,
                "mesh"
            ),
            Err(_) => break,
        }
    }
}

/// What the other nodes' tablets show about this node (its name, its UI, its cameras' health), and
/// each camera's state for the alert routes (MQTT keeps it retained): sent on a change, and at least
/// every minute.
pub(crate) async fn heartbeat_info(
    mesh: MeshHandle,
    info: crate::ui::NodeInfo,
    board: CameraBoard,
    alerts: Alerts,
    store: String,
    node: String,
) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    let mut last_states = HashMap::new();
    loop {
        every.tick().await;
        let mut i = info.clone();
        i.cameras = board
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for c in &i.cameras {
            let changed = last_states.get(&c.name).is_none_or(|(online, at): &(bool, Instant)| {
                *online != c.online || at.elapsed() >= Duration::from_secs(60)
            });
            if changed {
                last_states.insert(c.name.clone(), (c.online, Instant::now()));
                alerts.camera_state(CameraState {
                    store: store.clone(),
                    node: node.clone(),
                    camera: c.name.clone(),
                    online: c.online,
                    fps: c.fps,
                    last_frame_ms: c.last_frame_ms,
                });
            }
        }
        let Ok(bytes) = serde_json::to_vec(&i) else { continue };
        if mesh.set_info(bytes).await.is_err() {
            break;
        }
    }
}

/// Synthetic events at `rate` a second until `until_ms` or the stop (`lpmesh run --synthetic`, for
/// load tests without cameras).
pub(crate) async fn synthetic_load(
    tx: tokio::sync::mpsc::Sender<crate::event::Event>,
    stop: super::Stop,
    store: String,
    node: String,
    rate: f64,
    until_ms: i64,
) {
    let run = chrono::Utc::now().timestamp_millis();
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut n = 0u64;
    while !stop.is_stopped() {
        every.tick().await;
        if chrono::Utc::now().timestamp_millis() >= until_ms {
            break;
        }
        n += 1;
        let e = crate::event::Event::synthetic(&store, &node, run, n, chrono::Utc::now().timestamp_millis());
        if tx.send(e).await.is_err() {
            break;
        }
    }
}
