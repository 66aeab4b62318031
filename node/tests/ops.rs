//! `/metrics` over a real single-node mesh with every source filled in (cameras, events, uplink, alerts,
//! evidence): the series a dashboard reads keep their names and labels, and camera names from the
//! configuration reach Prometheus escaped.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use libp2p_identity::Keypair;
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_mesh::net::{self, MeshConfig};
use lpmesh_mesh::record::RecordKind;
use lpmesh_node::alerts::{self, AlertsConfig, RouteConfig, RouteKind};
use lpmesh_node::board::CameraLive;
use lpmesh_node::event::{Detail, Event, EventKind, Phase, Severity};
use lpmesh_node::ops::{self, NodeMetrics, OpsState};
use lpmesh_node::pipeline::FrameCounts;
use lpmesh_node::uplink::UplinkStatus;
use tower::ServiceExt;

/// A camera name as an installer may write it in the configuration: quotes and a backslash.
const ODD: &str = "back \"dock\" \\2";

fn event(camera: &str, kind: EventKind) -> Event {
    Event {
        incident: format!("front/{camera}/1"),
        phase: Phase::Start,
        store: "shop-ops".into(),
        node: "front".into(),
        camera: camera.into(),
        zone: None,
        kind,
        severity: Severity::Medium,
        started_at_ms: 1,
        at_ms: 1,
        ended_at_ms: None,
        track: Some(1),
        bbox: None,
        confidence: 0.8,
        model: "m".into(),
        evidence: None,
        detail: Detail::default(),
    }
}

/// The node's `/metrics` text and its own origin.
async fn scrape() -> (String, String) {
    let dir = lpmesh_testkit::TempDir::new("ops").into_path();
    let secrets = StoreSecrets::generate("shop-ops").unwrap();
    let mut cfg = MeshConfig::new("shop-ops", secrets.psk().unwrap(), dir.join("log"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.mdns = false;
    let mesh = net::start(cfg, Keypair::generate_ed25519(), secrets.recipient().unwrap()).unwrap();
    // A record of its own puts this node in its version vector.
    let record = serde_json::to_vec(&event("plaza", EventKind::Loitering)).unwrap();
    mesh.append(vec![(RecordKind::Event, record)]).await.unwrap();

    let metrics = Arc::new(NodeMetrics::default());
    let counts = FrameCounts {
        frames: 10,
        inferred: 6,
        skipped_by_motion: 3,
        dropped: 1,
        resized: 1,
    };
    for (cam, size) in [("plaza", Some((1280, 720))), (ODD, Some((640, 480))), ("attic", None)] {
        metrics.frame(cam, counts, size, Duration::from_millis(12), &[]);
    }
    metrics.frame(
        "plaza",
        FrameCounts { frames: 11, ..counts },
        None,
        Duration::from_millis(3),
        &[
            event("plaza", EventKind::Loitering),
            event(ODD, EventKind::CameraOffline),
        ],
    );

    let board: lpmesh_node::board::CameraBoard = Default::default();
    for (name, online) in [("plaza", true), (ODD, false)] {
        board.write().unwrap().insert(
            name.to_string(),
            CameraLive {
                name: name.to_string(),
                online,
                fps: 10.0,
                last_frame_ms: Some(1),
                tamper: None,
                occupancy: Default::default(),
            },
        );
    }
    let (_uplink_tx, uplink) = tokio::sync::watch::channel(UplinkStatus {
        outbox: 2,
        summaries_sent: 5,
        last_sync_ms: Some(chrono::Utc::now().timestamp_millis() - 1500),
        ..UplinkStatus::default()
    });
    let route = |name: &str| RouteConfig {
        name: name.into(),
        kind: RouteKind::Console,
        ..RouteConfig::default()
    };
    let alerts = alerts::start(
        &AlertsConfig {
            route: vec![route("guards"), route("odd \"route\"")],
        },
        "shop-ops",
        "front",
        chrono_tz::UTC,
    )
    .unwrap();
    let store = Arc::new(lpmesh_node::evidence::store::EvidenceStore::open(&dir, 72.0, 100).unwrap());
    let stats = Arc::new(lpmesh_node::evidence::EvidenceStats::default());
    stats.stills.store(4, Ordering::Relaxed);
    stats.encoder_peak_kb.store(2048, Ordering::Relaxed);

    let state = OpsState {
        node: "front".into(),
        data_dir: dir.clone(),
        metrics,
        mesh,
        uplink: Some(uplink),
        alerts: Some(alerts),
        board,
        cameras: vec!["plaza".into(), ODD.into()],
        evidence: Some((store, stats)),
    };
    let origin = state.mesh.origin().to_string();
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let res = ops::app(Arc::new(state)).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (String::from_utf8(body.to_vec()).unwrap(), origin)
}

/// Every sample's series (name and labels, as printed), the value dropped.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value in {l:?}");
            series.to_string()
        })
        .collect()
}

