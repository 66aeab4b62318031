//! Running a node: the store mesh plus this node's cameras, their events appended to the log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::enrol::{self, EnrolError};
use lpmesh_mesh::keys::{self, KeyError, StoreSecrets};
use lpmesh_mesh::log::{Log, LogError};
use lpmesh_mesh::net::{self, MeshConfig, MeshError, MeshHandle};
use lpmesh_mesh::record::{Record, RecordKind};

use crate::config::NodeConfig;
use crate::event::Event;

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
    #[error(transparent)]
    Enrol(#[from] EnrolError),
    #[error("{0}")]
    Setup(#[source] lpmesh_mesh::enrol::BoxError),
}

/// Where the log lives inside the data directory.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// `lpmesh init`: the store's secrets and this node's identity.
pub fn init(store: &str, data_dir: &Path) -> Result<lpmesh_mesh::net::NodeId, NodeError> {
    let mut secrets = StoreSecrets::generate(store)?;
    let key = keys::create_node_key(data_dir)?;
    let me =
        lpmesh_mesh::record::Origin::of(&key).ok_or_else(|| NodeError::Setup("the node key is not Ed25519".into()))?;
    // The first node is the root of the store's member list: every joiner receives its key with the
    // store's secrets, so it needs no record of its own (and `init` leaves the log to `run`).
    secrets.founder = Some(crate::members::hex(&me));
    let ca = lpmesh_web::tls::new_ca(store).map_err(|e| NodeError::Setup(e.into()))?;
    secrets.ui_ca = Some(keys::UiCa {
        name: store.to_string(),
        cert_pem: ca.cert_pem,
        key_pem: ca.key_pem,
    });
    secrets.save(data_dir)?;
    Ok(key.public().to_peer_id())
}

/// The member record for a node admitted through an invitation, to append to the log.
pub fn admission(a: &enrol::Admitted) -> Option<(RecordKind, Vec<u8>)> {
    let node = a.node.clone().try_into_ed25519().ok()?;
    let origin = lpmesh_mesh::record::Origin(node.to_bytes());
    let m = crate::members::Membership {
        priority: a.priority,
        name: a.name.clone(),
        ..crate::members::Membership::new(
            &origin,
            chrono::Utc::now().timestamp_millis(),
            Some(a.invitation.clone()),
        )
    };
    Some((RecordKind::Member, serde_json::to_vec(&m).ok()?))
}

/// The store's founder, as its secrets name it (`None` in stores made before the member list).
pub fn founder(secrets: &StoreSecrets) -> Option<lpmesh_mesh::record::Origin> {
    secrets.founder.as_deref().and_then(crate::members::parse_hex)
}

/// The member list the log holds now; the members' names go to `reader` before anything is read with
/// it (a view that started before them would take a forged name until the follower caught up), and
/// the key epochs sealed to this node to its keyring, the current one to the mesh's writes.
pub async fn load_members(
    mesh: &MeshHandle,
    reader: &crate::bounds::Reader,
    founder: Option<lpmesh_mesh::record::Origin>,
    node_key: &libp2p_identity::Keypair,
) -> crate::members::Members {
    let mut members = crate::members::Members::new(founder);
    if founder.is_some() {
        let mut epochs = crate::epochs::Epochs::default();
        let _ = read_log(mesh, |r| {
            take_grant(&mut epochs, reader, r);
        })
        .await;
        epochs.open_mine(node_key, reader.ring());
        let _ = read_log(mesh, |r| {
            take_member(&mut members, reader, r);
        })
        .await;
        reader.set_names(members.names());
        let _ = apply_epoch(mesh, reader, &epochs, &members, &mut Applied::default()).await;
    }
    members
}

/// The key epoch applied to the mesh: where records are written, and the network keys.
#[derive(Default, PartialEq)]
struct Applied {
    recipient: Option<Option<String>>,
    network: Vec<[u8; 32]>,
}

/// Writes go to the epoch `epochs` names current and connections use its network key first, if
/// that is not what `applied` holds already.
async fn apply_epoch(
    mesh: &MeshHandle,
    reader: &crate::bounds::Reader,
    epochs: &crate::epochs::Epochs,
    members: &crate::members::Members,
    applied: &mut Applied,
) -> Result<(), MeshError> {
    let ring = reader.ring();
    let current = epochs.current(members, ring).map(|g| (g.n, g.recipient.clone()));
    let wanted = current.as_ref().map(|(_, r)| r.clone());
    if applied.recipient.as_ref() != Some(&wanted) {
        ring.set_current(wanted.clone());
        mesh.set_write_recipient(current.is_some().then(|| ring.current()))
            .await?;
        if let Some((n, _)) = current {
            tracing::info!(epoch = n, "this node writes under key epoch {n}");
        }
        applied.recipient = Some(wanted);
    }
    // Also when only older keys were learned: a dial may need one of them.
    let network = ring.network_keys();
    if network != applied.network {
        mesh.set_network_keys(network.clone()).await?;
        applied.network = network;
    }
    Ok(())
}

/// The record by which the founder names itself (it has no admission to carry its name), when its
/// configuration's name is not the one the log holds.
pub fn founder_name_record(
    members: &crate::members::Members,
    me: &lpmesh_mesh::record::Origin,
    node: &str,
) -> Option<(RecordKind, Vec<u8>)> {
    if members.founder_name() == Some(node) {
        return None;
    }
    let m = crate::members::Membership {
        name: Some(node.to_string()),
        ..crate::members::Membership::new(me, chrono::Utc::now().timestamp_millis(), None)
    };
    Some((RecordKind::Member, serde_json::to_vec(&m).ok()?))
}

/// Keeps the mesh's admitted set equal to the member list the log holds. A node that has not yet
/// seen its own admission (it joined moments ago) restricts nothing until it has: it could not tell
/// its admitter from a stranger. Also follows the key epochs: opens those sealed to this node, writes
/// under the current one, and begins one when a revocation has none after it.
pub async fn follow_members(
    mesh: MeshHandle,
    reader: crate::bounds::Reader,
    founder: Option<lpmesh_mesh::record::Origin>,
    view: tokio::sync::watch::Sender<Vec<crate::members::Member>>,
    configured_priority: u8,
    configured_name: String,
    node_key: libp2p_identity::Keypair,
) {
    if founder.is_none() {
        tracing::warn!("this store has no member list (it was created before invitations): every holder of its network key can connect; create the store anew with `lpmesh init` to have one");
        return;
    }
    let me = mesh.origin();
    let mut members = crate::members::Members::new(founder);
    let mut epochs = crate::epochs::Epochs::default();
    let mut sub = mesh.subscribe();
    let mut applied: Option<Vec<lpmesh_mesh::record::Origin>> = None;
    let mut ranked: Option<std::collections::HashMap<lpmesh_mesh::record::Origin, u8>> = None;
    let mut named: Option<std::collections::HashMap<lpmesh_mesh::record::Origin, String>> = None;
    let mut epoch_applied = Applied::default();
    let take = |members: &mut crate::members::Members, epochs: &mut crate::epochs::Epochs, r: &Record| {
        take_grant(epochs, &reader, r) | take_member(members, &reader, r)
    };
    let _ = read_log(&mesh, |r| {
        take(&mut members, &mut epochs, r);
    })
    .await;
    // Worked out again only when a member or key record arrived, not for every event.
    let mut changed = true;
    loop {
        if !changed {
            match sub.recv().await {
                Ok(r) => changed = take(&mut members, &mut epochs, &r),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let _ = read_log(&mesh, |r| {
                        take(&mut members, &mut epochs, r);
                    })
                    .await;
                    changed = true;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            continue;
        }
        changed = false;
        if epochs.open_mine(&node_key, reader.ring()) {
            // Member records written under the keys just opened were unreadable when they came.
            let _ = read_log(&mesh, |r| {
                take_member(&mut members, &reader, r);
            })
            .await;
        }
        if apply_epoch(&mesh, &reader, &epochs, &members, &mut epoch_applied)
            .await
            .is_err()
        {
            return;
        }
        if members.admitted().contains(&me) && epochs.needs_rekey(&members, reader.ring()) {
            // Every member that notices would begin an epoch: a short random wait lets the first
            // one's record reach the others, who then find nothing to do.
            let wait = tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 1500));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    r = sub.recv() => match r {
                        Ok(r) => { take(&mut members, &mut epochs, &r); }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
            epochs.open_mine(&node_key, reader.ring());
            if epochs.needs_rekey(&members, reader.ring()) {
                let now = chrono::Utc::now().timestamp_millis();
                match crate::epochs::begin(&members, reader.ring(), now) {
                    Ok((grant, epoch)) => {
                        // Held before the record comes back, so this node can write under it at once.
                        let _ = reader.ring().add(std::slice::from_ref(&epoch));
                        match serde_json::to_vec(&grant) {
                            Ok(json) => {
                                if let Err(e) = mesh.append(vec![(RecordKind::Keys, json)]).await {
                                    tracing::error!(error = %e, "cannot record a new key epoch");
                                } else {
                                    tracing::info!(
                                        epoch = epoch.n,
                                        revoked = grant.covers.len(),
                                        "began a new key epoch after a revocation"
                                    );
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "cannot encode a new key epoch"),
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot begin a new key epoch"),
                }
            }
            changed = true;
            continue;
        }
        let set = members.admitted();
        view.send_if_modified(|v| {
            let list = members.list();
            let changed = *v != list;
            *v = list;
            changed
        });
        let wanted = set.contains(&me).then(|| set.iter().copied().collect::<Vec<_>>());
        if wanted != applied {
            if let Some(w) = &wanted {
                tracing::info!(members = w.len(), "the store's member list");
            }
            if mesh.set_members(wanted.clone()).await.is_err() {
                return;
            }
            applied = wanted;
        }
        // Every node ranks every member by its admission, so all name the same leader whatever the
        // nodes claim of themselves.
        let names = members.names();
        if named.as_ref() != Some(&names) {
            if let Some(admitted_as) = names.get(&me).filter(|n| **n != configured_name) {
                // Heard only now (the admission arrived after the start): every other node refuses
                // this node's events until its configuration says the admitted name (checked at start).
                tracing::error!(
                    admitted_as = %admitted_as,
                    configured = %configured_name,
                    "this node was admitted under another name: the store refuses its events; set node = the admitted name and restart"
                );
            }
            reader.set_names(names.clone());
            named = Some(names);
        }
        let priorities = members.priorities();
        if ranked.as_ref() != Some(&priorities) {
            if let Some(p) = priorities.get(&me).filter(|p| **p != configured_priority) {
                tracing::warn!(
                    recorded = p,
                    configured = configured_priority,
                    "[mesh] priority differs from the priority this node was admitted with (lpmesh invite --priority); the admission counts"
                );
            }
            if mesh.set_priorities(priorities.clone()).await.is_err() {
                return;
            }
            ranked = Some(priorities);
        }
    }
}

/// `lpmesh revoke`: takes `peer` out of the store with a record signed by this node (stopped: the
/// record goes out when it runs again, and every node drops the revoked one as soon as it hears).
pub fn revoke(data_dir: &Path, peer: &str) -> Result<String, NodeError> {
    let key = keys::load_node_key(data_dir)?;
    let secrets = StoreSecrets::load(data_dir)?;
    let f = founder(&secrets).ok_or_else(|| {
        NodeError::Setup("this store has no member list (created before invitations): nothing to revoke from".into())
    })?;
    let mut log = Log::open(&log_dir(data_dir), &secrets.store, key.clone(), secrets.recipient()?)
        .map_err(|e| NodeError::Setup(format!("{e}: stop the node first (the log admits one process)").into()))?;
    let mut state = state_in(&log, &secrets, &key, f)?;
    let now = chrono::Utc::now().timestamp_millis();
    let wall = u64::try_from(now).unwrap_or(0);
    let revocation = crate::members::revocation(&state.members.list(), peer, &log.origin(), now)
        .map_err(|e| NodeError::Setup(format!("{peer}: {e}").into()))?;
    let json = serde_json::to_vec(&revocation).map_err(|e| NodeError::Setup(e.into()))?;
    log.set_write_recipient(Some(state.reader.ring().current()));
    let r = log.append(RecordKind::Member, &json, wall)?;
    take_member(&mut state.members, &state.reader, &r);
    // The store writes under keys the revoked node never had from now on.
    if state.epochs.needs_rekey(&state.members, state.reader.ring()) {
        let (grant, epoch) =
            crate::epochs::begin(&state.members, state.reader.ring(), now).map_err(|e| NodeError::Setup(e.into()))?;
        let json = serde_json::to_vec(&grant).map_err(|e| NodeError::Setup(e.into()))?;
        log.append(RecordKind::Keys, &json, wall)?;
        tracing::info!(epoch = epoch.n, "began a new key epoch");
    }
    Ok(peer.trim().to_string())
}

/// The store as a node's log holds it: members, key epochs, and a reader holding every key sealed to
/// this node.
struct StoreState {
    members: crate::members::Members,
    epochs: crate::epochs::Epochs,
    reader: crate::bounds::Reader,
}

fn state_in(
    log: &Log,
    secrets: &StoreSecrets,
    key: &libp2p_identity::Keypair,
    founder: lpmesh_mesh::record::Origin,
) -> Result<StoreState, NodeError> {
    let reader = crate::bounds::Reader::from(secrets.keyring()?);
    let mut epochs = crate::epochs::Epochs::default();
    // Grants first: member records written under a later epoch need its key.
    for r in log.all() {
        let r = r?;
        if let Some(g) = reader.grant(&r) {
            epochs.add((r.origin, r.seq), g);
        }
    }
    epochs.open_mine(key, reader.ring());
    let mut members = crate::members::Members::new(Some(founder));
    for r in log.all() {
        take_member(&mut members, &reader, &r?);
    }
    reader
        .ring()
        .set_current(epochs.current(&members, reader.ring()).map(|g| g.recipient.clone()));
    Ok(StoreState {
        members,
        epochs,
        reader,
    })
}

/// The member list `log` holds.
fn members_in(
    log: &Log,
    secrets: &StoreSecrets,
    key: &libp2p_identity::Keypair,
    founder: lpmesh_mesh::record::Origin,
) -> Result<crate::members::Members, NodeError> {
    Ok(state_in(log, secrets, key, founder)?.members)
}

/// Folds `r` into `members` if it is a member record; whether it was a new one.
fn take_member(members: &mut crate::members::Members, reader: &crate::bounds::Reader, r: &Record) -> bool {
    reader.member(r).is_some_and(|m| members.add((r.origin, r.seq), &m))
}

/// Folds `r` into `epochs` if it is a key-epoch record; whether it was a new one.
fn take_grant(epochs: &mut crate::epochs::Epochs, reader: &crate::bounds::Reader, r: &Record) -> bool {
    reader.grant(r).is_some_and(|g| epochs.add((r.origin, r.seq), g))
}

/// `lpmesh members`: the store's member list as this node's log holds it (the node must be stopped).
pub fn read_members(data_dir: &Path) -> Result<Option<Vec<crate::members::Member>>, NodeError> {
    let key = keys::load_node_key(data_dir)?;
    let secrets = StoreSecrets::load(data_dir)?;
    let Some(f) = founder(&secrets) else {
        return Ok(None);
    };
    let log = Log::open(&log_dir(data_dir), &secrets.store, key.clone(), secrets.recipient()?)?;
    let members = members_in(&log, &secrets, &key, f)?;
    Ok(Some(members.list()))
}

/// `lpmesh invite`: a single-use invitation for a new node, answered by the node running on
/// `data_dir` (its enrolment listener wrote its address there at start; `enrol` overrides it, for a
/// member reached through another address). The token holds no store secret.
pub fn invite(
    data_dir: &Path,
    bootstrap: Vec<String>,
    expires: Duration,
    grant: enrol::Grant,
    enrol: Option<String>,
) -> Result<(enrol::Invitation, enrol::Token), NodeError> {
    if let Some(n) = &grant.name {
        crate::config::check_name(n).map_err(|e| NodeError::Setup(format!("node name {e}").into()))?;
    }
    let secrets = StoreSecrets::load(data_dir)?;
    let enrol = match enrol {
        Some(a) => a,
        None => std::fs::read_to_string(data_dir.join(enrol::ENROL_ADDR_FILE))
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                NodeError::Setup(
                    format!(
                        "no node is running on {}: an invitation is answered by a running node, so start it \
                     first (`lpmesh run`), or name the running member's enrolment address with --enrol HOST:PORT",
                        data_dir.display()
                    )
                    .into(),
                )
            })?,
    };
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    Ok(enrol::invite(
        data_dir, &secrets, &enrol, bootstrap, expires, grant, now,
    )?)
}

/// `lpmesh join`: proves the invitation to its member and, once admitted, writes the store's secrets
/// and this node's new identity into `data_dir`. Returns the store, its bootstrap list and this node.
pub async fn join(token: &str, data_dir: &Path) -> Result<(String, Vec<String>, lpmesh_mesh::net::NodeId), NodeError> {
    let t = enrol::Token::decode(token)?;
    for f in [keys::NODE_KEY_FILE, keys::STORE_SECRETS_FILE] {
        let path = data_dir.join(f);
        if path.exists() {
            return Err(KeyError::Exists { path }.into());
        }
    }
    // The identity is made first (the member admits this key) and written only once admitted.
    let key = libp2p_identity::Keypair::generate_ed25519();
    let secrets = enrol::join_remote(&t, &key).await?;
    keys::save_node_key(data_dir, &key)?;
    secrets.save(data_dir)?;
    Ok((secrets.store.clone(), t.bootstrap, key.public().to_peer_id()))
}

/// Where a member's enrolment listener can be reached from the store's LAN: its listen address, with
/// an unspecified IP replaced by the address of this host's default route (no packet is sent).
pub fn enrol_address(bound: std::net::SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let lan = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.255:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    std::net::SocketAddr::new(lan, bound.port()).to_string()
}

/// `lpmesh invite --serve ADDR`: creates an invitation and answers it from this process (for a store
/// being set up, before its first node runs). `on_token` gets the token as soon as it exists; returns
/// the admitted node once the invitation is used, or an error when it expires unused.
pub async fn invite_and_serve(
    data_dir: &Path,
    bootstrap: Vec<String>,
    expires: Duration,
    grant: enrol::Grant,
    listen: &str,
    on_token: impl FnOnce(&enrol::Invitation, &enrol::Token),
) -> Result<enrol::Admitted, NodeError> {
    let want: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| NodeError::Setup(format!("--serve {listen:?}: {e}").into()))?;
    let listener = tokio::net::TcpListener::bind(want)
        .await
        .map_err(|e| NodeError::Setup(format!("--serve {want}: {e}").into()))?;
    let bound = listener
        .local_addr()
        .map_err(|e| NodeError::Setup(format!("--serve {want}: {e}").into()))?;
    // Opened first: a running node holds the log, and then it answers invitations itself.
    let secrets0 = StoreSecrets::load(data_dir)?;
    let node_key = keys::load_node_key(data_dir)?;
    let mut log = Log::open(
        &log_dir(data_dir),
        &secrets0.store,
        node_key.clone(),
        secrets0.recipient()?,
    )
    .map_err(|e| {
        NodeError::Setup(format!("{e}: is the node running? Then run `lpmesh invite` without --serve").into())
    })?;
    let state = founder(&secrets0)
        .map(|f| state_in(&log, &secrets0, &node_key, f))
        .transpose()?;
    if let Some(st) = &state {
        log.set_write_recipient(Some(st.reader.ring().current()));
    }
    if let (Some(n), Some(st)) = (&grant.name, &state) {
        let taken = st.members.names().into_values().any(|held| &held == n);
        if taken {
            return Err(NodeError::Setup(
                format!("a member of the store is named {n:?} already").into(),
            ));
        }
    }
    let (inv, token) = invite(data_dir, bootstrap, expires, grant, Some(enrol_address(bound)))?;
    on_token(&inv, &token);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let secrets = StoreSecrets::load(data_dir)?;
    let server = tokio::spawn(enrol::serve(
        listener,
        data_dir.to_path_buf(),
        secrets,
        state.map(|st| st.reader.ring().clone()),
        Default::default(),
        tx,
    ));
    let left = inv
        .expires_ms
        .saturating_sub(u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0));
    let outcome = loop {
        match tokio::time::timeout(Duration::from_millis(left), rx.recv()).await {
            Ok(Some(a)) if a.invitation == inv.id => break Ok(a),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break Err(NodeError::Setup(format!("invitation {} expired unused", inv.id).into())),
        }
    };
    server.abort();
    let admitted = outcome?;
    if let Some((kind, json)) = admission(&admitted) {
        log.append(
            kind,
            &json,
            u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0),
        )?;
    }
    Ok(admitted)
}

