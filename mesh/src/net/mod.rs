//! The store's network: one actor owns the libp2p swarm and the log (EXAMPLES.md 5-8).
//!
//! - Transport: TCP, then the private-network handshake with the store's pre-shared key, then Noise and
//!   Yamux. A device without the key cannot complete a connection. No QUIC: pnet cannot protect it.
//! - Gossipsub carries each new record (strict signing, content-addressed ids, validation before
//!   forwarding: a bad record is rejected and its sender scored down): a record appended alone as one
//!   message on the store's `records/1` topic, records appended together as bundles of up to 256
//!   ([`crate::record::bundles`]) on `records/2`. A node of an earlier version, not subscribed to
//!   `records/2`, gets those through anti-entropy instead, so a store upgrades one node at a time.
//! - Anti-entropy over request-response (CBOR): version vectors on connect and every few seconds with a
//!   random peer, then the missing records in bounded batches ([`crate::sync`] decides, this carries out).
//!   Held to gossip's standard: a peer whose answers carry invalid records is banned like one that
//!   gossips them, questions are rate-limited per peer, and the records of answers are decoded and
//!   their signatures checked on tokio's blocking threads, not on the actor's.
//! - mDNS on the LAN (optional) plus configured bootstrap addresses.
//!
//! [`MeshHandle`] talks to the actor over a bounded command channel; each command carries a `oneshot` for
//! its answer. New records (our own and others') go out on a bounded broadcast channel; a subscriber too
//! slow to keep up is told how many it missed (and can re-read them from the log).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::upgrade::Version;
use libp2p::core::Transport;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder};
use libp2p_identity::Keypair;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::crypto::{BoxError, StoreRecipient};
use crate::election::{Election, Heartbeat};
use crate::log::{Inserted, Log, LogError, VersionVector};
use crate::netkeys::NetworkKeys;
use crate::record::{Origin, Record, RecordKind, MAX_RECORD_BYTES};
use crate::sync::{Action, AntiEntropy, Input, RateLimit};

pub use libp2p::{Multiaddr as Addr, PeerId as NodeId};

mod actor;
mod gossip;
mod heartbeat;
mod peers;
mod swarm;
mod sync;

pub use actor::start;
use actor::Actor;
use swarm::{build_swarm, bundle_topic_name, heartbeat_topic_name, topic_name, Behaviour, BehaviourEvent};
use sync::{AnswerState, CheckedPart, SyncPart};

/// Commands waiting for the actor.
pub const COMMAND_QUEUE: usize = 256;
/// New records waiting for each subscriber before it is told it lagged.
pub const RECORD_BROADCAST: usize = 4096;
/// Bytes of records in one anti-entropy answer (the codec refuses larger requests).
pub const SYNC_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// CBOR framing of one record in an answer part (a byte-string header: at most 5 bytes for 64 KiB).
const RECORD_FRAMING_BYTES: usize = 5;
/// Largest anti-entropy request read from a peer. The largest honest one is an answer part: at most
/// [`SYNC_BATCH_BYTES`] of records and their framing (the sender counts both) plus a few dozen bytes of
/// envelope; a version vector is tiny (about 45 bytes an origin). It was 8 MiB, twice what any node
/// sends, which only doubled what a hostile peer makes us buffer and decode per request; 64 KiB of
/// slack also covers an older sender that did not count the framing (up to ~13,000 records a part).
const SYNC_MAX_REQUEST_BYTES: u64 = (SYNC_BATCH_BYTES + 64 * 1024) as u64;
/// Version-vector questions answered per peer: on average this many a second, up to the burst at once.
/// An honest peer asks on connect, about once per anti-entropy round (every few seconds, and the round
/// picks one peer), once in reply to a question of ours, and, while catching up, once after each
/// complete answer of up to `4 x 2000` records: 5 a second is 40,000 records a second per peer, more
/// than a node verifies, so an honest peer never meets the limit, while a spammer gets at most 5
/// answers a second (each costs us a read of up to 8,000 records and up to 16 MiB sent).
const SYNC_QUESTIONS_PER_S: u64 = 5;
const SYNC_QUESTION_BURST: u64 = 10;
/// Answer parts whose records are being checked (on the blocking threads) at once: each check already
/// spreads its signatures over the cores, and a second lets one part decode while another verifies.
const SYNC_CHECKS_RUNNING: usize = 2;
/// Answer parts received and not yet stored, all peers together (up to ~4 MiB each: 32 is ~130 MiB at
/// worst) and per peer (two whole answers, so one peer cannot take the queue from the others). Parts
/// beyond are refused (`sync_busy`), and the answer they belong to ends as cut short: we ask again.
const SYNC_PARTS_QUEUED: usize = 32;
const SYNC_PARTS_PER_PEER: usize = 2 * crate::sync::PIPELINE as usize;
const SYNC_PROTOCOL: &str = "/lpmesh/sync/1";
/// Swarm events handled before the gossiped records among them are committed.
const GOSSIP_BURST: usize = 512;
/// ... or records gossiped, whichever comes first (bundles carry up to 256 each): their signatures
/// are checked on the actor's turn.
const GOSSIP_BURST_RECORDS: usize = 2048;

