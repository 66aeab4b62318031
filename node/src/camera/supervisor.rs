//! The camera supervisor: one camera's pipeline on its own thread, started again after a failure
//! or a zone edit, feeding the node's event queue, the tablets' camera board and the evidence worker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::camera::{load_detector, open_camera, resolve_source, CameraError};
use crate::config::{default_model_path, CameraConfig, NodeConfig};
use crate::event::{Event, EvidenceId, EvidenceRef};
use crate::evidence::clip::{Job, Subject, Worker};
use crate::evidence::ring::{Ring, RingBoxes, MAX_RING_BYTES, NO_TRACK};
use crate::pipeline::{run, RunOptions};
use crate::source::opencv::{OpenCvOptions, SourceKind};

/// The model a node's cameras use: the configured one, or the one the models script installs.
pub fn model_path(cfg: &NodeConfig) -> PathBuf {
    cfg.detector.model.clone().unwrap_or_else(default_model_path)
}

/// Where a camera's evidence goes: the node's store and its counters.
pub type EvidenceSink = (
    Arc<crate::evidence::store::EvidenceStore>,
    Arc<crate::evidence::EvidenceStats>,
);

/// One camera's pipeline on its own thread; its events go to `tx`. A camera whose pipeline fails
/// is reported and started again after a pause; the others keep running.
#[allow(clippy::too_many_arguments)]
pub fn spawn_camera(
    cfg: NodeConfig,
    cam: CameraConfig,
    tx: tokio::sync::mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
    board: crate::board::CameraBoard,
    zone_control: Arc<crate::zone_control::ZoneControl>,
    metrics: Arc<crate::ops::NodeMetrics>,
    evidence: Option<EvidenceSink>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let model = model_path(&cfg);
        let polygons = |cam: &CameraConfig| -> Vec<(String, crate::zone::Polygon)> {
            cam.zones
                .iter()
                .filter_map(|z| {
                    let pts = z
                        .polygon
                        .iter()
                        .filter(|p| p.len() == 2)
                        .map(|p| [p[0], p[1]])
                        .collect();
                    crate::zone::Polygon::new(pts).map(|p| (z.name.clone(), p))
                })
                .collect()
        };
        let reload = zone_control.reload_flag(&cam.name).unwrap_or_default();
        let mut cam = cam;
        let mut live = crate::board::CameraLive {
            name: cam.name.clone(),
            ..Default::default()
        };
        let publish = |live: &crate::board::CameraLive| {
            board
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(live.name.clone(), live.clone());
        };
        publish(&live);
        let mut window = (std::time::Instant::now(), 0u32);
        while !stop.load(Ordering::Relaxed) {
            // Zones edited in the UI since the last start apply from here.
            if let Some(c) = zone_control.camera(&cam.name) {
                cam = c;
            }
            reload.store(false, Ordering::Relaxed);
            let zones = polygons(&cam);
            let source = resolve_source(&cam.source);
            let result = (|| -> Result<(), CameraError> {
                let det = load_detector(&cfg, &model)?;
                let is_file = !SourceKind::parse(&source).is_live();
                let (capture, mut analyzer) = open_camera(
                    &cfg,
                    Some(&cam),
                    &source,
                    OpenCvOptions {
                        realtime: is_file,
                        looping: cam.looping,
                    },
                    Box::new(det),
                    chrono::Utc::now().timestamp_millis(),
                    stop.clone(),
                )?;
                let capture = capture.with_still(zone_control.clone(), &cam.name);
                // This run's recent frames and its evidence worker: a restarted camera starts both
                // afresh (its stream time starts again).
                let ev = &cfg.evidence;
                let ring = evidence.as_ref().map(|_| Ring::new(ev.ring_secs(), MAX_RING_BYTES));
                let capture = match &ring {
                    Some(r) => capture.with_ring(r.clone(), ev.fps, ev.max_width, ev.blur_faces),
                    None => capture,
                };
                let worker = match (&evidence, &ring) {
                    (Some((store, stats)), Some(r)) => {
                        Some(Worker::spawn(ev.clone(), store.clone(), r.clone(), stats.clone()))
                    }
                    _ => None,
                };
                let opts = RunOptions {
                    max_frames: None,
                    live: true,
                };
                let mut resized = 0;
                let ran = run(capture, &mut analyzer, &opts, &stop, |r| {
                    let size = r.online.then_some((r.width, r.height));
                    metrics.frame(&cam.name, r.counts, size, r.infer, r.events);
                    if r.counts.resized > resized {
                        resized = r.counts.resized;
                        tracing::warn!(camera = %cam.name, width = r.width, height = r.height,
                            tracks_ended = r.ended.len(),
                            "camera frame size changed: its tracks ended, new ones start at the new size");
                    }
                    // Where people are, for hiding their heads: from analysed frames, and from frames
                    // the motion gate skipped because nothing moved since (so the boxes still hold);
                    // never from a camera's offline heartbeat.
                    if let Some(ring) = ring.as_ref().filter(|_| r.online) {
                        let (w, h) = (r.width.max(1) as f32, r.height.max(1) as f32);
                        ring.push_boxes(RingBoxes {
                            pts: r.pts,
                            // Tracked people by id, then every detection besides (someone not yet
                            // tracked has a head to hide too); `NO_TRACK` is nobody's id.
                            people: r
                                .people
                                .iter()
                                .map(|p| (p.id, &p.bbox))
                                .chain(r.detections.iter().map(|d| (NO_TRACK, &d.bbox)))
                                .map(|(id, b)| (id, [b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h]))
                                .collect(),
                        });
                    }
                    for e in r.events {
                        let mut e = e.clone();
                        if let Some(worker) = worker.as_ref().filter(|_| ev.wants(&e)) {
                            let id = EvidenceId::random();
                            let job = Job {
                                id: id.clone(),
                                incident: e.incident.clone(),
                                camera: e.camera.clone(),
                                pts: r.pts,
                                at_ms: e.at_ms,
                                subject: Subject {
                                    track: e.track,
                                    bbox: e.bbox.map(|b| [b[0], b[1], b[0] + b[2], b[1] + b[3]]),
                                },
                            };
                            // The event says evidence exists only when the worker took the job.
                            if worker.offer(job) {
                                e.evidence = Some(EvidenceRef {
                                    node: e.node.clone(),
                                    id,
                                });
                            }
                        }
                        let (kind, phase, reason) = (e.kind, e.phase, e.detail.reason);
                        tx.blocking_send(e).map_err(|_| "the node is stopping".to_string())?;
                        if kind == crate::event::EventKind::CameraTamper {
                            live.tamper = match phase {
                                crate::event::Phase::End => None,
                                _ => Some(reason.map_or("tamper".into(), |r| format!("{r:?}").to_lowercase())),
                            };
                        }
                    }
                    if r.online {
                        window.1 += 1;
                        live.last_frame_ms = Some(chrono::Utc::now().timestamp_millis());
                    }
                    // The tablets' view of this camera, refreshed about once a second.
                    let elapsed = window.0.elapsed().as_secs_f32();
                    if elapsed >= 1.0 {
                        live.online = r.online;
                        live.fps = window.1 as f32 / elapsed;
                        window = (std::time::Instant::now(), 0);
                        live.occupancy = crate::zone::occupancy(&zones, r.people, r.width, r.height);
                        publish(&live);
                    }
                    // New zones: end this run (its open incidents close) and start again with them.
                    Ok(!reload.load(Ordering::Relaxed))
                });
                // What was queued is made from the frames the ring holds before the camera restarts.
                if let Some(w) = worker {
                    w.finish();
                }
                ran.map_err(|e| CameraError::Pipeline(Box::new(e)))?;
                Ok(())
            })();
            live.online = false;
            live.fps = 0.0;
            publish(&live);
            match result {
                Ok(()) if stop.load(Ordering::Relaxed) => break,
                Ok(()) if reload.load(Ordering::Relaxed) => {
                    tracing::info!(camera = %cam.name, "restarting the camera with its new zones");
                    continue;
                }
                Ok(()) => tracing::warn!(camera = %cam.name, "camera stream ended; starting it again"),
                Err(e) => {
                    tracing::error!(camera = %cam.name, error = %format!("{e:#}"), "camera failed; retrying in 5 s")
                }
            }
            for _ in 0..50 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    })
}
