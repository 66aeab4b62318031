//! What an installer and a monitoring system see of a running node, on its own listener (`[ops] listen`,
//! loopback by default, so the counters need no login): `/metrics` in the Prometheus text format
//! (written by `prometheus-client`, [`lpmesh_web::metrics`]), `/health` (the process answers) and
//! `/ready` (cameras opened, model loaded, mesh up).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lpmesh_mesh::net::MeshHandle;
use lpmesh_web::metrics::{Exposition, HistogramValue};
use tokio::sync::watch;

use crate::board::CameraBoard;
use crate::event::Event;
use crate::pipeline::FrameCounts;
use crate::uplink::UplinkStatus;

/// Upper bounds (ms) of the inference latency histogram.
pub const INFER_BUCKETS_MS: [f64; 10] = [2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 250.0, 1000.0];

#[derive(Default, Clone)]
struct CameraCounters {
    frames: u64,
    inferred: u64,
    skipped_by_motion: u64,
    dropped: u64,
    resized: u64,
    /// The size of the last picture the camera delivered.
    size: Option<(u32, u32)>,
    buckets: [u64; INFER_BUCKETS_MS.len()],
    infer_count: u64,
    infer_sum_s: f64,
    last: FrameCounts,
}

/// Counters the camera threads feed; everything else is read from its owner when scraped.
#[derive(Default)]
pub struct NodeMetrics {
    cameras: Mutex<BTreeMap<String, CameraCounters>>,
    events: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl NodeMetrics {
    /// One analysed frame of `camera` (counts are cumulative within one run of its pipeline), of `size`
    /// when it held a picture.
    pub fn frame(
        &self,
        camera: &str,
        counts: FrameCounts,
        size: Option<(u32, u32)>,
        infer: Duration,
        events: &[Event],
    ) {
        {
            let mut cams = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
            // Called for every frame: allocate the camera's name once, not per frame.
            if !cams.contains_key(camera) {
                cams.insert(camera.to_string(), CameraCounters::default());
            }
            let Some(c) = cams.get_mut(camera) else { return };
            // A restarted pipeline counts from zero again.
            let base = if counts.frames >= c.last.frames {
                c.last
            } else {
                FrameCounts::default()
            };
            c.frames += counts.frames - base.frames;
            c.inferred += counts.inferred.saturating_sub(base.inferred);
            c.skipped_by_motion += counts.skipped_by_motion.saturating_sub(base.skipped_by_motion);
            c.dropped += counts.dropped.saturating_sub(base.dropped);
            c.resized += counts.resized.saturating_sub(base.resized);
            c.last = counts;
            if size.is_some() {
                c.size = size;
            }
            if !infer.is_zero() {
                let ms = infer.as_secs_f64() * 1000.0;
                for (i, b) in INFER_BUCKETS_MS.iter().enumerate() {
                    if ms <= *b {
                        c.buckets[i] += 1;
                    }
                }
                c.infer_count += 1;
                c.infer_sum_s += infer.as_secs_f64();
            }
        }
        if !events.is_empty() {
            let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                *ev.entry((e.camera.clone(), e.kind.as_str())).or_insert(0) += 1;
            }
        }
    }
}

/// Every analysed frame allocates and frees buffers of about a megabyte (decoded frames, tensors).
/// glibc raises its mmap threshold after the first such free and then serves them from per-thread
/// heaps that fragment and are not given back: a fixed threshold keeps them as mappings returned on
/// free (measured: 235-248 MB RSS per demo node before, 170-174 MB after).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_allocator() {
    // glibc's own variable, set by an operator, wins.
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    // SAFETY: mallopt only changes allocator settings; callers run it first thing, before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// Free and total bytes of the filesystem holding `path`.
/// What a benchmark ran on, printed with its figures: a figure is read against its cores, and an
/// fsync on tmpfs (memory) costs nothing, so durable-write figures from there mean little.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub data_dir: String,
    /// The filesystem the data directory lies on (`ext4`, `tmpfs`, ...; empty when unknown).
    pub filesystem: String,
    pub on_tmpfs: bool,
}

