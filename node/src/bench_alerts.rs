//! `lpmesh bench alerts`: how long an incident takes to reach (a) the MQTT message of node B's alert
//! route and (b) the event on node A's open UI stream. Everything is real and on loopback: two mesh
//! nodes, a Mosquitto broker started for the run, A's UI over HTTP with a logged-in session reading
//! `/api/stream`.
//!
//! - By default from the moment the incident is appended on B (the mesh, the alert route, the UI).
//! - With `--from-frame`, from the frame in which it happened: B runs a real camera (the demo's, or a
//!   configured one) on footage replayed at its own rate, through the same supervisor, detector,
//!   tracker, rules and event queue as `lpmesh run`. A frame's time is when the camera delivered it
//!   (stream time 0 is the camera's start; the replay waits for each frame's time), which is the
//!   time the event carries; so the figure holds decoding, inference, tracking, the rules, the queue
//!   and the durable append, besides the mesh and the routes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_mesh::net::{self, MeshConfig, MeshHandle};
use lpmesh_mesh::record::RecordKind;
use serde::Serialize;

use crate::alerts::{self, AlertsConfig, RouteConfig};
use crate::event::{Detail, Event, EventKind, Phase, Severity};
use crate::ui::auth::Role;
use crate::ui::{self, UiState};

#[derive(Debug, thiserror::Error)]
#[error("bench alerts: {0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

#[derive(Debug, Serialize)]
pub struct AlertsBench {
    /// What the latencies are measured from: `append` (the incident appended on B) or `frame` (the
    /// camera frame in which it happened).
    pub from: String,
    /// With `frame`: the footage, the camera's analysis rate and how long it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<CameraRun>,
    pub incidents: usize,
    pub mqtt_received: usize,
    pub mqtt_p50_ms: f64,
    pub mqtt_p99_ms: f64,
    pub stream_received: usize,
    pub stream_p50_ms: f64,
    pub stream_p99_ms: f64,
}