/// Starts answering enrolments for this store on `listen` (falling back to a free port when it is
/// taken: the invitation names the port), and writes the address for `lpmesh invite`.
pub async fn start_enrolment(
    cfg: &NodeConfig,
    ring: lpmesh_mesh::crypto::Keyring,
    stats: std::sync::Arc<enrol::EnrolStats>,
    admitted: tokio::sync::mpsc::Sender<enrol::Admitted>,
) -> Result<String, NodeError> {
    let secrets = StoreSecrets::load(&cfg.data_dir)?;
    let want: std::net::SocketAddr = cfg
        .mesh
        .enrol_listen
        .parse()
        .map_err(|e| NodeError::Setup(format!("[mesh] enrol_listen {:?}: {e}", cfg.mesh.enrol_listen).into()))?;
    let listener = match tokio::net::TcpListener::bind(want).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(listen = %want, error = %e, "enrolment port taken; answering invitations on a free port instead");
            tokio::net::TcpListener::bind(std::net::SocketAddr::new(want.ip(), 0))
                .await
                .map_err(|e| NodeError::Setup(format!("enrolment listener on {want}: {e}").into()))?
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|e| NodeError::Setup(format!("enrolment listener: {e}").into()))?;
    let addr = enrol_address(bound);
    let file = cfg.data_dir.join(enrol::ENROL_ADDR_FILE);
    std::fs::write(&file, format!("{addr}\n"))
        .map_err(|e| NodeError::Setup(format!("{}: {e}", file.display()).into()))?;
    tokio::spawn(enrol::serve(
        listener,
        cfg.data_dir.clone(),
        secrets,
        Some(ring),
        stats,
        admitted,
    ));
    Ok(addr)
}