/// Every series of [`scrape`] as it was written by hand before `prometheus-client` took over, this
/// node's origin as `ORIGIN`: what dashboards and alert rules query.
const SERIES: &str = r#"
lpmesh_alerts_dropped_total{route="guards",type="console"}
lpmesh_alerts_dropped_total{route="odd \"route\"",type="console"}
lpmesh_alerts_failed_total{route="guards",type="console"}
lpmesh_alerts_failed_total{route="odd \"route\"",type="console"}
lpmesh_alerts_held_by_cooldown_total{route="guards",type="console"}
lpmesh_alerts_held_by_cooldown_total{route="odd \"route\"",type="console"}
lpmesh_alerts_queued{route="guards"}
lpmesh_alerts_queued{route="odd \"route\""}
lpmesh_alerts_sent_total{route="guards",type="console"}
lpmesh_alerts_sent_total{route="odd \"route\"",type="console"}
lpmesh_anti_entropy_repairs_total
lpmesh_camera_frame_height{camera="back \"dock\" \\2"}
lpmesh_camera_frame_height{camera="plaza"}
lpmesh_camera_frame_width{camera="back \"dock\" \\2"}
lpmesh_camera_frame_width{camera="plaza"}
lpmesh_camera_frames_detected_total{camera="attic"}
lpmesh_camera_frames_detected_total{camera="back \"dock\" \\2"}
lpmesh_camera_frames_detected_total{camera="plaza"}
lpmesh_camera_frames_dropped_total{camera="attic"}
lpmesh_camera_frames_dropped_total{camera="back \"dock\" \\2"}
lpmesh_camera_frames_dropped_total{camera="plaza"}
lpmesh_camera_frames_skipped_motion_total{camera="attic"}
lpmesh_camera_frames_skipped_motion_total{camera="back \"dock\" \\2"}
lpmesh_camera_frames_skipped_motion_total{camera="plaza"}
lpmesh_camera_frames_total{camera="attic"}
lpmesh_camera_frames_total{camera="back \"dock\" \\2"}
lpmesh_camera_frames_total{camera="plaza"}
lpmesh_camera_online{camera="back \"dock\" \\2"}
lpmesh_camera_online{camera="plaza"}
lpmesh_camera_size_changes_total{camera="attic"}
lpmesh_camera_size_changes_total{camera="back \"dock\" \\2"}
lpmesh_camera_size_changes_total{camera="plaza"}
lpmesh_data_dir_bytes
lpmesh_disk_free_bytes
lpmesh_disk_nearly_full
lpmesh_events_total{camera="back \"dock\" \\2",kind="camera_offline"}
lpmesh_events_total{camera="plaza",kind="loitering"}
lpmesh_evidence_bytes
lpmesh_evidence_encoder_peak_rss_bytes
lpmesh_evidence_items
lpmesh_evidence_kept_total{part="clip"}
lpmesh_evidence_kept_total{part="still"}
lpmesh_evidence_missed_total{reason="dropped"}
lpmesh_evidence_missed_total{reason="failed"}
lpmesh_evidence_refused_total
lpmesh_gossip_dropped_total
lpmesh_handshake_failures_total
lpmesh_inference_seconds_bucket{camera="attic",le="+Inf"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.002"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.005"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.01"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.015"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.02"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.03"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.05"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.1"}
lpmesh_inference_seconds_bucket{camera="attic",le="0.25"}
lpmesh_inference_seconds_bucket{camera="attic",le="1"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="+Inf"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.002"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.005"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.01"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.015"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.02"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.03"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.05"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.1"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="0.25"}
lpmesh_inference_seconds_bucket{camera="back \"dock\" \\2",le="1"}
lpmesh_inference_seconds_bucket{camera="plaza",le="+Inf"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.002"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.005"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.01"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.015"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.02"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.03"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.05"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.1"}
lpmesh_inference_seconds_bucket{camera="plaza",le="0.25"}
lpmesh_inference_seconds_bucket{camera="plaza",le="1"}
lpmesh_inference_seconds_count{camera="attic"}
lpmesh_inference_seconds_count{camera="back \"dock\" \\2"}
lpmesh_inference_seconds_count{camera="plaza"}
lpmesh_inference_seconds_sum{camera="attic"}
lpmesh_inference_seconds_sum{camera="back \"dock\" \\2"}
lpmesh_inference_seconds_sum{camera="plaza"}
lpmesh_log_failed
lpmesh_log_origin_seq{origin="ORIGIN"}
lpmesh_log_own_seq
lpmesh_log_records
lpmesh_log_reopened_total
lpmesh_mesh_peers
lpmesh_peers_banned_total
lpmesh_records_appended_total
lpmesh_records_contents_refused_total{reason="disordered"}
lpmesh_records_contents_refused_total{reason="foreign_node"}
lpmesh_records_contents_refused_total{reason="future"}
lpmesh_records_contents_refused_total{reason="past"}
lpmesh_records_contents_refused_total{reason="unreadable"}
lpmesh_records_expired_received_total
lpmesh_records_expired_total
lpmesh_records_received_total
lpmesh_records_sent_sync_total
lpmesh_sync_rounds_total
lpmesh_uplink_hq_reachable
lpmesh_uplink_last_sync_age_seconds
lpmesh_uplink_leader
lpmesh_uplink_outbox_periods
lpmesh_uplink_summaries_sent_total
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_keeps_its_name_and_labels() {
    let (text, origin) = scrape().await;
    let got: BTreeSet<String> = series(&text)
        .into_iter()
        .map(|s| s.replace(&origin, "ORIGIN"))
        .collect();
    let want: BTreeSet<String> = SERIES.trim().lines().map(String::from).collect();
    assert_eq!(got, want, "{text}");
    // One help and type line per metric, and nothing after the last sample (no OpenMetrics `# EOF`).
    let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(text.lines().filter(|l| l.starts_with("# HELP ")).count(), types);
    assert!(text
        .lines()
        .all(|l| !l.starts_with('#') || l.starts_with("# HELP ") || l.starts_with("# TYPE ")));
    assert!(text.contains("# TYPE lpmesh_camera_frames_total counter\n"), "{text}");
    assert!(text.contains("# TYPE lpmesh_inference_seconds histogram\n"), "{text}");
}
