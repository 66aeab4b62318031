//! `lpmesh run`: the node's runtime (mesh, cameras, UI, alerts, uplink, operations endpoint), from
//! start to an orderly stop.

use crate::*;

/// How long a stopping node keeps its mesh open after its last records.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_millis(1500);

/// The node's background loops, each under a name. A loop that ends while the node runs is reported by
/// name (a panic included) instead of vanishing; at shutdown, once the ordered part is done, the rest
/// are stopped together.
#[derive(Default)]
struct Loops {
    set: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Loops {
    fn spawn(&mut self, name: &'static str, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The name of a loop that ended, saying so when it panicked.
    fn name_of(&mut self, ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> &'static str {
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
    async fn ended(&mut self) -> &'static str {
        match self.set.join_next_with_id().await {
            Some(r) => self.name_of(r),
            None => std::future::pending().await,
        }
    }

    async fn stop(mut self) {
        self.set.abort_all();
        while let Some(r) = self.set.join_next_with_id().await {
            self.name_of(r);
        }
    }
}

/// How tablets reach this node's UI, for alert links.
fn ui_url(cfg: &NodeConfig) -> String {
    let scheme = if cfg.ui.tls { "https" } else { "http" };
    cfg.ui
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", cfg.ui.listen))
}

/// The host name in a URL like `https://front-desk.lan:8443/` (the UI answers to it).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// A CA, its name, and whether every node of the store shares it.
type UiCaChoice = (lpmesh_web::tls::CaPem, String, bool);

/// The CA tablets trust this node through, its name, and whether every node shares it: the
/// current key epoch's (a revocation brings a new one), else the store's, else (a store made before
/// store CAs) one this node makes for itself and keeps.
fn ui_ca(cfg: &NodeConfig, ring: &lpmesh_mesh::crypto::Keyring, base: &UiCaChoice) -> UiCaChoice {
    ring.current_epoch()
        .and_then(|e| e.ui_ca)
        .map_or_else(|| base.clone(), |ca| store_ui_ca(cfg, ca))
}

fn store_ui_ca(cfg: &NodeConfig, ca: lpmesh_mesh::keys::UiCa) -> UiCaChoice {
    let name = if ca.name.is_empty() { cfg.store.clone() } else { ca.name };
    (
        lpmesh_web::tls::CaPem {
            cert_pem: ca.cert_pem,
            key_pem: ca.key_pem,
        },
        name,
        true,
    )
}

/// The CA when no key epoch brings one: the store's, read once at start (it never changes).
fn base_ui_ca(cfg: &NodeConfig) -> Result<UiCaChoice> {
    use lpmesh_web::tls::{new_ca, CaPem};
    if let Some(ca) = StoreSecrets::load(&cfg.data_dir)?.ui_ca {
        return Ok(store_ui_ca(cfg, ca));
    }
    let name = format!("{} node {}", cfg.store, cfg.node);
    let dir = cfg.data_dir.join("ui-tls");
    let (c, k) = (dir.join("node-ca.pem"), dir.join("node-ca.key"));
    let ca = match (std::fs::read_to_string(&c), std::fs::read_to_string(&k)) {
        (Ok(cert_pem), Ok(key_pem)) => CaPem { cert_pem, key_pem },
        _ => {
            let ca = new_ca(&name)?;
            std::fs::create_dir_all(&dir)?;
            lpmesh_mesh::keys::write_private(&k, ca.key_pem.as_bytes())?;
            std::fs::write(&c, &ca.cert_pem)?;
            ca
        }
    };
    Ok((ca, name, false))
}

/// A fresh certificate from `ca` for every name and address the UI answers to, and what tablets
/// install to trust it. The CA served is also written to `ui-tls/current-ca.pem` for `lpmesh
/// store-ca`.
fn ui_certificate(
    cfg: &NodeConfig,
    addr: std::net::SocketAddr,
    (ca, name, store_wide): &UiCaChoice,
) -> Result<(lpmesh_node::ui::Trust, Vec<u8>, Vec<u8>)> {
    use lpmesh_web::tls::{fingerprint, first_der, issue};
    let mut names = vec!["localhost".to_string()];
    names.extend(lpmesh_node::ui::this_hostname());
    names.extend(cfg.ui.names.iter().cloned());
    let mut ips: Vec<std::net::IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    if let Some(host) = cfg.ui.public_url.as_deref().and_then(url_host) {
        match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => names.push(host),
        }
    }
    if addr.ip().is_unspecified() {
        ips.extend(lpmesh_node::ui::local_addresses());
    } else {
        ips.push(addr.ip());
    }
    let (chain, key) = issue(name, ca, &names, &ips)?;
    let der = first_der(&ca.cert_pem).context("the UI CA certificate is not PEM")?;
    let dir = cfg.data_dir.join("ui-tls");
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("current-ca.pem.tmp");
    std::fs::write(&tmp, &ca.cert_pem)?;
    std::fs::rename(&tmp, dir.join(super::store::CURRENT_CA_FILE))?;
    let trust = lpmesh_node::ui::Trust {
        fingerprint: fingerprint(&der),
        cert_der: der,
        cert_pem: ca.cert_pem.clone(),
        store_wide: *store_wide,
    };
    Ok((trust, chain, key))
}

/// Follows the key epochs: when the current one brings another CA (a revocation), the UI's
/// certificate is issued again from it and served from the next connection on.
async fn follow_ui_ca(
    cfg: NodeConfig,
    addr: std::net::SocketAddr,
    ring: lpmesh_mesh::crypto::Keyring,
    state: Arc<lpmesh_node::ui::UiState>,
    tls: axum_server::tls_rustls::RustlsConfig,
    base: UiCaChoice,
    serving: String,
) {
    // The CA last tried: one that fails is reported once, not every tick.
    let mut last = serving;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let ca = ui_ca(&cfg, &ring, &base);
        if ca.0.cert_pem == last {
            continue;
        }
        last = ca.0.cert_pem.clone();
        match ui_certificate(&cfg, addr, &ca) {
            Ok((trust, chain, key)) => match tls.reload_from_pem(chain, key).await {
                Ok(()) => {
                    tracing::warn!(
                        ca = %ca.1,
                        fingerprint = %trust.fingerprint,
                        "the store's tablet certificate changed with its key epoch (a node was revoked): every tablet installs the new one from /ca.crt"
                    );
                    state.set_trust(trust);
                }
                Err(e) => tracing::error!(error = %e, "cannot serve the new UI certificate"),
            },
            Err(e) => tracing::error!(error = %e, "cannot issue the UI certificate"),
        }
    }
}

