//! A store node from start to an orderly stop: the mesh, the invitation listener, the members, the
//! cameras, the event appender, alerts, the tablet UI, the uplink to HQ and the operations endpoint.
//!
//! [`start`] brings a node up and hands back a [`RunningNode`]; [`RunningNode::run`] serves until the
//! [`Stop`] signal and then stops in order: cameras first (their pipelines drain and close open
//! incidents), then the events they produced, the alerts they raised, the listeners, the uplink and
//! last the mesh. The node's background loops live in one named set; a loop that ends early is
//! reported by name. `lpmesh run` is this, plus printing what [`Started`] and [`Stopped`] say.

mod loops;
mod stop;
pub mod ui;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lpmesh_mesh::keys::{KeyError, StoreSecrets};
use lpmesh_mesh::net::{MeshError, MeshHandle, MeshStats};

use crate::alerts::{Alerts, AlertsError};
use crate::config::NodeConfig;
use crate::node::{append_events, start_mesh, NodeError, EVENT_QUEUE};
use crate::uplink::{UplinkError, UplinkHandle, UplinkStatus};
use loops::Loops;
pub use stop::Stop;
pub use ui::UiStarted;

/// How long a stopping node keeps its mesh open after its last records.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(1500);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Alerts(#[from] AlertsError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Certificate(#[from] lpmesh_web::tls::CertError),
    /// A setting the configuration check let through but the runtime cannot use.
    #[error("{setting}: {source}")]
    Setting {
        setting: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("synthetic load of {0} events a second: give more than 0 and at most 10000")]
    SyntheticRate(f64),
    #[error("the UI CA certificate is not PEM")]
    UiCaNotPem,
    #[error("recording this founder's node name")]
    FounderName(#[source] MeshError),
    #[error(
        "this node was admitted as {admitted:?}, but {} says node = {configured:?}: the store takes its events only under its admitted name; set node = {admitted:?}",
        config.display()
    )]
    AdmittedName {
        admitted: String,
        configured: String,
        config: PathBuf,
    },
}

