//! The HQ uplink: every node keeps the store's summaries up to date from the log and an outbox of the
//! periods HQ does not have yet; only the elected leader sends them.
//!
//! - The [`Ledger`] is fed by the whole log at start and by every new record after.
//! - A period is waiting (in the outbox) while it holds a record that HQ's copy does not include. The
//!   outbox on disk (sled, `uplink/` in the data directory) keeps, per period, the version vector HQ
//!   said it stored; what is waiting follows from it and the log, so nothing is lost in a crash.
//! - A period is done when HQ answers with a stored version vector that includes the one sent, and
//!   that answer is durable in the outbox ([`outbox`]).
//!   HQ answering with a concurrent one (the other side of a partition won the tie-break) leaves the
//!   period waiting: once the logs merge, the merged summary dominates both and replaces it.
//! - Failures back off exponentially (2 s doubling to 5 min) with ±20 % jitter; the leader probes HQ
//!   and tells the mesh whether it can reach it, which the election prefers.
//! - It also tells the mesh when it last made progress (owed HQ nothing, or had an upload
//!   acknowledged): answering HQ's probe is not getting summaries through, and the election demotes a
//!   leader whose progress stalls (`lpmesh_mesh::election`).
//! - The node's status (leader, last sync, outbox size) is written to `uplink-status.json` for
//!   `lpmesh status`, which works while the node runs (the databases admit one process).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpmesh_hq::client::{ClientError, HqClient};
use lpmesh_hq::envelope::{seal, HqRecipient};
use lpmesh_hq::vv::VersionVector;
use lpmesh_mesh::net::{MeshError, MeshHandle};
use lpmesh_mesh::record::Record;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot, watch};

use crate::summary::{node_id, Ledger};

pub mod outbox;
pub mod policy;
use outbox::{Outbox, OutboxError};
use policy::{Now, Policy, PolicyConfig};

pub const STATUS_FILE: &str = "uplink-status.json";
const OUTBOX_DIR: &str = "uplink";

#[derive(Clone, Debug)]
pub struct UplinkSettings {
    pub store: String,
    pub url: String,
    pub ca_cert: Option<PathBuf>,
    pub recipient: HqRecipient,
    pub period_secs: u32,
    pub probe_every: Duration,
    pub resend_every: Duration,
    pub timeout: Duration,
    pub data_dir: PathBuf,
    /// Time after start before this node may act as leader: long enough to hear every other node's
    /// heartbeat (the leader timeout), so a node that boots does not briefly lead alone.
    pub settle: Duration,
    /// The log's retention: periods wholly older than this are forgotten once HQ has them.
    pub retention: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// What `lpmesh status` shows (and later the UI).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub node: String,
    pub leader: Option<String>,
    pub am_leader: bool,
    pub hq_url: String,
    pub hq_reachable: bool,
    pub last_probe_ms: Option<i64>,
    /// Last time HQ acknowledged a summary from this node.
    pub last_sync_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Periods waiting to be sent (or re-sent).
    pub outbox: usize,
    /// Periods HQ holds as they are here.
    pub periods_done: usize,
    pub summaries_sent: u64,
    pub records: usize,
    pub updated_ms: i64,
}

