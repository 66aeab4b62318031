//! The tablet UI and the evidence store as parts of a running node: the certificate tablets trust (and
//! its renewal when a key epoch brings another CA), the incident view's loops, and evidence retention.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use lpmesh_mesh::crypto::Keyring;
use lpmesh_mesh::keys::{StoreSecrets, UiCa};
use lpmesh_mesh::net::MeshHandle;
use lpmesh_web::tls::CaPem;

use super::loops::Loops;
use super::RuntimeError;
use crate::board::CameraBoard;
use crate::bounds::Reader;
use crate::config::NodeConfig;
use crate::evidence::store::EvidenceStore;
use crate::evidence::EvidenceStats;
use crate::members::Member;
use crate::ui::{Trust, UiState};
use crate::uplink::UplinkStatus;
use crate::zone_control::ZoneControl;

/// Where the CA the UI serves is copied, under `<data>/ui-tls/`, for `lpmesh store-ca`.
pub const CURRENT_CA_FILE: &str = "current-ca.pem";

/// How tablets reach this node's UI, for alert links.
pub(crate) fn ui_url(cfg: &NodeConfig) -> String {
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
type UiCaChoice = (CaPem, String, bool);

/// The CA tablets trust this node through, its name, and whether every node shares it: the
/// current key epoch's (a revocation brings a new one), else the store's, else (a store made before
/// store CAs) one this node makes for itself and keeps.
fn ui_ca(cfg: &NodeConfig, ring: &Keyring, base: &UiCaChoice) -> UiCaChoice {
    ring.current_epoch()
        .and_then(|e| e.ui_ca)
        .map_or_else(|| base.clone(), |ca| store_ui_ca(cfg, ca))
}

fn store_ui_ca(cfg: &NodeConfig, ca: UiCa) -> UiCaChoice {
    let name = if ca.name.is_empty() { cfg.store.clone() } else { ca.name };
    (
        CaPem {
            cert_pem: ca.cert_pem,
            key_pem: ca.key_pem,
        },
        name,
        true,
    )
}

/// The CA when no key epoch brings one: the store's, read once at start (it never changes).
fn base_ui_ca(cfg: &NodeConfig) -> Result<UiCaChoice, RuntimeError> {
    if let Some(ca) = StoreSecrets::load(&cfg.data_dir)?.ui_ca {
        return Ok(store_ui_ca(cfg, ca));
    }
    let name = format!("{} node {}", cfg.store, cfg.node);
    let dir = cfg.data_dir.join("ui-tls");
    let (c, k) = (dir.join("node-ca.pem"), dir.join("node-ca.key"));
    let ca = match (std::fs::read_to_string(&c), std::fs::read_to_string(&k)) {
        (Ok(cert_pem), Ok(key_pem)) => CaPem { cert_pem, key_pem },
        _ => {
            let ca = lpmesh_web::tls::new_ca(&name)?;
            std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
            lpmesh_mesh::keys::write_private(&k, ca.key_pem.as_bytes())?;
            std::fs::write(&c, &ca.cert_pem).map_err(|e| RuntimeError::io(&c, e))?;
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
    addr: SocketAddr,
    (ca, name, store_wide): &UiCaChoice,
) -> Result<(Trust, Vec<u8>, Vec<u8>), RuntimeError> {
    use lpmesh_web::tls::{fingerprint, first_der, issue};
    let mut names = vec!["localhost".to_string()];
    names.extend(crate::ui::this_hostname());
    names.extend(cfg.ui.names.iter().cloned());
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), Ipv6Addr::LOCALHOST.into()];
    if let Some(host) = cfg.ui.public_url.as_deref().and_then(url_host) {
        match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => names.push(host),
        }
    }
    if addr.ip().is_unspecified() {
        ips.extend(crate::ui::local_addresses());
    } else {
        ips.push(addr.ip());
    }
    let (chain, key) = issue(name, ca, &names, &ips)?;
    let der = first_der(&ca.cert_pem).ok_or(RuntimeError::UiCaNotPem)?;
    let dir = cfg.data_dir.join("ui-tls");
    std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
    let tmp = dir.join("current-ca.pem.tmp");
    std::fs::write(&tmp, &ca.cert_pem).map_err(|e| RuntimeError::io(&tmp, e))?;
    let current = dir.join(CURRENT_CA_FILE);
    std::fs::rename(&tmp, &current).map_err(|e| RuntimeError::io(&current, e))?;
    let trust = Trust {
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
    addr: SocketAddr,
    ring: Keyring,
    state: Arc<UiState>,
    tls: axum_server::tls_rustls::RustlsConfig,
    base: UiCaChoice,
    serving: String,
) {
    // The CA last tried: one that fails is reported once, not every tick.
    let mut last = serving;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
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
pub(crate) fn start_evidence(
    cfg: &NodeConfig,
    loops: &mut Loops,
    notices: &mut Vec<super::Notice>,
) -> Option<(Arc<EvidenceStore>, Arc<EvidenceStats>)> {
    let ev = &cfg.evidence;
    if !(ev.enabled && !cfg.cameras.is_empty() || cfg.data_dir.join("evidence").exists()) {
        return None;
    }
    let store = match EvidenceStore::open(&cfg.data_dir, ev.retention_hours, ev.max_mb) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "no evidence is kept on this node");
            notices.push(super::Notice::Error(format!("{e}: this node keeps no evidence")));
            return None;
        }
    };
    let keep = store.clone();
    loops.spawn("evidence retention", async move {
        let mut every = tokio::time::interval(Duration::from_secs(300));
        loop {
            every.tick().await;
            let s = keep.clone();
            let _ = tokio::task::spawn_blocking(move || s.prune(chrono::Utc::now().timestamp_millis())).await;
        }
    });
    Some((store, Arc::new(Default::default())))
}