/// This node's evidence store, and the loop that deletes what is past its retention: on a node with
/// cameras and evidence on, and on any node that kept evidence before (switched off since, it
/// still serves and deletes what it has, in its time). A store that cannot be opened is said
/// loudly; the node goes on without evidence.
fn start_evidence(
    cfg: &NodeConfig,
    loops: &mut Loops,
) -> Option<(
    Arc<lpmesh_node::evidence::store::EvidenceStore>,
    Arc<lpmesh_node::evidence::EvidenceStats>,
)> {
    let ev = &cfg.evidence;
    if !(ev.enabled && !cfg.cameras.is_empty() || cfg.data_dir.join("evidence").exists()) {
        return None;
    }
    let store = match lpmesh_node::evidence::store::EvidenceStore::open(&cfg.data_dir, ev.retention_hours, ev.max_mb) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "no evidence is kept on this node");
            eprintln!("error: {e}: this node keeps no evidence");
            return None;
        }
    };
    let keep = store.clone();
    loops.spawn("evidence retention", async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
        loop {
            every.tick().await;
            let s = keep.clone();
            let _ = tokio::task::spawn_blocking(move || s.prune(chrono::Utc::now().timestamp_millis())).await;
        }
    });
    Some((store, Arc::new(Default::default())))
}