#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub store: String,
    /// The store's private-network key.
    pub psk: [u8; 32],
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub anti_entropy_interval: Duration,
    /// Uplink election: this node's preference, and how often it announces itself.
    pub priority: u8,
    pub heartbeat_interval: Duration,
    /// A node silent this long is no longer a candidate (the leader's failover time).
    pub leader_timeout: Duration,
    /// A leader that reaches HQ but whose uplink makes no progress (nothing acknowledged while it owes
    /// HQ summaries) for this long is demoted while another node reaches HQ ([`crate::election`]);
    /// zero: never. The mesh adds a heartbeat interval and [`PROGRESS_REPORT_MS`] to it, the most
    /// that heartbeats lag behind the uplink.
    pub leader_stall: Duration,
    /// Records per anti-entropy answer.
    pub sync_batch: u64,
    /// Records older than this are removed from the log (every node applies the same rule).
    pub retention: Option<Duration>,
    /// What this node tells the others to dial; `None`: its listen addresses. Behind NAT or port
    /// forwarding, the outside address; empty: nodes reach it only through their bootstrap lists.
    pub announce: Option<Vec<Multiaddr>>,
}

impl MeshConfig {
    pub fn new(store: &str, psk: [u8; 32], data_dir: PathBuf) -> Self {
        Self {
            store: store.to_string(),
            psk,
            data_dir,
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr")],
            bootstrap: Vec::new(),
            mdns: true,
            anti_entropy_interval: Duration::from_secs(5),
            sync_batch: 2000,
            priority: 0,
            heartbeat_interval: Duration::from_secs(5),
            leader_timeout: Duration::from_secs(15),
            leader_stall: Duration::ZERO,
            retention: None,
            announce: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("network: {0}")]
    Network(#[source] BoxError),
    #[error("network: listen on {addr}: {source}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: BoxError,
    },
    #[error("the mesh has stopped")]
    Stopped,
}

/// Counters for the node's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MeshStats {
    pub peers: usize,
    pub records: u64,
    pub appended: u64,
    pub received_gossip: u64,
    pub received_sync: u64,
    /// Records sent to peers in anti-entropy answers.
    pub sent_sync: u64,
    pub duplicates: u64,
    /// Refused records and messages by reason.
    pub rejected: BTreeMap<String, u64>,
    pub sync_rounds: u64,
    /// Records that arrived through anti-entropy rather than gossip.
    pub repaired: u64,
    /// Connections that failed before they were up (a wrong store key looks like this).
    pub handshake_failures: u64,
    /// Records removed here for being older than the retention period.
    pub expired: u64,
    /// Records received that had already expired (not stored).
    pub expired_received: u64,
    /// Times the log was reopened after a failed write (a full disk, freed again).
    pub log_reopened: u64,
    /// Whether the log is refusing writes now (waiting for space).
    pub log_failed: bool,
    /// Peers cut off for a while because their gossip score fell too low (invalid messages) or
    /// their anti-entropy messages carried invalid records.
    pub peers_banned: u64,
    /// The same bans by reason: `invalid_gossip`, `invalid_sync`.
    pub peers_banned_by: BTreeMap<String, u64>,
    /// Messages gossipsub could not queue for a slow peer, control messages included (gossipsub's
    /// `SlowPeer` counts): records among them reach it by anti-entropy instead.
    pub gossip_dropped: u64,
}

/// An anti-entropy request (public for the fuzz targets, through `wire`).
#[derive(Debug, Serialize, Deserialize)]
pub enum SyncRequest {
    Summary {
        vv: Vec<(Origin, u64)>,
        reply: bool,
    },
    /// Part `part` of `parts` of answer `answer`; `full` when the answer was cut short (more to ask for).
    /// Parts travel on separate streams and may arrive in any order: the next question waits for all.
    Records {
        records: Vec<serde_bytes::ByteBuf>,
        answer: u64,
        part: u32,
        parts: u32,
        full: bool,
    },
}

/// A heartbeat on the wire; the send time keeps identical heartbeats from being taken for duplicates.
/// It also carries where the node listens, so every node can dial every other: a store whose nodes
/// only know one bootstrap node must not fall apart when that node goes down.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatMsg {
    pub hb: Heartbeat,
    pub sent_ms: u64,
    #[serde(default)]
    pub addrs: Vec<String>,
    /// What the node says about itself for the store's UI (its name, its cameras' health), opaque here.
    #[serde(default, with = "serde_bytes")]
    pub info: Vec<u8>,
}

