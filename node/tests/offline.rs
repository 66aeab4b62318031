//! A camera that cannot be reached is retried with backoff, reported as `camera_offline`, and never
//! takes the process down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lpmesh_node::camera::{load_detector, open_camera};
use lpmesh_node::config::{default_model_path, NodeConfig};
use lpmesh_node::event::{EventKind, Phase};
use lpmesh_node::pipeline::{run, RunOptions};
use lpmesh_node::source::opencv::{OpenCvOptions, OpenCvSource, SourceKind};
use lpmesh_node::source::{FrameSource, SourceError};

/// A port nothing listens on, on this machine.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/video.mjpg")
}

#[test]
fn an_unreachable_stream_is_retried_not_fatal() {
    let stop = Arc::new(AtomicBool::new(false));
    let mut src = OpenCvSource::open(SourceKind::parse(&dead_url()), OpenCvOptions::default(), stop.clone())
        .expect("a live source that is down is not an error at start");
    let t = Instant::now();
    for _ in 0..4 {
        match src.next_frame(Vec::new()) {
            Err(SourceError::Unavailable { .. }) => {}
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
    assert!(
        src.stats().failures.load(Ordering::Relaxed) == 0,
        "never connected, so nothing was lost"
    );
    assert!(!src.stats().connected.load(Ordering::Relaxed));
    // Between attempts the source waits (backoff), reporting at least once a second.
    assert!(t.elapsed() > Duration::from_millis(400), "{:?}", t.elapsed());
    stop.store(true, Ordering::Relaxed);
    assert!(matches!(src.next_frame(Vec::new()), Err(SourceError::Stopped)));
}

#[test]
fn a_camera_that_stays_down_raises_camera_offline() {
    let text =
        "store = \"s\"\nnode = \"n\"\n[rules]\noffline_secs = 2.0\n[[camera]]\nname = \"door\"\nsource = \"x\"\n";
    let cfg = NodeConfig::parse(text, std::path::Path::new("t.toml")).unwrap();
    let det = load_detector(&cfg, &default_model_path()).expect("model installed by scripts/setup.sh");
    let stop = Arc::new(AtomicBool::new(false));
    let (capture, mut analyzer) = open_camera(
        &cfg,
        cfg.cameras.first(),
        &dead_url(),
        OpenCvOptions::default(),
        Box::new(det),
        0,
        stop.clone(),
    )
    .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let stats =
        run(
            capture,
            &mut analyzer,
            &RunOptions {
                max_frames: None,
                live: true,
            },
            &stop,
            |r| {
                assert!(!r.online);
                seen.extend(r.events.iter().map(|e| (e.kind, e.phase)));
                Ok(!seen.contains(&(EventKind::CameraOffline, Phase::Start))
                    && started.elapsed() < Duration::from_secs(20))
            },
        )
        .unwrap();
    assert!(seen.contains(&(EventKind::CameraOffline, Phase::Start)), "{seen:?}");
    assert_eq!(stats.frames, 0);
    assert!(stats.offline_heartbeats >= 2);
}