/// Starts the tablet UI (unless switched off): the incident view fed from the log, the listener. Its
/// loops join the node's.
#[allow(clippy::too_many_arguments)]
async fn start_ui(
    cfg: &NodeConfig,
    mesh: &lpmesh_mesh::net::MeshHandle,
    reader: lpmesh_node::bounds::Reader,
    members: Option<tokio::sync::watch::Receiver<Vec<lpmesh_node::members::Member>>>,
    uplink: Option<tokio::sync::watch::Receiver<lpmesh_node::uplink::UplinkStatus>>,
    board: lpmesh_node::board::CameraBoard,
    zone_control: Arc<lpmesh_node::zone_control::ZoneControl>,
    evidence: Option<Arc<lpmesh_node::evidence::store::EvidenceStore>>,
    node_key: libp2p_identity::Keypair,
    loops: &mut Loops,
) -> Result<Option<(lpmesh_node::ui::Running, String)>> {
    if !cfg.ui.enabled {
        return Ok(None);
    }
    let tz = lpmesh_node::schedule::Schedule::parse_tz(&cfg.schedule.timezone).map_err(anyhow::Error::msg)?;
    let reader_ring = reader.ring().clone();
    let state = lpmesh_node::ui::UiState::new(
        &cfg.store,
        &cfg.node,
        cfg.data_dir.clone(),
        mesh.clone(),
        reader,
        uplink,
        board,
        tz,
        cfg.ui.tls,
    )
    .with_zones(zone_control)
    .with_evidence(evidence, node_key)
    .with_host_names(
        cfg.ui
            .names
            .iter()
            .cloned()
            .chain(cfg.ui.public_url.as_deref().and_then(url_host))
            .collect(),
    );
    let state = match members {
        Some(m) => state.with_members(m),
        None => state,
    };
    let feed_state = state.clone();
    let retention = Some(std::time::Duration::from_secs_f64(cfg.mesh.retention_days * 86_400.0));
    loops.spawn("UI incident view", async move {
        if let Err(e) = lpmesh_node::ui::feed(feed_state, retention).await {
            tracing::error!(error = %e, "the UI's incident view stopped");
        }
    });
    // `lpmesh user add|remove` on this node reaches every node of the store through the log.
    let users_state = state.clone();
    loops.spawn("UI user publishing", async move {
        if let Err(e) = lpmesh_node::ui::publish_users(users_state).await {
            tracing::error!(error = %e, "user changes are no longer published to the store");
        }
    });
    let addr: std::net::SocketAddr = cfg.ui.listen.parse().context("[ui] listen")?;
    let ring = reader_ring.clone();
    let (state, tls, serving) = if cfg.ui.tls {
        let base = base_ui_ca(cfg)?;
        let ca = ui_ca(cfg, &ring, &base);
        let (trust, chain, key) = ui_certificate(cfg, addr, &ca)?;
        println!(
            "UI certificate issued by {} (SHA-256 {}); tablets install it once from https://<this node>/ca.crt",
            if trust.store_wide {
                "the store's CA"
            } else {
                "this node's own CA (the store has none: made before store CAs)"
            },
            trust.fingerprint
        );
        (state.with_trust(trust), Some((chain, key)), Some((base, ca.0.cert_pem)))
    } else {
        tracing::warn!(
            "[ui] tls = false: the tablet UI serves plain HTTP; logins, invitations and camera pictures are refused to anything but this machine"
        );
        eprintln!(
            "warning: [ui] tls = false: the tablet UI serves plain HTTP; logins, invitations and camera pictures only from this machine"
        );
        (state, None, None)
    };
    // A node that cannot serve its page still detects, alerts and replicates: say so loudly, go on.
    let running = match lpmesh_node::ui::serve(state.clone(), addr, tls).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the tablet UI is not available on this node");
            eprintln!("error: {e}: this node runs without its UI (check [ui] listen)");
            return Ok(None);
        }
    };
    if let (Some(tls), Some((base, serving))) = (running.tls_config(), serving) {
        loops.spawn(
            "UI certificate",
            follow_ui_ca(cfg.clone(), addr, ring, state, tls, base, serving),
        );
    }
    let url = ui_url(cfg);
    println!("UI of node {} at {url}", cfg.node);
    if lpmesh_node::ui::auth::Users::new(&cfg.data_dir)
        .load()
        .map(|u| u.is_empty())
        .unwrap_or(true)
    {
        println!(
            "no UI users yet: lpmesh user add --data {} --role manager NAME",
            cfg.data_dir.display()
        );
    }
    Ok(Some((running, url)))
}
use lpmesh_mesh::keys::StoreSecrets;
use lpmesh_node::node::{append_events, start_mesh, EVENT_QUEUE};