/// The machine facts for a benchmark keeping its data in `dir`.
pub fn machine(dir: &std::path::Path) -> Machine {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    // The directory may not exist yet (or any more): its nearest existing ancestor tells the mount.
    let real = dir
        .ancestors()
        .find_map(|d| std::fs::canonicalize(d).ok())
        .unwrap_or_else(|| dir.to_path_buf());
    let filesystem = filesystem_of(&mounts, &real).unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        data_dir: dir.display().to_string(),
        on_tmpfs: filesystem == "tmpfs",
        filesystem,
    }
}

/// The type of the filesystem holding `path`, from `/proc/mounts` text: the longest mount point
/// that contains it (a later mount over the same point wins, as the kernel's does).
fn filesystem_of(mounts: &str, path: &std::path::Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(point), Some(kind)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        // /proc/mounts escapes spaces in paths as \040.
        let point = point.replace("\\040", " ");
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), kind.to_string()));
        }
    }
    best.map(|(_, k)| k)
}

pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the right type.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // The fields are u32 on 32-bit targets (many camera SoCs), u64 here.
    #[allow(clippy::unnecessary_cast)]
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    let (avail, blocks) = (st.f_bavail as u64, st.f_blocks as u64);
    Some((avail * frsize, blocks * frsize))
}

/// Bytes under `dir` (the node's database, keys and outbox).
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Nearly full: under 2 % or under 1 GiB free (a month of one node's events is tens of MB; 5 % of a
/// large disk is many GB, and saying "nearly full" then is noise). The node keeps detecting and
/// alerting, and says so.
pub fn nearly_full(free: u64, total: u64) -> bool {
    free < 1024 * 1024 * 1024 || (total > 0 && free * 50 < total)
}

pub struct OpsState {
    pub node: String,
    pub data_dir: std::path::PathBuf,
    pub metrics: Arc<NodeMetrics>,
    pub mesh: MeshHandle,
    pub uplink: Option<watch::Receiver<UplinkStatus>>,
    pub alerts: Option<crate::alerts::Alerts>,
    pub board: CameraBoard,
    pub cameras: Vec<String>,
    /// This node's evidence and what its workers did (none: no evidence kept here).
    pub evidence: Option<(
        Arc<crate::evidence::store::EvidenceStore>,
        Arc<crate::evidence::EvidenceStats>,
    )>,
}

/// The Prometheus text of everything the node knows about itself ([`lpmesh_web::metrics::CONTENT_TYPE`]).
/// Each figure is read from its owner now; a source that does not answer (the mesh stopping) leaves its
/// metrics out of this scrape.
pub async fn render(s: &OpsState) -> Result<String, std::fmt::Error> {
    let mut x = Exposition::default();
    let cams = s.metrics.cameras.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let camera = |name: &String| [("camera", name.clone())];
    for (name, help, get) in [
        (
            "lpmesh_camera_frames_total",
            "Frames analysed per camera.",
            (|c: &CameraCounters| c.frames) as fn(&CameraCounters) -> u64,
        ),
        (
            "lpmesh_camera_frames_detected_total",
            "Frames the detector ran on.",
            |c| c.inferred,
        ),
        (
            "lpmesh_camera_frames_skipped_motion_total",
            "Frames skipped by the motion gate.",
            |c| c.skipped_by_motion,
        ),
        (
            "lpmesh_camera_frames_dropped_total",
            "Stale frames dropped to stay live.",
            |c| c.dropped,
        ),
        (
            "lpmesh_camera_size_changes_total",
            "Times the camera's frame size changed mid-stream (its tracks ended, new ones started).",
            |c| c.resized,
        ),
    ] {
        x.counters(name, help, cams.iter().map(|(cam, c)| (camera(cam), get(c))));
    }
    for (name, help, pick) in [
        (
            "lpmesh_camera_frame_width",
            "Width in pixels of the camera's latest picture.",
            (|s: (u32, u32)| s.0) as fn((u32, u32)) -> u32,
        ),
        (
            "lpmesh_camera_frame_height",
            "Height in pixels of the camera's latest picture.",
            |s| s.1,
        ),
    ] {
        let sizes = cams.iter().filter_map(|(cam, c)| Some((camera(cam), pick(c.size?))));
        x.gauges(name, help, sizes);
    }
    x.histograms(
        "lpmesh_inference_seconds",
        "Detector time per frame.",
        cams.iter().map(|(cam, c)| {
            let hist = HistogramValue {
                buckets: INFER_BUCKETS_MS.iter().map(|ms| ms / 1000.0).zip(c.buckets).collect(),
                count: c.infer_count,
                sum: c.infer_sum_s,
            };
            (camera(cam), hist)
        }),
    );
    // The locks are let go before the first await below: their guards must not live across one.
    {
        let board = s.board.read().unwrap_or_else(|p| p.into_inner());
        x.gauges(
            "lpmesh_camera_online",
            "1 while the camera delivers frames.",
            board.values().map(|c| (camera(&c.name), u32::from(c.online))),
        );
    }
    {
        let events = s.metrics.events.lock().unwrap_or_else(|p| p.into_inner());
        x.counters(
            "lpmesh_events_total",
            "Events raised by this node's cameras, by kind.",
            events
                .iter()
                .map(|((cam, kind), n)| ([("camera", cam.clone()), ("kind", kind.to_string())], *n)),
        );
    }
    if let Ok(m) = s.mesh.stats().await {
        x.gauge("lpmesh_mesh_peers", "Connected peers.", m.peers);
        x.gauge(
            "lpmesh_log_failed",
            "1 while the log refuses writes (a full or failing disk); alerts go on.",
            u32::from(m.log_failed),
        );
        x.gauge("lpmesh_log_records", "Records in this node's log.", m.records);
        for (name, help, v) in [
            (
                "lpmesh_records_appended_total",
                "Records appended by this node.",
                m.appended,
            ),
            (
                "lpmesh_records_received_total",
                "Records received (gossip and anti-entropy).",
                m.received_gossip + m.received_sync,
            ),
            (
                "lpmesh_records_sent_sync_total",
                "Records sent in anti-entropy answers.",
                m.sent_sync,
            ),
            (
                "lpmesh_anti_entropy_repairs_total",
                "Records that arrived by anti-entropy, not gossip.",
                m.repaired,
            ),
            (
                "lpmesh_sync_rounds_total",
                "Anti-entropy rounds answered.",
                m.sync_rounds,
            ),
            (
                "lpmesh_gossip_dropped_total",
                "Messages gossipsub could not queue for a slow peer, control messages included (records among them reach it by anti-entropy).",
                m.gossip_dropped,
            ),
            (
                "lpmesh_handshake_failures_total",
                "Connections that failed before they were up.",
                m.handshake_failures,
            ),
            (
                "lpmesh_records_expired_total",
                "Records removed for being older than the retention period.",
                m.expired,
            ),
            (
                "lpmesh_peers_banned_total",
                "Peers disconnected for a while for sending invalid messages.",
                m.peers_banned,
            ),
            (
                "lpmesh_log_reopened_total",
                "Times the log was reopened after a failed write (a full disk, freed).",
                m.log_reopened,
            ),
            (
                "lpmesh_records_expired_received_total",
                "Records received that had already expired (not stored).",
                m.expired_received,
            ),
        ] {
            x.counter(name, help, v);
        }
        x.counters(
            "lpmesh_records_rejected_total",
            "Refused records and messages by reason.",
            m.rejected.into_iter().map(|(reason, n)| ([("reason", reason)], n)),
        );
    }
    x.counters(
        "lpmesh_records_contents_refused_total",
        "Records kept in the log but left out of the views and summaries: their contents claim times \
         their signed time does not allow (future, past), are disordered, or cannot be read.",
        crate::bounds::refused().map(|(why, n)| ([("reason", why.as_str())], n)),
    );
    if let Some((store, stats)) = &s.evidence {
        use std::sync::atomic::Ordering::Relaxed;
        x.counters(
            "lpmesh_evidence_kept_total",
            "Stills and clips of incidents this node made since it started.",
            [
                ([("part", "still")], stats.stills.load(Relaxed)),
                ([("part", "clip")], stats.clips.load(Relaxed)),
            ],
        );
        x.counters(
            "lpmesh_evidence_missed_total",
            "Incidents that wanted evidence and got none: the worker was behind (dropped) or it failed.",
            [
                ([("reason", "dropped")], stats.dropped.load(Relaxed)),
                ([("reason", "failed")], stats.failed.load(Relaxed)),
            ],
        );
        x.gauge(
            "lpmesh_evidence_encoder_peak_rss_bytes",
            "The most memory a clip encoder (an ffmpeg child process, gone when done) has used.",
            stats.encoder_peak_kb.load(Relaxed) * 1024,
        );
        let store = store.clone();
        if let Ok(u) = tokio::task::spawn_blocking(move || store.usage()).await {
            x.gauge(
                "lpmesh_evidence_bytes",
                "Disk used by the evidence kept now (encrypted).",
                u.bytes,
            );
            x.gauge(
                "lpmesh_evidence_items",
                "Incidents whose evidence is kept now.",
                u.stills,
            );
        }
    }
    x.counter(
        "lpmesh_evidence_refused_total",
        "Requests for evidence refused: no session, a bad, expired or foreign grant, or a removed user.",
        crate::evidence::REFUSED.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Ok(vv) = s.mesh.version_vector().await {
        x.gauge(
            "lpmesh_log_own_seq",
            "Highest seq this node has appended (each durable when counted).",
            vv.get(&s.mesh.origin()).copied().unwrap_or(0),
        );
        x.gauges(
            "lpmesh_log_origin_seq",
            "Per node of the store, the seq up to which this node holds its records (the version vector).",
            vv.iter().map(|(origin, seq)| ([("origin", origin.to_string())], *seq)),
        );
    }
    if let Ok(leader) = s.mesh.leader().await {
        x.gauge(
            "lpmesh_uplink_leader",
            "1 when this node is the store's uplink leader.",
            u32::from(leader == Some(s.mesh.origin())),
        );
    }
    if let Some(u) = &s.uplink {
        let st = u.borrow().clone();
        x.gauge(
            "lpmesh_uplink_outbox_periods",
            "Summary periods waiting to be sent.",
            st.outbox,
        );
        x.gauge(
            "lpmesh_uplink_hq_reachable",
            "1 when HQ answered the last probe.",
            u32::from(st.hq_reachable),
        );
        x.counter(
            "lpmesh_uplink_summaries_sent_total",
            "Summaries HQ answered.",
            st.summaries_sent,
        );
        if let Some(t) = st.last_sync_ms {
            let age = (chrono::Utc::now().timestamp_millis() - t).max(0) as f64 / 1000.0;
            x.gauge(
                "lpmesh_uplink_last_sync_age_seconds",
                "Time since HQ last acknowledged a summary from this node.",
                age,
            );
        }
    }
    x.gauge(
        "lpmesh_data_dir_bytes",
        "Bytes in the node's data directory.",
        dir_size(&s.data_dir),
    );
    if let Some((free, total)) = disk_space(&s.data_dir) {
        x.gauge(
            "lpmesh_disk_free_bytes",
            "Free bytes on the data directory's filesystem.",
            free,
        );
        x.gauge(
            "lpmesh_disk_nearly_full",
            "1 when under 2 % or 1 GiB are free.",
            u32::from(nearly_full(free, total)),
        );
    }
    if let Some(a) = &s.alerts {
        let stats = a.stats();
        for (name, help, get) in [
            (
                "lpmesh_alerts_sent_total",
                "Alerts delivered per route.",
                (|r: &crate::alerts::RouteStats| r.sent) as fn(&crate::alerts::RouteStats) -> u64,
            ),
            (
                "lpmesh_alerts_failed_total",
                "Failed delivery attempts per route.",
                |r| r.failed,
            ),
            (
                "lpmesh_alerts_dropped_total",
                "Alerts lost per route (queue full or undelivered at stop).",
                |r| r.dropped,
            ),
            (
                "lpmesh_alerts_held_by_cooldown_total",
                "Alerts held back by the cooldown.",
                |r| r.filtered.cooldown,
            ),
        ] {
            let series = stats.iter().map(|r| {
                (
                    [("route", r.name.clone()), ("type", r.kind.as_str().to_string())],
                    get(r),
                )
            });
            x.counters(name, help, series);
        }
        x.gauges(
            "lpmesh_alerts_queued",
            "Alerts waiting per route.",
            stats.iter().map(|r| ([("route", r.name.clone())], r.queued)),
        );
    }
    x.encode()
}

async fn metrics(State(s): State<Arc<OpsState>>) -> Response {
    match render(&s).await {
        Ok(text) => ([(header::CONTENT_TYPE, lpmesh_web::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics could not be written");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Ready: the mesh listens and every camera has opened (its model loaded, a frame seen).
async fn ready(State(s): State<Arc<OpsState>>) -> Response {
    let mesh_up = s.mesh.listen_addrs().await.map(|a| !a.is_empty()).unwrap_or(false);
    let board = s.board.read().unwrap_or_else(|p| p.into_inner()).clone();
    let waiting: Vec<&String> = s
        .cameras
        .iter()
        .filter(|c| board.get(*c).is_none_or(|b| b.last_frame_ms.is_none()))
        .collect();
    let ok = mesh_up && waiting.is_empty();
    let body = serde_json::json!({ "ready": ok, "node": s.node, "mesh": mesh_up, "cameras_waiting": waiting });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub fn app(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(state)
}

/// Serves the ops endpoints; a failure to listen is reported and the node goes on without them.
pub async fn serve(state: Arc<OpsState>, addr: SocketAddr) -> Option<lpmesh_web::serve::Running> {
    match lpmesh_web::serve::serve(app(state), addr, None, "operations").await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "metrics and health endpoints are not available");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filesystem_of_a_path_is_its_longest_mount_point() {
        let mounts = "/dev/sda1 / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n/dev/sdb1 /tmp/data xfs rw 0 0\nodd line\ntmpfs /run/my\\040dir tmpfs rw 0 0\n";
        let fs = |p: &str| filesystem_of(mounts, std::path::Path::new(p));
        assert_eq!(fs("/tmp/lpmesh-bench").as_deref(), Some("tmpfs"));
        assert_eq!(fs("/tmp/data/x").as_deref(), Some("xfs"));
        // A path component is not a prefix of another: /tmpfoo lies on /.
        assert_eq!(fs("/tmpfoo").as_deref(), Some("ext4"));
        assert_eq!(fs("/run/my dir/x").as_deref(), Some("tmpfs"));
        assert_eq!(filesystem_of("", std::path::Path::new("/x")), None);
    }

    use super::*;

    #[test]
    fn disk_space_and_sizes() {
        let dir = std::env::temp_dir().join(format!("lpmesh-ops-{}", rand::random::<u32>()));
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("log/db"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.join("node.key"), [1u8; 100]).unwrap();
        assert_eq!(dir_size(&dir), 4196);
        let (free, total) = disk_space(&dir).unwrap();
        assert!(total > 0 && free <= total);
        assert!(disk_space(std::path::Path::new("/no/such/dir")).is_none());
        assert!(nearly_full(100 << 20, 100 << 30), "100 MiB free is nearly full");
        assert!(nearly_full(1 << 30, 100 << 30), "1 % free is nearly full");
        assert!(!nearly_full(20 << 30, 100 << 30));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