pub struct UplinkHandle {
    status: watch::Receiver<UplinkStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl UplinkHandle {
    pub fn status(&self) -> UplinkStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes (the UI's mesh page).
    pub fn watch(&self) -> watch::Receiver<UplinkStatus> {
        self.status.clone()
    }

    /// Stops after the current step; the outbox is flushed.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

use lpmesh_web::clock::now_ms;

struct Uplink {
    s: UplinkSettings,
    mesh: MeshHandle,
    reader: crate::bounds::Reader,
    signing: libp2p_identity::Keypair,
    client: HqClient,
    outbox: Outbox,
    ledger: Ledger,
    /// What waits, what is due, when to probe and to try again: the pure part.
    policy: Policy,
    status: UplinkStatus,
    status_tx: watch::Sender<UplinkStatus>,
    status_written: Instant,
    started: Instant,
}

/// Starts the uplink on the current tokio runtime.
pub fn start(
    s: UplinkSettings,
    mesh: MeshHandle,
    reader: impl Into<crate::bounds::Reader>,
    signing: libp2p_identity::Keypair,
) -> Result<UplinkHandle, UplinkError> {
    let reader = reader.into();
    let client = HqClient::new(&s.url, s.ca_cert.as_deref(), s.timeout)?;
    let outbox_path = s.data_dir.join(OUTBOX_DIR);
    let (outbox, done) = Outbox::open(&outbox_path)?;
    let status = UplinkStatus {
        node: mesh.peer_id().to_string(),
        hq_url: s.url.clone(),
        ..UplinkStatus::default()
    };
    let (status_tx, status_rx) = watch::channel(status.clone());
    let (stop_tx, stop_rx) = oneshot::channel();
    let now = Instant::now();
    let policy = Policy::new(
        PolicyConfig {
            probe_every: s.probe_every,
            resend_every: s.resend_every,
            settle: s.settle,
            period_secs: s.period_secs,
            progress_every: Duration::from_millis(lpmesh_mesh::net::PROGRESS_REPORT_MS),
        },
        done,
        rand::random(),
    );
    let up = Uplink {
        ledger: Ledger::new(s.period_secs),
        s,
        mesh,
        reader,
        signing,
        client,
        outbox,
        policy,
        status,
        status_tx,
        status_written: now - Duration::from_secs(10),
        started: now,
    };
    let task = tokio::spawn(up.run(stop_rx));
    Ok(UplinkHandle {
        status: status_rx,
        stop: Some(stop_tx),
        task,
    })
}

impl Uplink {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        // Subscribe before reading the log, so nothing falls between the two (the ledger ignores repeats).
        let mut sub = self.mesh.subscribe();
        if let Err(e) = self.scan().await {
            tracing::error!(error = %e, "uplink cannot read the log");
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut expiry = tokio::time::interval(Duration::from_secs(5));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = expiry.tick() => self.expire().await,
                r = sub.recv() => match r {
                    Ok(rec) => self.take(&rec),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "uplink fell behind the log; reading it again");
                        if let Err(e) = self.scan().await {
                            tracing::error!(error = %e, "uplink cannot read the log");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.step().await {
                        tracing::debug!(error = %e, "uplink step");
                    }
                }
            }
        }
        // Last records first, then one last upload if this node leads: a node stopped for the night
        // leaves HQ with the figures up to its last event. Bounded: a dead HQ must not hold the stop.
        loop {
            match sub.try_recv() {
                Ok(rec) => self.take(&rec),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        if self.status.am_leader && self.status.hq_reachable && !self.policy.waiting().is_empty() {
            self.policy.send_all_again();
            // Bounded by a deadline rather than by cancelling the sends: what HQ confirmed before it
            // is still recorded.
            let deadline = Instant::now() + self.s.timeout.min(Duration::from_secs(5));
            self.send_waiting(Some(deadline)).await;
            if !self.policy.waiting().is_empty() {
                tracing::warn!(
                    waiting = self.policy.waiting().len(),
                    "periods left in the outbox at shutdown; sent after restart"
                );
            }
        }
        self.status.outbox = self.policy.waiting().len();
        self.status.periods_done = self.policy.done().len();
        if let Err(e) = self.outbox.commit().await {
            tracing::error!(error = %e, "cannot commit the outbox at shutdown");
        }
        self.write_status(true);
    }

    /// Follows the log's retention: expired seqs count as summarised, old periods HQ has are dropped.
    async fn expire(&mut self) {
        let Ok(floors) = self.mesh.floors().await else {
            return;
        };
        let drop_before = self.s.retention.map(|r| {
            let cutoff = now_ms() - r.as_millis().min(i64::MAX as u128) as i64;
            crate::summary::period_of(cutoff, self.s.period_secs)
        });
        self.ledger.expire(&floors, drop_before, self.policy.waiting());
        // HQ's acknowledgements of periods the log no longer holds are kept no longer either, so the
        // outbox stays bounded by the retention. Not a durability claim: a forgotten one that comes
        // back after a crash is dropped again.
        if let Some(b) = drop_before {
            self.policy.forget_before(b);
            if let Err(e) = self.outbox.forget_before(b, self.policy.waiting()) {
                tracing::warn!(error = %e, "cannot prune the outbox");
            }
        }
    }

    async fn scan(&mut self) -> Result<(), MeshError> {
        let mesh = self.mesh.clone();
        crate::node::read_log(&mesh, |r| self.take(r)).await?;
        self.expire().await;
        tracing::info!(
            records = self.ledger.len(),
            waiting = self.policy.waiting().len(),
            "uplink read the log"
        );
        Ok(())
    }

    fn take(&mut self, r: &Record) {
        let entry = self.reader.open(r);
        let signed_ms = i64::try_from(r.hlc.wall_ms).unwrap_or(i64::MAX);
        for p in self.ledger.add_signed(r.origin, r.seq, entry, signed_ms) {
            let ledger = &self.ledger;
            self.policy.touched(p, |hq| ledger.covered(p, hq));
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.started.elapsed(),
            wall_ms: now_ms(),
        }
    }

    fn backoff(&mut self, why: String) {
        let now = self.now();
        self.policy.failed(now);
        self.status.last_error = Some(why);
    }

    async fn set_reachable(&mut self, r: bool) {
        if r != self.status.hq_reachable {
            tracing::info!(reachable = r, url = %self.s.url, "HQ reachability changed");
        }
        self.status.hq_reachable = r;
        let _ = self.mesh.set_hq_reachable(r).await;
    }

    async fn step(&mut self) -> Result<(), UplinkError> {
        let now = self.now();
        if self.policy.probe_due(now) {
            let ok = tokio::time::timeout(self.s.timeout.min(Duration::from_secs(5)), self.client.probe()).await;
            let reachable = matches!(ok, Ok(Ok(())));
            self.status.last_probe_ms = Some(now_ms());
            self.set_reachable(reachable).await;
        }
        let leader = self.mesh.leader().await?;
        let me = self.mesh.origin();
        self.status.leader = leader.as_ref().map(node_id);
        let now = self.now();
        self.status.am_leader = self.policy.leads(now, leader == Some(me));
        if self.status.am_leader && self.status.hq_reachable && self.policy.may_send(now) {
            self.send_waiting(None).await;
        }
        self.report_progress().await;
        self.status.outbox = self.policy.waiting().len();
        self.status.periods_done = self.policy.done().len();
        self.status.records = self.ledger.len();
        self.write_status(false);
        Ok(())
    }

    /// Tells the mesh when this node last made progress with HQ (the policy says what and when).
    /// Followers report too, by the same rule; their backlog does not count against them when they
    /// take the lead (the election judges a new leader from when it took the lead).
    async fn report_progress(&mut self) {
        let now = self.now();
        if let Some(p) = self.policy.progress_to_tell(now) {
            let _ = self.mesh.set_hq_progress(u64::try_from(p).unwrap_or(0)).await;
        }
    }

    /// Sends the periods due, then records what HQ confirmed. With a `deadline` (shutdown), nothing is
    /// posted after it and a post still running then is given up.
    async fn send_waiting(&mut self, deadline: Option<Instant>) {
        let due = self.policy.due(self.now());
        let mut acked = Vec::new();
        for p in due {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            let summary = self.ledger.summarize(&self.s.store, p);
            let env = match seal(&summary, &self.s.recipient, &self.signing) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(period = p, error = %e, "cannot seal a summary");
                    continue;
                }
            };
            self.policy.sending(p, self.now());
            let post = self.client.post(env.encode());
            let answer = match left {
                Some(l) => match tokio::time::timeout(l, post).await {
                    Ok(a) => a,
                    Err(_) => break,
                },
                None => post.await,
            };
            match answer {
                Ok(ack) => {
                    // HQ took it (stored, a no-op, stale or concurrent): the uplink works.
                    self.policy.answered(self.now());
                    self.status.summaries_sent += 1;
                    self.status.last_error = None;
                    if ack.stored_vv.includes(&summary.vv) {
                        acked.push((p, ack.stored_vv));
                    } else {
                        // HQ kept a summary from records this node has not seen yet; send again once
                        // they have arrived (the period stays waiting).
                        tracing::info!(period = p, status = %ack.status, "HQ holds a concurrent summary of this period");
                    }
                }
                Err(e @ ClientError::Refused { .. }) => {
                    // One refused period must not hold the others back: it is tried again after
                    // `resend_every`, the rest go on.
                    tracing::error!(period = p, error = %e, "HQ refused a summary");
                    self.backoff(e.to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach HQ");
                    self.set_reachable(false).await;
                    self.backoff(e.to_string());
                    break;
                }
            }
        }
        if !acked.is_empty() {
            self.record_done(acked).await;
        }
    }

    /// What HQ confirmed this step: made durable in the outbox (one commit), then counted. When the
    /// disk refuses, nothing is counted: the periods stay waiting and are sent again after
    /// `resend_every` (HQ takes a repeat as a no-op), and the status shows the error.
    async fn record_done(&mut self, acked: Vec<(i64, VersionVector)>) {
        let at = now_ms();
        let mut stored = acked.iter().try_for_each(|(p, vv)| self.outbox.put(*p, vv, at));
        if stored.is_ok() {
            stored = self.outbox.commit().await;
        }
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot record HQ's acknowledgement; the periods will be sent again");
            self.status.last_error = Some(e.to_string());
            return;
        }
        self.status.last_sync_ms = Some(now_ms());
        for (p, hq_vv) in acked {
            let covered = self.ledger.covered(p, &hq_vv);
            self.policy.acked(p, hq_vv, covered);
        }
    }

    fn write_status(&mut self, force: bool) {
        self.status.updated_ms = now_ms();
        self.status_tx.send_if_modified(|s| {
            let changed = {
                let mut a = s.clone();
                a.updated_ms = self.status.updated_ms;
                a != self.status
            };
            *s = self.status.clone();
            changed
        });
        if !force && self.status_written.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.status_written = Instant::now();
        if let Err(e) = write_status_file(&self.s.data_dir, &self.status) {
            tracing::debug!(error = %e, "cannot write the uplink status file");
        }
    }
}

fn write_status_file(dir: &Path, s: &UplinkStatus) -> std::io::Result<()> {
    let path = dir.join(STATUS_FILE);
    let tmp = dir.join(format!("{STATUS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

/// `lpmesh status`: the uplink status a node last wrote, with its age in ms.
pub fn read_status(data_dir: &Path) -> std::io::Result<Option<(UplinkStatus, i64)>> {
    match std::fs::read(data_dir.join(STATUS_FILE)) {
        Ok(b) => {
            let s: UplinkStatus = serde_json::from_slice(&b).map_err(std::io::Error::other)?;
            let age = now_ms() - s.updated_ms;
            Ok(Some((s, age)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