pub fn run(config: &Path, synthetic: Option<(f64, i64)>) -> Result<ExitCode> {
    let cfg = NodeConfig::load(config)?;
    if let Some((r, _)) = synthetic.filter(|(r, _)| !(r.is_finite() && *r > 0.0 && *r <= 10_000.0)) {
        anyhow::bail!("--synthetic {r}: give events per second, more than 0 and at most 10000");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mesh = start_mesh(&cfg)?;
        let store_secrets = StoreSecrets::load(&cfg.data_dir)?;
        let node_key = lpmesh_mesh::keys::load_node_key(&cfg.data_dir)?;
        // One keyring for every reader, the enrolment listener and the key-epoch follower.
        let reader = lpmesh_node::bounds::Reader::new(store_secrets.keyring()?, cfg.mesh.time_window_secs);
        // Invitations are answered while the node runs; each admission is logged by the listener.
        let (admitted_tx, mut admitted_rx) = tokio::sync::mpsc::channel(16);
        let enrol_addr =
            lpmesh_node::node::start_enrolment(&cfg, reader.ring().clone(), Default::default(), admitted_tx).await?;
        // Each node admitted here becomes a member of the store with a record signed by this node.
        let admit_mesh = mesh.clone();
        let mut loops = Loops::default();
        loops.spawn("admissions", async move {
            while let Some(a) = admitted_rx.recv().await {
                if let Some(item) = lpmesh_node::node::admission(&a) {
                    if let Err(e) = admit_mesh.append(vec![item]).await {
                        tracing::error!(error = %e, node = %a.node.to_peer_id(), "cannot record an admission in the log");
                    }
                }
            }
        });
        println!("answering invitations on {enrol_addr}");
        let (members_tx, members_rx) = tokio::sync::watch::channel(Vec::new());
        let store_founder = lpmesh_node::node::founder(&store_secrets);
        // The members' names are known before any view reads a record with this reader.
        let initial = lpmesh_node::node::load_members(&mesh, &reader, store_founder, &node_key).await;
        let me = mesh.origin();
        if store_founder == Some(me) {
            // The founder has no admission to carry its name: it records the name itself.
            if let Some(item) = lpmesh_node::node::founder_name_record(&initial, &me, &cfg.node) {
                mesh.append(vec![item]).await.context("recording this founder's node name")?;
            }
        } else if let Some(admitted_as) = initial.names().get(&me).filter(|n| **n != cfg.node) {
            anyhow::bail!(
                "this node was admitted as {admitted_as:?}, but {} says node = {:?}: the store takes its events only under its admitted name; set node = {admitted_as:?}",
                config.display(),
                cfg.node
            );
        }
        let members = lpmesh_node::node::follow_members(mesh.clone(), reader.clone(), store_founder, members_tx, cfg.mesh.priority, cfg.node.clone(), node_key.clone());
        loops.spawn("members", async move {
            let _ = members.await;
        });
        let signal = stop_signal();
        let (stop, mut stopped) = (signal.flag.clone(), signal.stopped.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        let tz = lpmesh_node::schedule::Schedule::parse_tz(&cfg.schedule.timezone).map_err(anyhow::Error::msg)?;
        let alerts = lpmesh_node::alerts::start(&cfg.alerts, &cfg.store, &cfg.node, tz)?;
        let appender = tokio::spawn(append_events(
            mesh.clone(),
            rx,
            Some((alerts.clone(), cfg.node.clone(), ui_url(&cfg))),
        ));
        // A nearly full disk is said, loudly and in the metrics; detection and alerts go on.
        let disk_dir = cfg.data_dir.clone();
        loops.spawn("disk watch", async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                if let Some((free, total)) = lpmesh_node::ops::disk_space(&disk_dir) {
                    if lpmesh_node::ops::nearly_full(free, total) {
                        tracing::warn!(free_mb = free / (1024 * 1024), data_dir = %disk_dir.display(), "the disk is nearly full: free space, or events will stop being stored (detection and alerts go on)");
                    }
                }
            }
        });
        let mut sub = mesh.subscribe();
        let me = mesh.origin();
        let display = reader.clone();
        loops.spawn("event log", async move {
            loop {
                match sub.recv().await {
                    Ok(r) => {
                        if let Some(e) = display.event(&r) {
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
        });
        // The mesh's counters in the log every minute too (for nodes without a metrics scraper).
        let m = mesh.clone();
        loops.spawn("mesh counters", async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                match m.stats().await {
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
        });
        let uplink = match (&cfg.hq.url, &cfg.hq.recipient) {
            (Some(url), Some(recipient)) => {
                let secrets = StoreSecrets::load(&cfg.data_dir)?;
                let settings = lpmesh_node::uplink::UplinkSettings {
                    store: cfg.store.clone(),
                    url: url.clone(),
                    ca_cert: cfg.hq.ca_cert.clone(),
                    recipient: lpmesh_hq::envelope::parse_recipient(recipient).map_err(anyhow::Error::msg)?,
                    period_secs: cfg.hq.period_secs,
                    probe_every: std::time::Duration::from_secs_f64(cfg.hq.probe_secs),
                    resend_every: std::time::Duration::from_secs_f64(cfg.hq.resend_secs),
                    timeout: std::time::Duration::from_secs_f64(cfg.hq.timeout_secs),
                    data_dir: cfg.data_dir.clone(),
                    settle: std::time::Duration::from_secs_f64(cfg.mesh.leader_timeout_secs),
                    retention: Some(std::time::Duration::from_secs_f64(cfg.mesh.retention_days * 86_400.0)),
                };
                Some(lpmesh_node::uplink::start(settings, mesh.clone(), reader.clone(), secrets.signing_key()?)?)
            }
            _ => {
                tracing::info!("no [hq] url: this store sends nothing to HQ");
                None
            }
        };
        let board: lpmesh_node::board::CameraBoard = Default::default();
        let node_metrics: Arc<lpmesh_node::ops::NodeMetrics> = Default::default();
        let zone_control = lpmesh_node::zone_control::ZoneControl::new(config.to_path_buf(), &cfg.cameras);
        let evidence = start_evidence(&cfg, &mut loops);
        let ui = start_ui(&cfg, &mesh, reader.clone(), store_founder.map(|_| members_rx), uplink.as_ref().map(|u| u.watch()), board.clone(), zone_control.clone(), evidence.clone().map(|(s, _)| s), node_key.clone(), &mut loops).await?;
        let follow_alerts = lpmesh_node::node::follow_alerts(
            mesh.clone(),
            reader.clone(),
            alerts.clone(),
            cfg.node.clone(),
            ui.as_ref().map(|(_, url)| url.clone()).unwrap_or_default(),
        );
        loops.spawn("alerts from the log", async move {
            let _ = follow_alerts.await;
        });
        let ops = if cfg.ops.enabled {
            let addr: std::net::SocketAddr = cfg.ops.listen.parse().context("[ops] listen")?;
            let st = Arc::new(lpmesh_node::ops::OpsState {
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
            let r = lpmesh_node::ops::serve(st, addr).await;
            if let Some(r) = &r {
                println!("metrics at http://{}/metrics, health at /health and /ready", r.addr);
            }
            r
        } else {
            None
        };
        // What the other nodes' tablets show about this node: its name and its cameras' health;
        // and each camera's state for the alert routes (MQTT keeps it retained).
        let info_mesh = mesh.clone();
        let info_board = board.clone();
        let info_alerts = alerts.clone();
        let (store_name, node_name) = (cfg.store.clone(), cfg.node.clone());
        let info = lpmesh_node::ui::NodeInfo {
            name: cfg.node.clone(),
            ui: ui.as_ref().map(|(_, url)| url.clone()),
            cameras: Vec::new(),
        };
        loops.spawn("heartbeat info", async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
            let mut last_states = std::collections::HashMap::new();
            loop {
                every.tick().await;
                let mut i = info.clone();
                i.cameras = info_board.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
                for c in &i.cameras {
                    let changed = last_states.get(&c.name).is_none_or(|(online, at): &(bool, std::time::Instant)| {
                        *online != c.online || at.elapsed() >= std::time::Duration::from_secs(60)
                    });
                    if changed {
                        last_states.insert(c.name.clone(), (c.online, std::time::Instant::now()));
                        info_alerts.camera_state(lpmesh_node::alerts::CameraState {
                            store: store_name.clone(),
                            node: node_name.clone(),
                            camera: c.name.clone(),
                            online: c.online,
                            fps: c.fps,
                            last_frame_ms: c.last_frame_ms,
                        });
                    }
                }
                let Ok(bytes) = serde_json::to_vec(&i) else { continue };
                if info_mesh.set_info(bytes).await.is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let addrs = mesh.listen_addrs().await?;
        println!(
            "node {} of store {}: {} listening on {}",
            cfg.node,
            cfg.store,
            mesh.peer_id(),
            addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        );
        #[cfg(feature = "vision")]
        let cameras: Vec<_> = cfg.cameras.iter().map(|c| lpmesh_node::camera::supervisor::spawn_camera(cfg.clone(), c.clone(), tx.clone(), stop.clone(), board.clone(), zone_control.clone(), node_metrics.clone(), evidence.clone().filter(|_| cfg.evidence.enabled))).collect();
        let load = synthetic.map(|(rate, until)| {
            let (tx, stop, store, node) = (tx.clone(), stop.clone(), cfg.store.clone(), cfg.node.clone());
            tokio::spawn(async move {
                let run = chrono::Utc::now().timestamp_millis();
                let mut every = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / rate));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    every.tick().await;
                    if chrono::Utc::now().timestamp_millis() >= until {
                        break;
                    }
                    n += 1;
                    let e = lpmesh_node::event::Event::synthetic(&store, &node, run, n, chrono::Utc::now().timestamp_millis());
                    if tx.send(e).await.is_err() {
                        break;
                    }
                }
            })
        });
        drop(tx);
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => break,
                name = loops.ended() => {
                    tracing::info!(task = name, "a background loop of the node ended");
                }
            }
        }
        // Stop in order: cameras (their pipelines drain and close open incidents), then the
        // events they produced, then the mesh.
        #[cfg(feature = "vision")]
        for c in cameras {
            let _ = tokio::task::spawn_blocking(move || c.join()).await;
        }
        if let Some(l) = load {
            let _ = l.await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), appender).await;
        // The last records (incidents closed by the stop) go out by gossip now; stay a moment so
        // they reach the other nodes, and so theirs reach this one when the store stops together.
        tokio::time::sleep(SHUTDOWN_LINGER).await;
        // Alerts raised by the cameras' last events go out before the network closes.
        alerts.shutdown(std::time::Duration::from_secs(3)).await;
        if let Some(r) = ops {
            r.shutdown(std::time::Duration::from_millis(500)).await;
        }
        if let Some((running, _)) = ui {
            running.shutdown(std::time::Duration::from_secs(2)).await;
        }
        if let Some(u) = uplink {
            let st = u.status();
            println!(
                "uplink: leader {}, {} summaries sent, {} period(s) waiting",
                if st.am_leader { "this node" } else { "another node" },
                st.summaries_sent,
                st.outbox
            );
            u.shutdown().await;
        }
        if let Ok(st) = mesh.stats().await {
            println!(
                "mesh: {} records in the log, {} appended here, {} received ({} repaired by anti-entropy), {} rejected",
                st.records,
                st.appended,
                st.received_gossip + st.received_sync,
                st.repaired,
                st.rejected.values().sum::<u64>()
            );
        }
        loops.stop().await;
        mesh.shutdown().await?;
        // Nobody answers invitations here any more: `lpmesh invite` says so rather than making a
        // token that points at nothing.
        let _ = std::fs::remove_file(cfg.data_dir.join(lpmesh_mesh::enrol::ENROL_ADDR_FILE));
        println!("node {} stopped", cfg.node);
        Ok(ExitCode::SUCCESS)
    })
}