/// What a node's UI is made of, besides its configuration.
pub(crate) struct UiParts {
    pub mesh: MeshHandle,
    pub reader: Reader,
    pub members: Option<tokio::sync::watch::Receiver<Vec<Member>>>,
    pub uplink: Option<tokio::sync::watch::Receiver<UplinkStatus>>,
    pub board: CameraBoard,
    pub zone_control: Arc<ZoneControl>,
    pub evidence: Option<Arc<EvidenceStore>>,
    pub node_key: libp2p_identity::Keypair,
}

/// The UI as it started: where tablets reach it and whom they trust for it.
#[derive(Clone, Debug)]
pub struct UiStarted {
    pub url: String,
    /// The CA's fingerprint and whether the whole store shares it; `None` over plain HTTP.
    pub trust: Option<(String, bool)>,
    /// No UI user exists yet: nobody can log in.
    pub no_users: bool,
}

/// Starts the tablet UI (unless switched off): the incident view fed from the log, the listener. Its
/// loops join the node's. A UI that cannot listen is said loudly; the node goes on without it.
pub(crate) async fn start_ui(
    cfg: &NodeConfig,
    at: Option<(SocketAddr, chrono_tz::Tz)>,
    parts: UiParts,
    loops: &mut Loops,
    notices: &mut Vec<super::Notice>,
) -> Result<Option<(crate::ui::Running, UiStarted)>, RuntimeError> {
    let Some((addr, tz)) = at else {
        return Ok(None);
    };
    let ring = parts.reader.ring().clone();
    let state = UiState::new(
        &cfg.store,
        &cfg.node,
        cfg.data_dir.clone(),
        parts.mesh,
        parts.reader,
        parts.uplink,
        parts.board,
        tz,
        cfg.ui.tls,
    )
    .with_zones(parts.zone_control)
    .with_evidence(parts.evidence, parts.node_key)
    .with_host_names(
        cfg.ui
            .names
            .iter()
            .cloned()
            .chain(cfg.ui.public_url.as_deref().and_then(url_host))
            .collect(),
    );
    let state = match parts.members {
        Some(m) => state.with_members(m),
        None => state,
    };
    let feed_state = state.clone();
    let retention = Some(Duration::from_secs_f64(cfg.mesh.retention_days * 86_400.0));
    loops.spawn("UI incident view", async move {
        if let Err(e) = crate::ui::feed(feed_state, retention).await {
            tracing::error!(error = %e, "the UI's incident view stopped");
        }
    });
    // `lpmesh user add|remove` on this node reaches every node of the store through the log.
    let users_state = state.clone();
    loops.spawn("UI user publishing", async move {
        if let Err(e) = crate::ui::publish_users(users_state).await {
            tracing::error!(error = %e, "user changes are no longer published to the store");
        }
    });
    let (state, tls, serving, trust) = if cfg.ui.tls {
        let base = base_ui_ca(cfg)?;
        let ca = ui_ca(cfg, &ring, &base);
        let (trust, chain, key) = ui_certificate(cfg, addr, &ca)?;
        let shown = (trust.fingerprint.clone(), trust.store_wide);
        (
            state.with_trust(trust),
            Some((chain, key)),
            Some((base, ca.0.cert_pem)),
            Some(shown),
        )
    } else {
        tracing::warn!(
            "[ui] tls = false: the tablet UI serves plain HTTP; logins, invitations and camera pictures are refused to anything but this machine"
        );
        notices.push(super::Notice::Warning(
            "[ui] tls = false: the tablet UI serves plain HTTP; logins, invitations and camera pictures only from this machine"
                .into(),
        ));
        (state, None, None, None)
    };
    // A node that cannot serve its page still detects, alerts and replicates: say so loudly, go on.
    let running = match crate::ui::serve(state.clone(), addr, tls).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the tablet UI is not available on this node");
            notices.push(super::Notice::Error(format!(
                "{e}: this node runs without its UI (check [ui] listen)"
            )));
            return Ok(None);
        }
    };
    if let (Some(tls), Some((base, serving))) = (running.tls_config(), serving) {
        loops.spawn(
            "UI certificate",
            follow_ui_ca(cfg.clone(), addr, ring, state, tls, base, serving),
        );
    }
    let no_users = crate::ui::auth::Users::new(&cfg.data_dir)
        .load()
        .map(|u| u.is_empty())
        .unwrap_or(true);
    Ok(Some((
        running,
        UiStarted {
            url: ui_url(cfg),
            trust,
            no_users,
        },
    )))
}