/// Starts the mesh for this node's configuration.
pub fn start_mesh(cfg: &NodeConfig) -> Result<MeshHandle, NodeError> {
    let key = keys::load_node_key(&cfg.data_dir)?;
    let secrets = StoreSecrets::load(&cfg.data_dir)?;
    if secrets.store != cfg.store {
        return Err(NodeError::Setup(
            format!(
                "{} belongs to store {:?}, but the configuration says store {:?}",
                cfg.data_dir.display(),
                secrets.store,
                cfg.store
            )
            .into(),
        ));
    }
    let mut mc = MeshConfig::new(&cfg.store, secrets.psk()?, log_dir(&cfg.data_dir));
    let parse = |v: &[String]| -> Result<Vec<net::Addr>, NodeError> {
        v.iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| NodeError::Setup(format!("bad address {a}: {e}").into()))
            })
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
    // Judged on every node, [hq] url or not, so every node names the same leader.
    mc.leader_stall = cfg.hq.leader_stall();
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

impl From<StoreSecret> for crate::bounds::Reader {
    /// A reader with the default time window (tools and tests; the node passes its configuration's).
    fn from(secret: StoreSecret) -> Self {
        crate::bounds::Reader::new(secret, crate::bounds::DEFAULT_WINDOW_SECS)
    }
}