impl RuntimeError {
    fn setting(setting: &'static str, source: impl Into<BoxError>) -> Self {
        RuntimeError::Setting {
            setting,
            source: source.into(),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How `lpmesh run` was asked to run, besides the configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The configuration file: the zone editor writes zones back to it, and errors name it.
    pub config_path: PathBuf,
    /// Synthetic events instead of (or beside) cameras: events a second, and until when (Unix ms).
    pub synthetic: Option<(f64, i64)>,
}

/// Something the person who started the node should read on their terminal, beside the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Warning(String),
    Error(String),
}

/// What a node that started says about itself.
#[derive(Clone, Debug)]
pub struct Started {
    pub node: String,
    pub store: String,
    pub peer_id: String,
    pub listen: Vec<String>,
    /// Where invitations are answered.
    pub enrol_addr: String,
    pub ui: Option<UiStarted>,
    /// The operations endpoint (`/metrics`, `/health`, `/ready`).
    pub ops_addr: Option<SocketAddr>,
    /// Whether an uplink to HQ runs (a store without `[hq] url` sends nothing).
    pub uplink: bool,
    /// Parts that did not start; the node runs without them.
    pub notices: Vec<Notice>,
}

/// What a node that stopped says about its last moments.
#[derive(Debug)]
pub struct Stopped {
    pub uplink: Option<UplinkStatus>,
    pub mesh: Option<MeshStats>,
    /// The mesh did not close cleanly (its last flush failed): what came before is still reported.
    pub mesh_closed: Result<(), MeshError>,
}

/// What the runtime reads from the configuration beyond what [`NodeConfig::load`] checked, read
/// before anything starts, so that a setting it cannot use leaves nothing half started.
struct Settings {
    tz: chrono_tz::Tz,
    ui_addr: Option<SocketAddr>,
    ops_addr: Option<SocketAddr>,
    recipient: Option<lpmesh_hq::envelope::HqRecipient>,
}

impl Settings {
    fn read(cfg: &NodeConfig, opts: &Options) -> Result<Settings, RuntimeError> {
        if let Some((rate, _)) = opts
            .synthetic
            .filter(|(r, _)| !(r.is_finite() && *r > 0.0 && *r <= 10_000.0))
        {
            return Err(RuntimeError::SyntheticRate(rate));
        }
        let addr = |on: bool, text: &str, setting| -> Result<Option<SocketAddr>, RuntimeError> {
            on.then(|| text.parse().map_err(|e| RuntimeError::setting(setting, e)))
                .transpose()
        };
        Ok(Settings {
            tz: crate::schedule::Schedule::parse_tz(&cfg.schedule.timezone)
                .map_err(|e| RuntimeError::setting("[schedule] timezone", e))?,
            ui_addr: addr(cfg.ui.enabled, &cfg.ui.listen, "[ui] listen")?,
            ops_addr: addr(cfg.ops.enabled, &cfg.ops.listen, "[ops] listen")?,
            recipient: match (&cfg.hq.url, &cfg.hq.recipient) {
                (Some(_), Some(r)) => Some(
                    lpmesh_hq::envelope::parse_recipient(r).map_err(|e| RuntimeError::setting("[hq] recipient", e))?,
                ),
                _ => None,
            },
        })
    }
}

/// A node that started, until [`RunningNode::run`] stops it.
pub struct RunningNode {
    cfg: NodeConfig,
    stop: Stop,
    started: Started,
    mesh: MeshHandle,
    loops: Loops,
    appender: tokio::task::JoinHandle<()>,
    alerts: Alerts,
    ui: Option<crate::ui::Running>,
    ops: Option<lpmesh_web::serve::Running>,
    uplink: Option<UplinkHandle>,
    load: Option<tokio::task::JoinHandle<()>>,
    #[cfg(feature = "vision")]
    cameras: Vec<std::thread::JoinHandle<()>>,
}

/// Starts the node on the current tokio runtime. The node watches `stop` from here on: a stop given
/// while it starts is honoured as soon as [`RunningNode::run`] is called.
pub async fn start(cfg: NodeConfig, opts: Options, stop: Stop) -> Result<RunningNode, RuntimeError> {
    let settings = Settings::read(&cfg, &opts)?;
    let mut notices = Vec::new();
    let mesh = start_mesh(&cfg)?;
    let store_secrets = StoreSecrets::load(&cfg.data_dir)?;
    let node_key = lpmesh_mesh::keys::load_node_key(&cfg.data_dir)?;
    // One keyring for every reader, the enrolment listener and the key-epoch follower.
    let reader = crate::bounds::Reader::new(store_secrets.keyring()?, cfg.mesh.time_window_secs);
    // Invitations are answered while the node runs; each admission is logged by the listener.
    let (admitted_tx, mut admitted_rx) = tokio::sync::mpsc::channel(16);
    let enrol_addr = crate::node::start_enrolment(&cfg, reader.ring().clone(), Default::default(), admitted_tx).await?;
    let mut loops = Loops::default();
    // Each node admitted here becomes a member of the store with a record signed by this node.
    let admit_mesh = mesh.clone();
    loops.spawn("admissions", async move {
        while let Some(a) = admitted_rx.recv().await {
            if let Some(item) = crate::node::admission(&a) {
                if let Err(e) = admit_mesh.append(vec![item]).await {
                    tracing::error!(error = %e, node = %a.node.to_peer_id(), "cannot record an admission in the log");
                }
            }
        }
    });
    let (members_tx, members_rx) = tokio::sync::watch::channel(Vec::new());
    let store_founder = crate::node::founder(&store_secrets);
    // The members' names are known before any view reads a record with this reader.
    let initial = crate::node::load_members(&mesh, &reader, store_founder, &node_key).await;
    let me = mesh.origin();
    if store_founder == Some(me) {
        // The founder has no admission to carry its name: it records the name itself.
        if let Some(item) = crate::node::founder_name_record(&initial, &me, &cfg.node) {
            mesh.append(vec![item]).await.map_err(RuntimeError::FounderName)?;
        }
    } else if let Some(admitted_as) = initial.names().get(&me).filter(|n| **n != cfg.node) {
        return Err(RuntimeError::AdmittedName {
            admitted: admitted_as.clone(),
            configured: cfg.node.clone(),
            config: opts.config_path.clone(),
        });
    }
    let members = crate::node::follow_members(
        mesh.clone(),
        reader.clone(),
        store_founder,
        members_tx,
        cfg.mesh.priority,
        cfg.node.clone(),
        node_key.clone(),
    );
    loops.spawn("members", async move {
        let _ = members.await;
    });
    let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let alerts = crate::alerts::start(&cfg.alerts, &cfg.store, &cfg.node, settings.tz)?;
    let appender = tokio::spawn(append_events(
        mesh.clone(),
        rx,
        Some((alerts.clone(), cfg.node.clone(), ui::ui_url(&cfg))),
    ));
    loops.spawn("disk watch", loops::disk_watch(cfg.data_dir.clone()));
    loops.spawn("event log", loops::event_log(mesh.clone(), reader.clone()));
    loops.spawn("mesh counters", loops::mesh_counters(mesh.clone()));
    let uplink = match settings.recipient {
        Some(recipient) => Some(start_uplink(&cfg, recipient, &mesh, &reader)?),
        None => {
            tracing::info!("no [hq] url: this store sends nothing to HQ");
            None
        }
    };
    let board: crate::board::CameraBoard = Default::default();
    let node_metrics: Arc<crate::ops::NodeMetrics> = Default::default();
    let zone_control = crate::zone_control::ZoneControl::new(opts.config_path.clone(), &cfg.cameras);
    let evidence = ui::start_evidence(&cfg, &mut loops, &mut notices);
    let parts = ui::UiParts {
        mesh: mesh.clone(),
        reader: reader.clone(),
        members: store_founder.map(|_| members_rx),
        uplink: uplink.as_ref().map(|u| u.watch()),
        board: board.clone(),
        zone_control: zone_control.clone(),
        evidence: evidence.clone().map(|(s, _)| s),
        node_key: node_key.clone(),
    };
    let ui_at = settings.ui_addr.map(|addr| (addr, settings.tz));
    let (ui, ui_started) = match ui::start_ui(&cfg, ui_at, parts, &mut loops, &mut notices).await? {
        Some((running, started)) => (Some(running), Some(started)),
        None => (None, None),
    };
    let follow_alerts = crate::node::follow_alerts(
        mesh.clone(),
        reader.clone(),
        alerts.clone(),
        cfg.node.clone(),
        ui_started.as_ref().map(|u| u.url.clone()).unwrap_or_default(),
    );
    loops.spawn("alerts from the log", async move {
        let _ = follow_alerts.await;
    });
    let ops = if let Some(addr) = settings.ops_addr {
        let st = Arc::new(crate::ops::OpsState {
            node: cfg.node.clone(),
            data_dir: cfg.data_dir.clone(),
            metrics: node_metrics.clone(),
            mesh: mesh.clone(),
            uplink: uplink.as_ref().map(|u| u.watch()),
            alerts: Some(alerts.clone()),
            board: board.clone(),
            cameras: cfg.cameras.iter().map(|c| c.name.clone()).collect(),
            evidence: evidence.clone(),
        });
        crate::ops::serve(st, addr).await
    } else {
        None
    };
    let info = crate::ui::NodeInfo {
        name: cfg.node.clone(),
        ui: ui_started.as_ref().map(|u| u.url.clone()),
        cameras: Vec::new(),
    };
    loops.spawn(
        "heartbeat info",
        loops::heartbeat_info(
            mesh.clone(),
            info,
            board.clone(),
            alerts.clone(),
            cfg.store.clone(),
            cfg.node.clone(),
        ),
    );
    // Gives the listeners a moment to bind every address before they are reported.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listen = mesh.listen_addrs().await?.iter().map(|a| a.to_string()).collect();
    #[cfg(feature = "vision")]
    let cameras = cfg
        .cameras
        .iter()
        .map(|c| {
            crate::camera::supervisor::spawn_camera(
                cfg.clone(),
                c.clone(),
                tx.clone(),
                stop.flag(),
                board.clone(),
                zone_control.clone(),
                node_metrics.clone(),
                evidence.clone().filter(|_| cfg.evidence.enabled),
            )
        })
        .collect();
    let load = opts.synthetic.map(|(rate, until)| {
        tokio::spawn(loops::synthetic_load(
            tx.clone(),
            stop.clone(),
            cfg.store.clone(),
            cfg.node.clone(),
            rate,
            until,
        ))
    });
    // The appender ends when every producer (cameras, synthetic load) has dropped its sender.
    drop(tx);
    let started = Started {
        node: cfg.node.clone(),
        store: cfg.store.clone(),
        peer_id: mesh.peer_id().to_string(),
        listen,
        enrol_addr,
        ui: ui_started,
        ops_addr: ops.as_ref().map(|r| r.addr),
        uplink: uplink.is_some(),
        notices,
    };
    Ok(RunningNode {
        cfg,
        stop,
        started,
        mesh,
        loops,
        appender,
        alerts,
        ui,
        ops,
        uplink,
        load,
        #[cfg(feature = "vision")]
        cameras,
    })
}

/// The uplink to HQ, for a store that has one (`[hq] url` and `recipient`).
fn start_uplink(
    cfg: &NodeConfig,
    recipient: lpmesh_hq::envelope::HqRecipient,
    mesh: &MeshHandle,
    reader: &crate::bounds::Reader,
) -> Result<UplinkHandle, RuntimeError> {
    let secrets = StoreSecrets::load(&cfg.data_dir)?;
    let settings = crate::uplink::UplinkSettings {
        store: cfg.store.clone(),
        url: cfg.hq.url.clone().unwrap_or_default(),
        ca_cert: cfg.hq.ca_cert.clone(),
        recipient,
        period_secs: cfg.hq.period_secs,
        probe_every: Duration::from_secs_f64(cfg.hq.probe_secs),
        resend_every: Duration::from_secs_f64(cfg.hq.resend_secs),
        timeout: Duration::from_secs_f64(cfg.hq.timeout_secs),
        data_dir: cfg.data_dir.clone(),
        settle: Duration::from_secs_f64(cfg.mesh.leader_timeout_secs),
        retention: Some(Duration::from_secs_f64(cfg.mesh.retention_days * 86_400.0)),
    };
    Ok(crate::uplink::start(
        settings,
        mesh.clone(),
        reader.clone(),
        secrets.signing_key()?,
    )?)
}

impl RunningNode {
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// Serves until the stop signal, then stops in order.
    pub async fn run(mut self) -> Stopped {
        loop {
            tokio::select! {
                _ = self.stop.stopped() => break,
                name = self.loops.ended() => {
                    tracing::info!(task = name, "a background loop of the node ended");
                }
            }
        }
        self.shutdown().await
    }