impl HeartbeatMsg {
    /// The gossip payload; `None` only if CBOR could not write it (never seen: the fields are plain).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut bytes = Vec::new();
        ciborium::into_writer(self, &mut bytes).ok()?;
        Some(bytes)
    }
}

/// Largest self-description a node may put in its heartbeat.
pub const MAX_NODE_INFO_BYTES: usize = 1536;

/// The most often the uplink reports its progress ([`MeshHandle::set_hq_progress`]): the election's
/// stall limit allows for it.
pub const PROGRESS_REPORT_MS: u64 = 1000;

/// A node of the store as its heartbeats describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSeen {
    pub origin: Origin,
    pub hq_reachable: bool,
    pub priority: u8,
    /// Milliseconds since its last heartbeat.
    pub silent_ms: u64,
    pub live: bool,
    #[serde(skip)]
    pub info: Vec<u8>,
}

/// Largest heartbeat accepted, and the addresses one may carry.
pub(crate) const MAX_HEARTBEAT_BYTES: usize = 2048;
const MAX_HEARTBEAT_ADDRS: usize = 4;
/// Nodes whose addresses are remembered for redialing (a store has a handful).
const MAX_KNOWN_PEERS: usize = 256;

/// The TCP addresses among those a heartbeat gives.
fn dialable(addrs: &[String]) -> Vec<Multiaddr> {
    addrs
        .iter()
        .take(MAX_HEARTBEAT_ADDRS)
        .filter_map(|a| a.parse().ok())
        .filter(|a: &Multiaddr| !a.to_string().contains("/udp"))
        .collect()
}
/// Least time between two dials of a peer learned from its heartbeat.
const REDIAL_MS: u64 = 5000;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SyncResponse {
    accepted: u32,
}