impl From<lpmesh_mesh::crypto::Keyring> for crate::bounds::Reader {
    fn from(ring: lpmesh_mesh::crypto::Keyring) -> Self {
        crate::bounds::Reader::new(ring, crate::bounds::DEFAULT_WINDOW_SECS)
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
    let log = Log::open(&log_dir(data_dir), &secrets.store, key.clone(), secrets.recipient()?)?;
    let reader = match founder(&secrets) {
        Some(f) => {
            let st = state_in(&log, &secrets, &key, f)?;
            st.reader.set_names(st.members.names());
            st.reader
        }
        None => crate::bounds::Reader::from(secrets.keyring()?),
    };
    let mut out = Vec::new();
    for r in log.all() {
        if let Some(e) = reader.event(&r?) {
            out.push(e);
        }
    }
    out.sort_by_key(|e| (e.at_ms, e.incident.clone()));
    Ok(out)
}

/// Secrets in a record's contents (a user's password hash, the sealed keys of a key epoch) replaced
/// by what they are and their size: an audit shows that they are there, not what they are.
fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    serde_json::Value::String(s) if k == "hash" => {
                        let what = if s.starts_with("$argon2id$") {
                            "argon2id hash"
                        } else {
                            "not an argon2id hash"
                        };
                        *x = serde_json::Value::String(format!("<{what}, {} bytes>", s.len()));
                    }
                    serde_json::Value::String(s) if s.len() > 64 => {
                        *x = serde_json::Value::String(format!("<secret, {} bytes>", s.len()));
                    }
                    _ => redact(x),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Every record of the log with its contents decrypted (secrets redacted), as JSON (`{kind, origin, seq, payload}`;
/// `payload` is null for contents this node cannot read): what the store's members sent each other,
/// for audits such as the privacy test.
pub fn read_records(data_dir: &Path) -> Result<Vec<serde_json::Value>, NodeError> {
    let key = keys::load_node_key(data_dir)?;
    let secrets = StoreSecrets::load(data_dir)?;
    let log = Log::open(&log_dir(data_dir), &secrets.store, key.clone(), secrets.recipient()?)?;
    let ring = secrets.keyring()?;
    let mut out = Vec::new();
    for r in log.all() {
        let r = r?;
        let plain = match r.kind {
            RecordKind::Keys => ring.base().decrypt(&r.ciphertext).ok(),
            _ => ring.decrypt(&r.ciphertext).ok(),
        };
        let mut payload = plain
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .unwrap_or(serde_json::Value::Null);
        redact(&mut payload);
        out.push(serde_json::json!({
            "kind": format!("{:?}", r.kind).to_lowercase(),
            "origin": crate::members::hex(&r.origin),
            "seq": r.seq,
            "payload": payload,
        }));
    }
    Ok(out)
}

/// Sends this node's new incidents to its alert routes, as they become durable in the log. A node
/// alerts only for its own cameras, so one incident is one alert for the whole store.
pub async fn follow_alerts(
    mesh: MeshHandle,
    reader: impl Into<crate::bounds::Reader>,
    alerts: crate::alerts::Alerts,
    node: String,
    link_base: String,
) {
    let reader = reader.into();
    let mut sub = mesh.subscribe();
    let me = mesh.origin();
    loop {
        match sub.recv().await {
            Ok(r) => {
                if r.origin != me {
                    continue;
                }
                if let Some(e) = reader.event(&r) {
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