impl AlertsBench {
    /// The figures of `incidents`, from the latencies (ms) each channel saw.
    fn of(from: &str, camera: Option<CameraRun>, incidents: usize, mut mq: Vec<f64>, mut st: Vec<f64>) -> AlertsBench {
        AlertsBench {
            from: from.into(),
            camera,
            incidents,
            mqtt_received: mq.len(),
            mqtt_p50_ms: pct(&mut mq, 0.5),
            mqtt_p99_ms: pct(&mut mq, 0.99),
            stream_received: st.len(),
            stream_p50_ms: pct(&mut st, 0.5),
            stream_p99_ms: pct(&mut st, 0.99),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CameraRun {
    pub source: String,
    pub detect_fps: f64,
    pub seconds: f64,
    /// Incidents by kind (`restricted_entry`, `line_crossing`, ...).
    pub kinds: std::collections::BTreeMap<String, usize>,
}

/// A broker for the run, on a free loopback port; stopped on drop.
struct Broker {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Broker {
    fn start() -> Result<Broker, BenchError> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| err("mosquitto not found: run scripts/setup.sh (Debian package mosquitto)"))?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("lpmesh-bench-alerts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(err)?;
        let conf = dir.join("mosquitto.conf");
        // As root Mosquitto would switch users and lose access to this directory.
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"),
        )
        .map_err(err)?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(err)?;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(err("mosquitto did not start"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Broker { child, dir, port })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, BenchError> {
    lpmesh_web::clock::free_loopback_port().map_err(err)
}

fn mesh_node(dir: &Path, secrets: &StoreSecrets, boot: Vec<net::Addr>) -> Result<MeshHandle, BenchError> {
    let mut cfg = MeshConfig::new(&secrets.store, secrets.psk().map_err(err)?, dir.join("log"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().map_err(err)?];
    cfg.mdns = false;
    cfg.bootstrap = boot;
    net::start(
        cfg,
        libp2p_identity::Keypair::generate_ed25519(),
        secrets.recipient().map_err(err)?,
    )
    .map_err(err)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// When an incident was first seen on a channel (repeats, e.g. an MQTT redelivery, do not count):
/// the instant, and the wall clock in Unix ms (what an event's frame time is compared with).
#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    #[cfg_attr(not(feature = "vision"), allow(dead_code))]
    wall_ms: f64,
}

type SeenMap = Arc<Mutex<HashMap<String, Seen>>>;

fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn first_seen(seen: &Mutex<HashMap<String, Seen>>, id: &str) {
    if let Ok(mut m) = seen.lock() {
        m.entry(id.to_string()).or_insert_with(|| Seen {
            at: Instant::now(),
            wall_ms: wall_ms(),
        });
    }
}

/// The two nodes, the broker, B's alert route, A's UI and the two listeners.
struct Rig {
    broker: Broker,
    root: PathBuf,
    #[cfg_attr(not(feature = "vision"), allow(dead_code))]
    secrets: StoreSecrets,
    a: MeshHandle,
    b: MeshHandle,
    #[cfg_attr(not(feature = "vision"), allow(dead_code))]
    db: PathBuf,
    al: alerts::Alerts,
    running: ui::Running,
    seen_mqtt: SeenMap,
    seen_stream: SeenMap,
}

async fn rig() -> Result<Rig, BenchError> {
    let broker = tokio::task::spawn_blocking(Broker::start).await.map_err(err)??;
    let root = std::env::temp_dir().join(format!("lpmesh-bench-alerts-nodes-{}", std::process::id()));
    let (da, db) = (root.join("a"), root.join("b"));
    for d in [&da, &db] {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let secrets = StoreSecrets::generate("bench-store").map_err(err)?;
    secrets.save(&da).map_err(err)?;
    let a = mesh_node(&da, &secrets, vec![])?;
    let mut boot = Vec::new();
    for _ in 0..100 {
        if let Some(addr) = a.listen_addrs().await.map_err(err)?.first() {
            boot.push(format!("{addr}/p2p/{}", a.peer_id()).parse().map_err(err)?);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = mesh_node(&db, &secrets, boot)?;
    // B's alert route to the broker; every incident is worth an alert here.
    let route: RouteConfig = toml::from_str(&format!(
        "name = \"bench\"\ntype = \"mqtt\"\nbroker = \"127.0.0.1:{}\"\nmin_severity = \"info\"\ncooldown_secs = 0\n",
        broker.port
    ))
    .map_err(err)?;
    let cfg = AlertsConfig { route: vec![route] };
    let al = alerts::start(&cfg, "bench-store", "b", chrono_tz::UTC).map_err(err)?;
    tokio::spawn(crate::node::follow_alerts(
        b.clone(),
        secrets.store_secret().map_err(err)?,
        al.clone(),
        "b".into(),
        String::new(),
    ));
    // A's UI, a logged-in session on its stream.
    let state = UiState::new(
        "bench-store",
        "a",
        da.clone(),
        a.clone(),
        secrets.store_secret().map_err(err)?,
        None,
        Default::default(),
        chrono_tz::UTC,
        false,
    );
    tokio::spawn(ui::feed(state.clone(), None));
    state
        .users
        .add("bench", Role::Security, "bench password")
        .map_err(err)?;
    let running = ui::serve(state.clone(), "127.0.0.1:0".parse().map_err(err)?, None)
        .await
        .map_err(err)?;
    let base = format!("http://{}", running.addr);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let login = hyper::Request::post(format!("{base}/api/login"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            r#"{"name":"bench","password":"bench password"}"#,
        )))
        .map_err(err)?;
    let resp = client.request(login).await.map_err(err)?;
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| err("login gave no cookie"))?
        .to_string();
    let seen_stream: SeenMap = Default::default();
    let stream_client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = hyper::Request::get(format!("{base}/api/stream"))
        .header("cookie", &cookie)
        .body(Empty::new())
        .map_err(err)?;
    let mut body = stream_client.request(req).await.map_err(err)?.into_body();
    let seen = seen_stream.clone();
    tokio::spawn(async move {
        let mut buf = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Some(data) = frame.data_ref() else { continue };
            buf.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buf.find("\n\n") {
                let msg: String = buf.drain(..end + 2).collect();
                if let Some(json) = msg.lines().find_map(|l| l.strip_prefix("data:")) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(json.trim()) {
                        if let Some(id) = v["incident"]["id"].as_str() {
                            first_seen(&seen, id);
                        }
                    }
                }
            }
        }
    });
    // An MQTT subscriber standing in for the guards' radio gateway.
    let seen_mqtt: SeenMap = Default::default();
    let mut opts = rumqttc::MqttOptions::new("bench-subscriber", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(10));
    let (sub, mut ev) = rumqttc::AsyncClient::new(opts, 64);
    sub.subscribe("lpmesh/#", rumqttc::QoS::AtLeastOnce)
        .await
        .map_err(err)?;
    let seen = seen_mqtt.clone();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = e {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                    if let Some(id) = v["incident"].as_str() {
                        first_seen(&seen, id);
                    }
                }
            }
        }
    });
    // Let the mesh, the route and both listeners settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Rig {
        broker,
        root,
        secrets,
        a,
        b,
        db,
        al,
        running,
        seen_mqtt,
        seen_stream,
    })
}