enum Command {
    /// Whether this node reached HQ at its last probe (the uplink sets it).
    SetHqReachable(bool),
    /// When this node's uplink last made progress with HQ, wall ms (the uplink sets it).
    SetHqProgress(u64),
    SetInfo(Vec<u8>),
    Nodes(oneshot::Sender<Vec<NodeSeen>>),
    Leader(oneshot::Sender<Option<Origin>>),
    Append {
        items: Vec<(RecordKind, Vec<u8>)>,
        reply: oneshot::Sender<Result<Vec<Record>, MeshError>>,
    },
    VersionVector(oneshot::Sender<VersionVector>),
    Floors(oneshot::Sender<BTreeMap<Origin, u64>>),
    Range {
        origin: Origin,
        from: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Record>, MeshError>>,
    },
    Stats(oneshot::Sender<MeshStats>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    Dial(Multiaddr),
    /// Test and operations hook: drop and refuse connections with these peers (a simulated partition).
    Block(Vec<PeerId>),
    SetMembers(Option<Vec<Origin>>),
    SetPriorities(HashMap<Origin, u8>),
    SetWriteRecipient(Option<StoreRecipient>),
    SetNetworkKeys(Vec<[u8; 32]>),
    Unblock(Vec<PeerId>),
    Shutdown(oneshot::Sender<()>),
    PublishRaw(Vec<u8>),
    SyncRaw(PeerId, SyncRequest),
}

/// The handle the rest of the node uses; cheap to clone.
#[derive(Clone)]
pub struct MeshHandle {
    cmd: mpsc::Sender<Command>,
    records: broadcast::Sender<Record>,
    peer_id: PeerId,
    origin: Origin,
}

impl MeshHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// New records as they become durable here, ours and others'.
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.records.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).await.map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Appends our own records (one durable commit for all) and gossips them.
    pub async fn append(&self, items: Vec<(RecordKind, Vec<u8>)>) -> Result<Vec<Record>, MeshError> {
        self.ask(|reply| Command::Append { items, reply }).await?
    }

    /// The uplink leader as this node sees it now.
    pub async fn leader(&self) -> Result<Option<Origin>, MeshError> {
        self.ask(Command::Leader).await
    }

    pub async fn set_hq_reachable(&self, reachable: bool) -> Result<(), MeshError> {
        self.cmd
            .send(Command::SetHqReachable(reachable))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// When this node's uplink last owed HQ nothing or had an upload acknowledged (wall ms; 0:
    /// unknown). Carried by the heartbeats: the election demotes a leader whose progress stalls. Call it
    /// when it changes, at most every [`PROGRESS_REPORT_MS`].
    pub async fn set_hq_progress(&self, last_progress_ms: u64) -> Result<(), MeshError> {
        self.cmd
            .send(Command::SetHqProgress(last_progress_ms))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Sets what this node's heartbeats say about it (at most [`MAX_NODE_INFO_BYTES`]; longer is cut).
    pub async fn set_info(&self, mut info: Vec<u8>) -> Result<(), MeshError> {
        info.truncate(MAX_NODE_INFO_BYTES);
        self.cmd
            .send(Command::SetInfo(info))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Every node of the store heard of by heartbeat, this one included.
    pub async fn nodes(&self) -> Result<Vec<NodeSeen>, MeshError> {
        self.ask(Command::Nodes).await
    }

    /// Per origin, the seqs at or below which records have expired (counted in the version vector
    /// but no longer held).
    pub async fn floors(&self) -> Result<BTreeMap<Origin, u64>, MeshError> {
        self.ask(Command::Floors).await
    }

    pub async fn version_vector(&self) -> Result<VersionVector, MeshError> {
        self.ask(Command::VersionVector).await
    }

    pub async fn range(&self, origin: Origin, from: u64, limit: usize) -> Result<Vec<Record>, MeshError> {
        self.ask(|reply| Command::Range {
            origin,
            from,
            limit,
            reply,
        })
        .await?
    }

    pub async fn stats(&self) -> Result<MeshStats, MeshError> {
        self.ask(Command::Stats).await
    }

    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, MeshError> {
        self.ask(Command::ListenAddrs).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerId>, MeshError> {
        self.ask(Command::Peers).await
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), MeshError> {
        self.cmd.send(Command::Dial(addr)).await.map_err(|_| MeshError::Stopped)
    }

    pub async fn block(&self, peers: Vec<PeerId>) -> Result<(), MeshError> {
        self.cmd
            .send(Command::Block(peers))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Election priorities as the store's member records give them: a node's heartbeat no longer
    /// says its own rank (a member claiming the top priority would lead). Nodes missing here (the
    /// founder, which has no admission) keep the priority their heartbeats carry.
    pub async fn set_priorities(&self, priorities: HashMap<Origin, u8>) -> Result<(), MeshError> {
        self.cmd
            .send(Command::SetPriorities(priorities))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// This node's records are encrypted to `recipient` from now on: the store began a new key epoch.
    pub async fn set_write_recipient(&self, recipient: Option<StoreRecipient>) -> Result<(), MeshError> {
        self.cmd
            .send(Command::SetWriteRecipient(recipient))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// The store's network keys, the current key epoch's first: connections are accepted under it
    /// alone, and made with it or, after a failed handshake, with the older ones (see
    /// [`crate::netkeys`]).
    pub async fn set_network_keys(&self, keys: Vec<[u8; 32]>) -> Result<(), MeshError> {
        self.cmd
            .send(Command::SetNetworkKeys(keys))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// The store's admitted nodes: only they may hold a connection and only their records are
    /// stored. `None` (a store without a member list) admits every holder of the network key.
    pub async fn set_members(&self, members: Option<Vec<Origin>>) -> Result<(), MeshError> {
        self.cmd
            .send(Command::SetMembers(members))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    pub async fn unblock(&self, peers: Vec<PeerId>) -> Result<(), MeshError> {
        self.cmd
            .send(Command::Unblock(peers))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Fault injection for tests: gossips arbitrary bytes as if they were a record (or a bundle, when
    /// they start with [`crate::record::BUNDLE_TAG`]). Any peer holding the store key could do this
    /// with its own code; the honest nodes must cope.
    #[doc(hidden)]
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<(), MeshError> {
        self.cmd
            .send(Command::PublishRaw(bytes))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Fault injection for tests: sends an arbitrary anti-entropy request (a version vector, or an
    /// answer part with any bytes as records) to a peer, as a peer with the store key could.
    #[doc(hidden)]
    pub async fn send_sync_raw(&self, to: NodeId, request: SyncRequest) -> Result<(), MeshError> {
        self.cmd
            .send(Command::SyncRaw(to, request))
            .await
            .map_err(|_| MeshError::Stopped)
    }

    /// Flushes and closes; returns when the actor has stopped.
    pub async fn shutdown(&self) -> Result<(), MeshError> {
        self.ask(Command::Shutdown).await
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The anti-entropy codec, with the size limits that apply before anything is parsed.
pub(crate) fn sync_codec() -> request_response::cbor::codec::Codec<SyncRequest, SyncResponse> {
    request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(SYNC_MAX_REQUEST_BYTES)
        .set_response_size_maximum(64 * 1024)
}

pub(crate) const SYNC_PROTOCOL_NAME: &str = SYNC_PROTOCOL;

/// The number of records held per origin, for tests and status output.
pub fn count(vv: &VersionVector) -> u64 {
    vv.values().sum()
}

/// Groups version vectors by equality (for convergence checks).
pub fn all_equal(vvs: &[VersionVector]) -> bool {
    vvs.windows(2).all(|w| w[0] == w[1])
}