    /// Stops in order: cameras (their pipelines drain and close open incidents), then the events they
    /// produced, then the mesh.
    async fn shutdown(self) -> Stopped {
        // Whatever called this, the threads that read the flag stop too.
        self.stop.stop();
        #[cfg(feature = "vision")]
        for c in self.cameras {
            let _ = tokio::task::spawn_blocking(move || c.join()).await;
        }
        if let Some(l) = self.load {
            let _ = l.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.appender).await;
        // The last records (incidents closed by the stop) go out by gossip now; stay a moment so
        // they reach the other nodes, and so theirs reach this one when the store stops together.
        tokio::time::sleep(SHUTDOWN_LINGER).await;
        // Alerts raised by the cameras' last events go out before the network closes.
        self.alerts.shutdown(Duration::from_secs(3)).await;
        if let Some(r) = self.ops {
            r.shutdown(Duration::from_millis(500)).await;
        }
        if let Some(r) = self.ui {
            r.shutdown(Duration::from_secs(2)).await;
        }
        let uplink = match self.uplink {
            Some(u) => {
                let st = u.status();
                u.shutdown().await;
                Some(st)
            }
            None => None,
        };
        let mesh = self.mesh.stats().await.ok();
        self.loops.stop().await;
        let mesh_closed = self.mesh.shutdown().await;
        // Nobody answers invitations here any more: `lpmesh invite` says so rather than making a
        // token that points at nothing.
        let _ = std::fs::remove_file(self.cfg.data_dir.join(lpmesh_mesh::enrol::ENROL_ADDR_FILE));
        Stopped {
            uplink,
            mesh,
            mesh_closed,
        }
    }
}