impl Rig {
    async fn stop(self) {
        self.al.shutdown(Duration::from_secs(1)).await;
        self.running.shutdown(Duration::from_millis(200)).await;
        let _ = self.a.shutdown().await;
        let _ = self.b.shutdown().await;
        drop(self.broker);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub async fn run(incidents: usize) -> Result<AlertsBench, BenchError> {
    let rig = rig().await?;
    let b = &rig.b;
    let mut appended: Vec<(String, Instant)> = Vec::with_capacity(incidents);
    let now = chrono::Utc::now().timestamp_millis();
    for k in 0..incidents {
        let id = format!("b/stockroom/{now}-{k}");
        let e = Event {
            incident: id.clone(),
            phase: Phase::Start,
            store: "bench-store".into(),
            node: "b".into(),
            camera: "stockroom".into(),
            zone: Some("stockroom".into()),
            kind: EventKind::RestrictedEntry,
            severity: Severity::Medium,
            started_at_ms: now + k as i64,
            at_ms: now + k as i64,
            ended_at_ms: None,
            track: Some(k as u64),
            bbox: Some([0.2, 0.3, 0.1, 0.3]),
            confidence: 0.8,
            model: "nanodet-m-416".into(),
            evidence: None,
            detail: Detail::default(),
        };
        let bytes = serde_json::to_vec(&e).map_err(err)?;
        appended.push((id, Instant::now()));
        b.append(vec![(RecordKind::Event, bytes)]).await.map_err(err)?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lat = |seen: &SeenMap| -> Vec<f64> {
        let m = seen.lock().map(|m| m.clone()).unwrap_or_default();
        appended
            .iter()
            .filter_map(|(id, t)| {
                m.get(id)
                    .map(|r| r.at.saturating_duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    let (mq, st) = (lat(&rig.seen_mqtt), lat(&rig.seen_stream));
    rig.stop().await;
    Ok(AlertsBench::of("append", None, incidents, mq, st))
}

/// The camera `--from-frame` runs when none is configured: the demo's first camera (its footage,
/// zones, line and rules), which `python3 models/build.py` and `scripts/setup.sh` install for.
#[cfg(feature = "vision")]
const DEMO_CAMERA: &str = include_str!("../../config/demo/node-1.toml");

/// `--from-frame`: B's camera runs on its footage for `seconds`; every incident it raises is timed
/// from its frame to the MQTT message and to A's UI stream.
#[cfg(feature = "vision")]
pub async fn from_frame(seconds: f64, config: Option<&Path>) -> Result<AlertsBench, BenchError> {
    use crate::camera::supervisor::{model_path, spawn_camera};
    use crate::config::NodeConfig;

    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        return Err(err(format!(
            "--seconds {seconds}: give a number of seconds, more than 0 and at most a day"
        )));
    }
    let mut cfg = match config {
        Some(p) => NodeConfig::load(p).map_err(err)?,
        None => NodeConfig::parse(DEMO_CAMERA, Path::new("config/demo/node-1.toml")).map_err(err)?,
    };
    let mut cam = cfg
        .cameras
        .first()
        .cloned()
        .ok_or_else(|| err("the configuration has no [[camera]]"))?;
    if cam.zones.iter().all(|z| z.kind != crate::rules::ZoneKind::Restricted) && cam.lines.is_empty() {
        return Err(err(format!(
            "camera {}: no restricted zone and no line, so nothing to time",
            cam.name
        )));
    }
    // A replay that does not loop: every frame is seen once, at its time.
    cam.looping = false;
    // Fails here, not in the camera's retry loop, when the model or ONNX Runtime is missing.
    let probe = cfg.clone();
    tokio::task::spawn_blocking(move || crate::camera::load_detector(&probe, &model_path(&probe)).map(drop))
        .await
        .map_err(err)?
        .map_err(err)?;
    let rig = rig().await?;
    cfg.store = rig.secrets.store.clone();
    cfg.node = "b".into();
    cfg.data_dir = rig.db.clone();
    cfg.cameras = vec![cam.clone()];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (cam_tx, mut cam_rx) = tokio::sync::mpsc::channel::<Event>(crate::node::EVENT_QUEUE);
    let (log_tx, log_rx) = tokio::sync::mpsc::channel::<Event>(crate::node::EVENT_QUEUE);
    // Between the camera and the log, as the node's event queue: notes each alert's frame time.
    let frames: Arc<Mutex<Vec<(String, String, i64)>>> = Default::default();
    let noted = frames.clone();
    let forward = tokio::spawn(async move {
        while let Some(e) = cam_rx.recv().await {
            if alerts::is_alertable(&e, "b") {
                if let Ok(mut f) = noted.lock() {
                    f.push((e.incident.clone(), e.kind.as_str().to_string(), e.at_ms));
                }
            }
            if log_tx.send(e).await.is_err() {
                break;
            }
        }
    });
    let appender = tokio::spawn(crate::node::append_events(rig.b.clone(), log_rx, None));
    let camera = spawn_camera(
        cfg.clone(),
        cam.clone(),
        cam_tx,
        stop.clone(),
        Default::default(),
        crate::zone_control::ZoneControl::new(rig.root.join("bench.toml"), &cfg.cameras),
        Arc::new(crate::ops::NodeMetrics::default()),
        None,
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ran = started.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || camera.join())
        .await
        .map_err(err)?
        .map_err(|_| err("the camera thread panicked"))?;
    let _ = forward.await;
    let _ = appender.await;
    // What is on its way arrives within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frames = frames.lock().map(|f| f.clone()).unwrap_or_default();
    let lat = |seen: &SeenMap| -> Vec<f64> {
        let m = seen.lock().map(|m| m.clone()).unwrap_or_default();
        frames
            .iter()
            .filter_map(|(id, _, at_ms)| m.get(id).map(|r| r.wall_ms - *at_ms as f64))
            .collect()
    };
    let (mq, st) = (lat(&rig.seen_mqtt), lat(&rig.seen_stream));
    let mut kinds = std::collections::BTreeMap::new();
    for (_, kind, _) in &frames {
        *kinds.entry(kind.clone()).or_insert(0) += 1;
    }
    rig.stop().await;
    if frames.is_empty() {
        return Err(err(format!(
            "camera {} raised no incident in {ran:.0} s: nothing measured (see the log for the camera)",
            cam.name
        )));
    }
    // A receipt before its frame would be a clock fault, not speed: said, not hidden.
    if let Some(x) = mq.iter().chain(&st).copied().find(|x| *x < 0.0) {
        return Err(err(format!(
            "a message arrived {:.1} ms before its frame: the clock is not monotonic",
            -x
        )));
    }
    let camera = CameraRun {
        source: cam.source.clone(),
        detect_fps: cam.detect_fps,
        seconds: ran,
        kinds,
    };
    Ok(AlertsBench::of("frame", Some(camera), frames.len(), mq, st))
}
