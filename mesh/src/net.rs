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

use crate::crypto::StoreRecipient;
use crate::election::{Election, Heartbeat};
use crate::log::{Inserted, Log, LogError, VersionVector};
use crate::netkeys::NetworkKeys;
use crate::record::{Origin, Record, RecordKind, MAX_RECORD_BYTES};
use crate::sync::{Action, AntiEntropy, Input, RateLimit};

pub use libp2p::{Multiaddr as Addr, PeerId as NodeId};

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
    Network(String),
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

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
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

fn build_swarm(cfg: &MeshConfig, key: &Keypair, keys: &NetworkKeys) -> Result<Swarm<Behaviour>, MeshError> {
    let net = |e: &dyn std::fmt::Display| MeshError::Network(e.to_string());
    let keys = keys.clone();
    let store = cfg.store.clone();
    let mdns_on = cfg.mdns;
    let swarm = SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            // The PSK handshake runs on the raw TCP stream, before Noise: without the key, nothing else
            // of libp2p is ever reached.
            Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .and_then(move |socket, endpoint| {
                    // Read for each connection: a new key epoch applies to the next one.
                    let psk = match &endpoint {
                        libp2p::core::ConnectedPoint::Dialer { address, .. } => keys.dial(address),
                        libp2p::core::ConnectedPoint::Listener { .. } => keys.accept(),
                    };
                    PnetConfig::new(PreSharedKey::new(psk)).handshake(socket)
                })
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                // A peer with the wrong key never finishes Noise: give up on it quickly.
                .timeout(Duration::from_secs(5)))
        })
        .map_err(|e| net(&e))?
        .with_behaviour(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            let gcfg = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .heartbeat_interval(Duration::from_millis(500))
                .max_transmit_size(MAX_RECORD_BYTES + 4096)
                .message_id_fn(|m: &gossipsub::Message| {
                    use std::hash::{Hash, Hasher};
                    // Content-addressed: the same record relayed by two peers is one message.
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    m.data.hash(&mut h);
                    let a = h.finish();
                    m.data.len().hash(&mut h);
                    gossipsub::MessageId::from([a.to_be_bytes(), h.finish().to_be_bytes()].concat())
                })
                .build()?;
            let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gcfg)?;
            // Load is not misbehaviour: a node busy taking in a burst (a catch-up, a store's cameras
            // all raising events) reads its queue late, answers IWANTs late and re-grafts early. The
            // defaults count each of those, squared, and pushed honest nodes past the ban line within a
            // second of a 10,000-record burst, cutting the store in pieces for a minute (seen in
            // `lpmesh bench mesh`). The cost of a slow peer is bounded by the send queues already.
            let mut params = gossipsub::PeerScoreParams {
                slow_peer_weight: 0.0,
                behaviour_penalty_weight: 0.0,
                ..Default::default()
            };
            // Scores are about misbehaviour, not merit: the rewards for time in the mesh and first
            // deliveries are kept small (the defaults reach +1800 within seconds, more than hundreds
            // of invalid messages cost), while every invalid message costs 100 x their count squared
            // and is forgotten slowly (10 % a second). One invalid message puts a peer below the ban
            // line of the actor; honest nodes never send one (a change of the wire version needs the
            // whole store upgraded together, or the nodes ban each other for a minute at a time).
            let tparams = gossipsub::TopicScoreParams {
                topic_weight: 1.0,
                time_in_mesh_weight: 0.01,
                time_in_mesh_quantum: Duration::from_secs(1),
                time_in_mesh_cap: 600.0,
                first_message_deliveries_weight: 0.1,
                first_message_deliveries_cap: 100.0,
                // A quiet store delivers few messages: that is no fault (the default punishes it).
                mesh_message_deliveries_weight: 0.0,
                mesh_failure_penalty_weight: 0.0,
                invalid_message_deliveries_weight: -100.0,
                invalid_message_deliveries_decay: 0.9,
                ..Default::default()
            };
            for name in [
                topic_name(&store),
                bundle_topic_name(&store),
                heartbeat_topic_name(&store),
            ] {
                params.topics.insert(IdentTopic::new(name).hash(), tparams.clone());
            }
            gossipsub.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
            let sync = request_response::Behaviour::with_codec(
                sync_codec(),
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            );
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                gossipsub,
                sync,
                identify: identify::Behaviour::new(identify::Config::new("/lpmesh/1".into(), key.public())),
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// The anti-entropy codec, with the size limits that apply before anything is parsed.
pub(crate) fn sync_codec() -> request_response::cbor::codec::Codec<SyncRequest, SyncResponse> {
    request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(SYNC_MAX_REQUEST_BYTES)
        .set_response_size_maximum(64 * 1024)
}

pub(crate) const SYNC_PROTOCOL_NAME: &str = SYNC_PROTOCOL;

/// The election's stall limit: the configured one plus the most that heartbeats lag behind the uplink
/// (one heartbeat interval and one progress report interval), so a leader that makes progress just
/// within the limit is never demoted on stale news. Zero stays zero (off).
fn stall_limit_ms(cfg: &MeshConfig) -> u64 {
    let stall = u64::try_from(cfg.leader_stall.as_millis()).unwrap_or(u64::MAX);
    if stall == 0 {
        return 0;
    }
    let lag = u64::try_from(cfg.heartbeat_interval.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(PROGRESS_REPORT_MS);
    stall.saturating_add(lag)
}

fn heartbeat_topic_name(store: &str) -> String {
    format!("/lpmesh/{store}/heartbeat/1")
}

fn topic_name(store: &str) -> String {
    format!("/lpmesh/{store}/records/1")
}

fn bundle_topic_name(store: &str) -> String {
    format!("/lpmesh/{store}/records/2")
}

/// Starts the mesh actor on the current tokio runtime (multi-threaded: log writes block in place).
pub fn start(cfg: MeshConfig, key: Keypair, recipient: StoreRecipient) -> Result<MeshHandle, MeshError> {
    let mut log = Log::open(&cfg.data_dir, &cfg.store, key.clone(), recipient)?;
    log.set_retention(cfg.retention.map(|r| r.as_millis() as u64));
    let net_keys = NetworkKeys::new(cfg.psk);
    let mut swarm = build_swarm(&cfg, &key, &net_keys)?;
    let topic = IdentTopic::new(topic_name(&cfg.store));
    let heartbeat_topic = IdentTopic::new(heartbeat_topic_name(&cfg.store));
    let bundle_topic = IdentTopic::new(bundle_topic_name(&cfg.store));
    for t in [&topic, &bundle_topic, &heartbeat_topic] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| MeshError::Network(e.to_string()))?;
    }
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| MeshError::Network(format!("listen on {addr}: {e}")))?;
    }
    for addr in &cfg.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap address");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (records, _) = broadcast::channel(RECORD_BROADCAST);
    let peer_id = key.public().to_peer_id();
    let origin = log.origin();
    let seed = u64::from_be_bytes(origin.0[..8].try_into().unwrap_or([0; 8]));
    let mut stats = MeshStats {
        records: log.len(),
        ..MeshStats::default()
    };
    stats.peers = 0;
    let actor = Actor {
        swarm,
        net_keys,
        log,
        topic,
        bundle_topic,
        ae: AntiEntropy::new(cfg.anti_entropy_interval.as_millis() as u64, cfg.sync_batch, seed),
        heartbeat_topic,
        election: Election::new(origin, cfg.leader_timeout.as_millis() as u64).with_stall(stall_limit_ms(&cfg)),
        priority: cfg.priority,
        hq_reachable: false,
        hq_progress_ms: 0,
        demotions_logged: 0,
        heartbeat_every_ms: cfg.heartbeat_interval.as_millis() as u64,
        next_heartbeat_ms: 0,
        records: records.clone(),
        stats,
        connected: HashSet::new(),
        blocked: HashSet::new(),
        members: None,
        priorities: HashMap::new(),
        listen: Vec::new(),
        pending_gossip: Vec::new(),
        next_answer: 0,
        answers: Default::default(),
        sync_limits: Default::default(),
        to_check: Default::default(),
        checking: futures::stream::FuturesUnordered::new(),
        parts_of: Default::default(),
        dialed: Default::default(),
        known: Default::default(),
        info: Vec::new(),
        infos: Default::default(),
        expire_every_ms: cfg.retention.map(expire_interval_ms),
        next_expire_ms: 0,
        next_reopen_ms: 0,
        announce: cfg.announce.clone(),
        bootstrap: cfg.bootstrap.iter().map(|a| (a.clone(), 0)).collect(),
        next_bootstrap_ms: now_ms() + REDIAL_MS,
        banned: Default::default(),
        next_score_check_ms: 0,
    };
    tokio::spawn(actor.run(cmd_rx));
    Ok(MeshHandle {
        cmd: cmd_tx,
        records,
        peer_id,
        origin,
    })
}

struct Actor {
    swarm: Swarm<Behaviour>,
    /// The network keys the transport reads for each connection.
    net_keys: NetworkKeys,
    log: Log,
    topic: IdentTopic,
    bundle_topic: IdentTopic,
    heartbeat_topic: IdentTopic,
    election: Election,
    priority: u8,
    hq_reachable: bool,
    /// What the uplink last said of its progress (wall ms, 0: nothing yet), for our heartbeats.
    hq_progress_ms: u64,
    /// The election's demotion count last logged.
    demotions_logged: u64,
    heartbeat_every_ms: u64,
    next_heartbeat_ms: u64,
    ae: AntiEntropy<PeerId>,
    records: broadcast::Sender<Record>,
    stats: MeshStats,
    connected: HashSet<PeerId>,
    blocked: HashSet<PeerId>,
    /// Admitted nodes, when the store keeps a member list.
    members: Option<HashSet<PeerId>>,
    /// Election priorities from the member records (see [`MeshHandle::set_priorities`]).
    priorities: HashMap<Origin, u8>,
    listen: Vec<Multiaddr>,
    /// Gossiped records decoded but not yet committed (at most one burst).
    /// Gossip messages (one record, or a bundle's) waiting to be stored in one commit.
    pending_gossip: Vec<(gossipsub::MessageId, PeerId, Vec<Record>)>,
    next_answer: u64,
    /// Per connected peer: the answer being received and how many of its parts have been handled.
    answers: std::collections::HashMap<PeerId, AnswerState>,
    /// Per connected peer: its budget of version-vector questions (dropped when it disconnects).
    sync_limits: std::collections::HashMap<PeerId, RateLimit>,
    /// Answer parts waiting for their records to be checked (at most [`SYNC_PARTS_QUEUED`] with
    /// those being checked), and those being checked (at most [`SYNC_CHECKS_RUNNING`]).
    to_check: std::collections::VecDeque<SyncPart>,
    checking: futures::stream::FuturesUnordered<futures::future::BoxFuture<'static, (PeerId, Option<CheckedPart>)>>,
    /// Per peer: its parts waiting or being checked (at most [`SYNC_PARTS_PER_PEER`]).
    parts_of: std::collections::HashMap<PeerId, usize>,
    /// When each peer heard of by heartbeat was last dialled.
    dialed: std::collections::HashMap<PeerId, u64>,
    /// Where each node we heard of said it listens: dialed again while it is not connected, so a
    /// member that missed a change of the network key (and cannot reach us under it) is reached.
    known: std::collections::HashMap<PeerId, Vec<Multiaddr>>,
    info: Vec<u8>,
    infos: std::collections::HashMap<Origin, Vec<u8>>,
    expire_every_ms: Option<u64>,
    next_expire_ms: u64,
    next_reopen_ms: u64,
    announce: Option<Vec<Multiaddr>>,
    /// Bootstrap addresses, each with the connections now open through it: one with none is dialled
    /// again every few seconds, so a node whose network came back rejoins without mDNS.
    bootstrap: Vec<(Multiaddr, u32)>,
    next_bootstrap_ms: u64,
    /// Peers scored down for invalid messages, cut off until the time given.
    banned: std::collections::HashMap<PeerId, u64>,
    next_score_check_ms: u64,
}

/// A peer whose gossip score falls below this is disconnected and refused for [`BAN_MS`]. An invalid
/// message costs 100 (see the topic score parameters), and gossipsub stops listening to a peer at -80
/// and so stops counting: ban before that, at gossipsub's own publish threshold.
const BAN_SCORE: f64 = -50.0;
const BAN_MS: u64 = 60_000;

/// An answer being received from a peer: its parts handled so far, whether one was refused (the
/// queue was full: ask again) and whether one held records from the future (do not ask again at once:
/// the same records would come back until our clock catches up).
#[derive(Debug, Default)]
struct AnswerState {
    answer: u64,
    handled: u32,
    refused: bool,
    future: bool,
}

/// An answer part received, waiting for its records to be checked.
struct SyncPart {
    peer: PeerId,
    records: Vec<serde_bytes::ByteBuf>,
    answer: u64,
    parts: u32,
    full: bool,
    channel: request_response::ResponseChannel<SyncResponse>,
}

/// An answer part after decoding and signature checks, ready to be stored by the actor.
struct CheckedPart {
    undecodable: Vec<crate::record::RecordError>,
    checked: crate::log::Checked,
    answer: u64,
    parts: u32,
    full: bool,
    channel: request_response::ResponseChannel<SyncResponse>,
}

/// Decodes and checks the records of an answer part: CPU work for a blocking thread.
fn check_part(part: SyncPart, store: &str) -> CheckedPart {
    let mut undecodable = Vec::new();
    let mut decoded = Vec::with_capacity(part.records.len());
    for b in part.records {
        match Record::decode(&b) {
            Ok(r) => decoded.push(r),
            Err(e) => undecodable.push(e),
        }
    }
    CheckedPart {
        undecodable,
        checked: crate::log::check(decoded, store),
        answer: part.answer,
        parts: part.parts,
        full: part.full,
        channel: part.channel,
    }
}

/// How often a log that failed to write (a full disk) is tried again.
const REOPEN_EVERY_MS: u64 = 2000;

/// How often expired records are looked for: a minute, or sooner for a short retention (tests), so
/// nothing outlives the period by more than a small fraction of it.
fn expire_interval_ms(retention: Duration) -> u64 {
    (retention.as_millis() as u64 / 20).clamp(250, 60_000)
}

/// Records removed per pass, so one pass never holds the actor for long.
const EXPIRE_PER_PASS: usize = 5000;

impl Actor {
    async fn run(mut self, mut cmd_rx: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Shutdown(done)) => {
                        // sled flushes on every commit already; dropping closes the database cleanly.
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                    None => return,
                },
                ev = self.swarm.select_next_some() => {
                    self.on_swarm(ev);
                    // Take whatever else is ready, then store the gossiped records of the whole burst
                    // with one flush (group commit on the receiving side too).
                    for _ in 0..GOSSIP_BURST {
                        if self.pending_gossip.iter().map(|(_, _, r)| r.len()).sum::<usize>() >= GOSSIP_BURST_RECORDS {
                            break;
                        }
                        match futures::FutureExt::now_or_never(self.swarm.select_next_some()) {
                            Some(ev) => self.on_swarm(ev),
                            None => break,
                        }
                    }
                    self.flush_gossip();
                }
                Some((peer, done)) = self.checking.next(), if !self.checking.is_empty() => {
                    self.on_checked(peer, done);
                }
                _ = tick.tick() => {
                    let now = now_ms();
                    let actions = self.ae.handle(Input::Tick { now_ms: now }, self.log.version_vector());
                    self.carry_out(actions);
                    if now >= self.next_heartbeat_ms {
                        self.next_heartbeat_ms = now + self.heartbeat_every_ms;
                        self.heartbeat(now);
                    }
                    if now >= self.next_score_check_ms {
                        self.next_score_check_ms = now + 1000;
                        self.ban_misbehaving(now);
                    }
                    if now >= self.next_bootstrap_ms {
                        self.next_bootstrap_ms = now + REDIAL_MS;
                        self.redial_bootstrap();
                        self.redial_known();
                    }
                    if self.log.is_failed() && now >= self.next_reopen_ms {
                        self.next_reopen_ms = now + REOPEN_EVERY_MS;
                        self.reopen();
                    }
                    if let Some(every) = self.expire_every_ms.filter(|_| now >= self.next_expire_ms) {
                        self.next_expire_ms = now + every;
                        self.expire(now);
                    }
                }
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Append { items, reply } => {
                let refs: Vec<(RecordKind, &[u8])> = items.iter().map(|(k, p)| (*k, p.as_slice())).collect();
                let res = tokio::task::block_in_place(|| self.log.append_batch(&refs, now_ms()));
                match res {
                    Ok(recs) => {
                        self.stats.appended += recs.len() as u64;
                        // No peer yet is fine: anti-entropy delivers them when one appears.
                        let encoded: Vec<Vec<u8>> = recs.iter().map(Record::encode).collect();
                        let (topic, messages) = match encoded.as_slice() {
                            [one] => (self.topic.clone(), vec![one.clone()]),
                            many => (
                                self.bundle_topic.clone(),
                                crate::record::bundles(many.iter().map(Vec::as_slice)),
                            ),
                        };
                        for m in messages {
                            let _ = self.swarm.behaviour_mut().gossipsub.publish(topic.clone(), m);
                        }
                        for r in &recs {
                            let _ = self.records.send(r.clone());
                        }
                        let _ = reply.send(Ok(recs));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::VersionVector(reply) => {
                let _ = reply.send(self.log.version_vector().clone());
            }
            Command::Floors(reply) => {
                let _ = reply.send(self.log.floors());
            }
            Command::Range {
                origin,
                from,
                limit,
                reply,
            } => {
                let _ = reply.send(self.log.range(&origin, from, limit).map_err(Into::into));
            }
            Command::Stats(reply) => {
                self.stats.peers = self.connected.len();
                self.stats.records = self.log.len();
                self.stats.log_failed = self.log.is_failed();
                let _ = reply.send(self.stats.clone());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen.clone());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.connected.iter().copied().collect());
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::Block(peers) => {
                for p in peers {
                    self.blocked.insert(p);
                    let _ = self.swarm.disconnect_peer_id(p);
                }
            }
            Command::SetPriorities(p) => {
                self.priorities = p;
                // Our own rank may have changed: say so now, so every node names the same leader.
                self.heartbeat(now_ms());
            }
            Command::SetWriteRecipient(r) => self.log.set_write_recipient(r),
            Command::SetNetworkKeys(keys) => {
                if self.net_keys.set(&keys) {
                    tracing::info!(keys = self.net_keys.count(), "the store's network key changed");
                }
            }
            Command::SetMembers(members) => {
                let peers: Option<HashSet<PeerId>> =
                    members.as_ref().map(|m| m.iter().filter_map(|o| o.peer_id()).collect());
                self.log
                    .set_members(members.map(|m| m.into_iter().collect::<HashSet<Origin>>()));
                if let Some(allowed) = &peers {
                    let me = *self.swarm.local_peer_id();
                    let outsiders: Vec<PeerId> = self
                        .connected
                        .iter()
                        .filter(|p| **p != me && !allowed.contains(p))
                        .copied()
                        .collect();
                    for p in outsiders {
                        tracing::warn!(peer = %p, "not a member of the store: disconnected");
                        self.reject("not_member_connection");
                        let _ = self.swarm.disconnect_peer_id(p);
                    }
                }
                self.members = peers;
            }
            Command::Unblock(peers) => {
                for p in peers {
                    self.blocked.remove(&p);
                }
            }
            Command::Shutdown(_) => {}
            Command::SetHqReachable(r) => {
                if r != self.hq_reachable {
                    self.hq_reachable = r;
                    // Tell the others now rather than at the next beat: leadership may move.
                    self.heartbeat(now_ms());
                }
            }
            Command::SetHqProgress(ms) => {
                if ms != self.hq_progress_ms {
                    self.hq_progress_ms = ms;
                    // Our own view at once (the others hear it at the next regular beat, which the
                    // stall limit allows for): a leader that recovers must not demote itself meanwhile.
                    let now = now_ms();
                    let hb = self.own_heartbeat();
                    self.election.heard(hb, now);
                }
            }
            Command::Leader(reply) => {
                let leader = self.leader_now(now_ms());
                let _ = reply.send(leader);
            }
            // Carried by the next regular heartbeat: the info (frames/s, last frame) changes all the
            // time, and beating on every change would multiply the heartbeat rate.
            Command::SetInfo(info) => self.info = info,
            Command::Nodes(reply) => {
                let now = now_ms();
                let timeout = self.election.timeout_ms();
                let me = self.log.origin();
                let list = self
                    .election
                    .seen()
                    .map(|(hb, at)| NodeSeen {
                        origin: hb.node,
                        hq_reachable: hb.hq_reachable,
                        priority: hb.priority,
                        silent_ms: now.saturating_sub(at),
                        live: now.saturating_sub(at) <= timeout,
                        info: if hb.node == me {
                            self.info.clone()
                        } else {
                            self.infos.get(&hb.node).cloned().unwrap_or_default()
                        },
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::PublishRaw(bytes) => {
                let topic = if bytes.first() == Some(&crate::record::BUNDLE_TAG) {
                    self.bundle_topic.clone()
                } else {
                    self.topic.clone()
                };
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    tracing::debug!(error = %e, "raw publish refused locally");
                }
            }
            Command::SyncRaw(to, request) => {
                self.swarm.behaviour_mut().sync.send_request(&to, request);
            }
        }
    }

    fn ban_misbehaving(&mut self, now: u64) {
        self.banned.retain(|_, until| *until > now);
        let low: Vec<(PeerId, f64)> = self
            .connected
            .iter()
            .filter_map(|p| {
                let score = self.swarm.behaviour().gossipsub.peer_score(p)?;
                (score < BAN_SCORE).then_some((*p, score))
            })
            .collect();
        for (peer, score) in low {
            tracing::warn!(%peer, score, "peer gossiped invalid messages");
            self.ban(peer, now, "invalid_gossip");
        }
    }

    /// Disconnects `peer` and refuses it for [`BAN_MS`]: the one ban path, for invalid gossip (score)
    /// and invalid records in anti-entropy messages alike. Its answer parts not yet checked are dropped.
    fn ban(&mut self, peer: PeerId, now: u64, reason: &'static str) {
        if self.banned.get(&peer).is_some_and(|until| *until > now) {
            // Still disconnecting from the first ban: one ban, counted once.
            return;
        }
        tracing::warn!(%peer, reason, "peer misbehaved: disconnected for {} s", BAN_MS / 1000);
        self.banned.insert(peer, now.saturating_add(BAN_MS));
        self.stats.peers_banned += 1;
        *self.stats.peers_banned_by.entry(reason.to_string()).or_insert(0) += 1;
        let before = self.to_check.len();
        self.to_check.retain(|p| p.peer != peer);
        let dropped = before - self.to_check.len();
        self.forget_parts(peer, dropped);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// `n` of `peer`'s answer parts left the check queue.
    fn forget_parts(&mut self, peer: PeerId, n: usize) {
        if let Some(c) = self.parts_of.get_mut(&peer) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.parts_of.remove(&peer);
            }
        }
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now_ms())
    }

    /// Dials the members heard of before that are not connected now.
    fn redial_known(&mut self) {
        let me = *self.swarm.local_peer_id();
        let idle: Vec<(PeerId, Vec<Multiaddr>)> = self
            .known
            .iter()
            .filter(|(p, _)| {
                **p != me
                    && !self.connected.contains(p)
                    && !self.blocked.contains(p)
                    && !self.is_banned(p)
                    && self.members.as_ref().is_none_or(|m| m.contains(p))
            })
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, addrs) in idle {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial a known node again");
            }
        }
    }

    fn redial_bootstrap(&mut self) {
        let idle: Vec<Multiaddr> = self
            .bootstrap
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in idle {
            // Already connected to the node it names (through another address): nothing to do.
            let named = addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if named.is_some_and(|id| self.connected.contains(&id) || self.blocked.contains(&id) || self.is_banned(&id))
            {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "cannot dial a bootstrap address again");
            }
        }
    }

    fn bootstrap_count(&mut self, endpoint: &libp2p::core::ConnectedPoint, delta: i32) {
        if let libp2p::core::ConnectedPoint::Dialer { address, .. } = endpoint {
            let bare = |a: &Multiaddr| {
                a.iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .collect::<Multiaddr>()
            };
            let dialed = bare(address);
            for (a, n) in self.bootstrap.iter_mut() {
                if bare(a) == dialed {
                    *n = n.saturating_add_signed(delta);
                }
            }
        }
    }

    fn reopen(&mut self) {
        match tokio::task::block_in_place(|| self.log.reopen()) {
            Ok(()) => {
                self.stats.log_reopened += 1;
                self.stats.records = self.log.len();
                tracing::info!(
                    records = self.log.len(),
                    "the log is writable again (reopened after a failed write)"
                );
            }
            Err(e) => tracing::debug!(error = %e, "the log still cannot be reopened"),
        }
    }

    fn expire(&mut self, now: u64) {
        match tokio::task::block_in_place(|| self.log.expire(now, EXPIRE_PER_PASS)) {
            Ok(e) => {
                if e.removed > 0 {
                    self.stats.expired += e.removed;
                    self.stats.records = self.log.len();
                    tracing::info!(removed = e.removed, "removed records older than the retention period");
                }
                if e.more {
                    // More to remove: come back on the next tick rather than at the next interval.
                    self.next_expire_ms = now;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot remove expired records"),
        }
    }

    fn reject(&mut self, reason: &str) {
        *self.stats.rejected.entry(reason.to_string()).or_insert(0) += 1;
    }

    /// Stores records received from `from`; returns how many were new. Each new one is announced.
    fn ingest(&mut self, records: Vec<Record>) -> (u32, Vec<Result<Inserted, crate::log::Rejected>>) {
        let res = tokio::task::block_in_place(|| self.log.insert_batch(&records, now_ms()));
        self.ingested(records, res)
    }

    /// [`Actor::ingest`] for records checked off the actor's thread (only the writes happen here).
    fn ingest_checked(&mut self, checked: crate::log::Checked) -> (u32, Vec<Result<Inserted, crate::log::Rejected>>) {
        let res = tokio::task::block_in_place(|| self.log.insert_checked(&checked, now_ms()));
        self.ingested(checked.into_records(), res)
    }

    fn ingested(
        &mut self,
        records: Vec<Record>,
        res: Result<Vec<Result<Inserted, crate::log::Rejected>>, LogError>,
    ) -> (u32, Vec<Result<Inserted, crate::log::Rejected>>) {
        let outcomes = match res {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "cannot store received records");
                return (0, Vec::new());
            }
        };
        let mut new = 0;
        for (r, o) in records.into_iter().zip(&outcomes) {
            match o {
                Ok(Inserted::New) => {
                    new += 1;
                    let _ = self.records.send(r);
                }
                Ok(Inserted::Duplicate) => self.stats.duplicates += 1,
                Ok(Inserted::Expired) => self.stats.expired_received += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "record refused");
                    self.reject(e.reason());
                }
            }
        }
        (new, outcomes)
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => self.listen.push(address),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                self.bootstrap_count(&endpoint, 1);
                if self.blocked.contains(&peer_id) || self.is_banned(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                // The network key lets a device in; only an admitted node key may stay.
                if self.members.as_ref().is_some_and(|m| !m.contains(&peer_id)) {
                    tracing::warn!(peer = %peer_id, "a node the store has not admitted tried to connect");
                    self.reject("not_member_connection");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if num_established.get() == 1 {
                    self.connected.insert(peer_id);
                    // Tell the newcomer who we are soon (once gossipsub has joined the topic), rather
                    // than at the next regular beat: the store's pages and the election see it sooner.
                    self.next_heartbeat_ms = self.next_heartbeat_ms.min(now_ms() + 1000);
                    let actions = self.ae.handle(Input::Connected(peer_id), self.log.version_vector());
                    self.carry_out(actions);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                self.bootstrap_count(&endpoint, -1);
                if num_established == 0 {
                    self.connected.remove(&peer_id);
                    // Per-peer anti-entropy state lives only while the peer is connected (bounded by
                    // the connections); parts already queued are still checked and stored.
                    self.sync_limits.remove(&peer_id);
                    self.answers.remove(&peer_id);
                    self.ae.handle(Input::Disconnected(peer_id), self.log.version_vector());
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                self.stats.handshake_failures += 1;
                tracing::debug!(%error, "incoming connection failed (a device without the store key looks like this)");
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                self.stats.handshake_failures += 1;
                if let libp2p::swarm::DialError::Transport(failed) = &error {
                    for (addr, e) in failed {
                        // Refused: nobody listens there, which says nothing of the key.
                        let refused = matches!(e, libp2p::TransportError::Other(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
                        if !refused {
                            self.net_keys.failed(addr);
                        }
                    }
                }
                tracing::debug!(%error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if !self.connected.contains(&peer) && !self.blocked.contains(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            })) => {
                let n = failed_messages.priority + failed_messages.non_priority;
                self.stats.gossip_dropped += n as u64;
                tracing::debug!(peer = %peer_id, dropped = n, "gossip to a slow peer dropped; anti-entropy carries it");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            })) => self.on_sync_request(peer, request, channel),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            })) => {
                tracing::debug!(%peer, %error, "anti-entropy request failed");
            }
            _ => {}
        }
    }

    /// A node's election priority: its member record's when the store gives one, else `claimed`.
    fn rank(&self, node: &Origin, claimed: u8) -> u8 {
        self.priorities.get(node).copied().unwrap_or(claimed)
    }

    fn own_heartbeat(&self) -> Heartbeat {
        Heartbeat {
            node: self.log.origin(),
            hq_reachable: self.hq_reachable,
            priority: self.rank(&self.log.origin(), self.priority),
            last_progress_ms: self.hq_progress_ms,
        }
    }

    /// The election's leader now; logs the demotion of a stalled leader. Asked at every beat as well
    /// as by the uplink, so the election notes when each leader took the lead even on a node without
    /// an uplink.
    fn leader_now(&mut self, now: u64) -> Option<Origin> {
        let leader = self.election.leader(now);
        if self.election.demotions() != self.demotions_logged {
            self.demotions_logged = self.election.demotions();
            let demoted: Vec<String> = self.election.demoted(now).map(|(o, _)| o.to_string()).collect();
            tracing::warn!(
                ?demoted,
                leader = ?leader.map(|o| o.to_string()),
                stall_ms = self.election.stall_ms(),
                "uplink leader reached HQ but made no progress within the stall limit; demoted"
            );
        }
        leader
    }

    fn heartbeat(&mut self, now: u64) {
        let hb = self.own_heartbeat();
        self.election.heard(hb, now);
        self.election.prune(now);
        let _ = self.leader_now(now);
        let addrs = self
            .announce
            .as_ref()
            .unwrap_or(&self.listen)
            .iter()
            .filter(|a| !a.to_string().starts_with("/ip4/0.0.0.0"))
            .take(MAX_HEARTBEAT_ADDRS)
            .map(|a| a.to_string())
            .collect();
        let msg = HeartbeatMsg {
            hb,
            sent_ms: now,
            addrs,
            info: self.info.clone(),
        };
        if let Some(bytes) = msg.encode() {
            // Nobody to tell yet is fine.
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.heartbeat_topic.clone(), bytes);
        }
    }

    fn on_heartbeat(&mut self, id: &gossipsub::MessageId, source: &PeerId, message: &gossipsub::Message) {
        let parsed = crate::wire::decode_heartbeat(&message.data);
        // A heartbeat speaks for the node that signed the gossip message, no other.
        let valid = parsed.filter(|m| message.source.is_some() && m.hb.node.peer_id() == message.source);
        match valid {
            Some(m) => {
                let now = now_ms();
                let mut hb = m.hb;
                hb.last_progress_ms = crate::election::progress_on_our_clock(hb.last_progress_ms, m.sent_ms, now);
                hb.priority = self.rank(&hb.node, hb.priority);
                self.election.heard(hb, now);
                self.validate(id, source, MessageAcceptance::Accept);
                if self.infos.len() < 256 || self.infos.contains_key(&m.hb.node) {
                    let mut info = m.info;
                    info.truncate(MAX_NODE_INFO_BYTES);
                    self.infos.insert(m.hb.node, info);
                }
                if let Some(peer) = m.hb.node.peer_id() {
                    self.maybe_dial(peer, &m.addrs, now);
                }
            }
            None => {
                self.reject("bad_heartbeat");
                self.validate(id, source, MessageAcceptance::Reject);
            }
        }
    }

    /// Dials a node we hear of but are not connected to (at most every few seconds).
    fn maybe_dial(&mut self, peer: PeerId, addrs: &[String], now: u64) {
        if peer != *self.swarm.local_peer_id() && !self.blocked.contains(&peer) {
            let parsed = dialable(addrs);
            if !parsed.is_empty() {
                if self.known.len() >= MAX_KNOWN_PEERS && !self.known.contains_key(&peer) {
                    self.known.clear();
                }
                self.known.insert(peer, parsed);
            }
        }
        if peer == *self.swarm.local_peer_id()
            || self.connected.contains(&peer)
            || self.blocked.contains(&peer)
            || self.is_banned(&peer)
        {
            return;
        }
        if self
            .dialed
            .get(&peer)
            .is_some_and(|t| now.saturating_sub(*t) < REDIAL_MS)
        {
            return;
        }
        if self.dialed.len() > 1024 {
            self.dialed.clear();
        }
        self.dialed.insert(peer, now);
        let addrs = dialable(addrs);
        if addrs.is_empty() {
            return;
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial a peer heard of by heartbeat");
        }
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        if message.topic == self.heartbeat_topic.hash() {
            if self.blocked.contains(&source) {
                self.validate(&id, &source, MessageAcceptance::Ignore);
            } else {
                self.on_heartbeat(&id, &source, &message);
            }
            return;
        }
        if self.blocked.contains(&source) {
            self.validate(&id, &source, MessageAcceptance::Ignore);
            return;
        }
        let bundle = message.topic == self.bundle_topic.hash();
        let decoded = if bundle {
            crate::record::decode_bundle(&message.data)
        } else {
            Record::decode(&message.data).map(|r| vec![r])
        };
        // A bundle carries its publisher's own appends, nobody else's: otherwise a member could
        // carry a refused node's records (or an equivocation's other side) along with one of its own.
        // Origins are compared as bytes; the publisher's key is parsed once, not once per record.
        let foreign = |rs: &Vec<Record>| {
            rs.first().is_some_and(|first| {
                rs.iter().any(|r| r.origin != first.origin)
                    || message.source.is_none()
                    || first.origin.peer_id() != message.source
            })
        };
        if bundle && decoded.as_ref().is_ok_and(foreign) {
            self.reject("foreign_bundle");
            self.validate(&id, &source, MessageAcceptance::Reject);
            return;
        }
        match decoded {
            Ok(records) => {
                self.stats.received_gossip += records.len() as u64;
                self.pending_gossip.push((id, source, records));
            }
            Err(e) => {
                self.reject(e.reason());
                self.validate(&id, &source, MessageAcceptance::Reject);
            }
        }
    }

    /// Counts a part of `peer`'s answer as handled (stored, or refused when `refused`); once every
    /// part has been, whether to ask again at once: the answer was cut short (`full`) or lost a part,
    /// unless it held records from the future (asking again would bring the same ones straight back).
    fn answer_part(
        &mut self,
        peer: PeerId,
        answer: u64,
        parts: u32,
        full: bool,
        refused: bool,
        future: bool,
    ) -> Option<bool> {
        if !self.connected.contains(&peer) {
            return None;
        }
        let entry = self.answers.entry(peer).or_default();
        if entry.answer != answer {
            *entry = AnswerState {
                answer,
                ..AnswerState::default()
            };
        }
        // `parts` comes from the peer: count without overflow, whatever it says.
        entry.handled = entry.handled.saturating_add(1);
        entry.refused |= refused;
        entry.future |= future;
        if entry.handled >= parts {
            let again = (full && !entry.future) || entry.refused;
            self.answers.remove(&peer);
            Some(again)
        } else {
            None
        }
    }

    fn validate(&mut self, id: &gossipsub::MessageId, source: &PeerId, acceptance: MessageAcceptance) {
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, acceptance);
    }

    /// Stores the gossiped records received so far in one commit, then lets gossipsub forward the good
    /// ones (a record is passed on only once it is durable here) and penalise senders of bad ones.
    fn flush_gossip(&mut self) {
        if self.pending_gossip.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending_gossip);
        let records: Vec<Record> = pending.iter().flat_map(|(_, _, r)| r.iter().cloned()).collect();
        let (_, outcomes) = self.ingest(records);
        let mut at = 0;
        for (id, source, records) in &pending {
            let mine = outcomes.get(at..at + records.len()).unwrap_or(&[]);
            at += records.len();
            // A message is forwarded only when it brought something new and nothing in it was refused:
            // a record refused here (from the future, of a node not admitted) is not passed on inside
            // a bundle either. One record its sender is to blame for rejects the bundle.
            let acceptance = if mine.len() < records.len() {
                MessageAcceptance::Ignore
            } else if mine.iter().any(|o| o.as_ref().is_err_and(|e| e.blames(source))) {
                MessageAcceptance::Reject
            } else if mine.iter().any(Result::is_err) {
                MessageAcceptance::Ignore
            } else if mine.iter().any(|o| matches!(o, Ok(Inserted::New))) {
                MessageAcceptance::Accept
            } else {
                // Held already, or expired.
                MessageAcceptance::Ignore
            };
            self.validate(id, source, acceptance);
        }
    }

    fn on_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: request_response::ResponseChannel<SyncResponse>,
    ) {
        // Only over a connection we keep (so the per-peer state below is bounded by the connections).
        if self.blocked.contains(&peer) || self.is_banned(&peer) || !self.connected.contains(&peer) {
            return;
        }
        match request {
            SyncRequest::Summary { vv, reply } => {
                let now = now_ms();
                let allowed = self
                    .sync_limits
                    .entry(peer)
                    .or_insert_with(|| RateLimit::new(SYNC_QUESTIONS_PER_S, SYNC_QUESTION_BURST, now))
                    .allow(now);
                self.respond(channel, 0);
                if !allowed {
                    // Not served: an honest peer never asks this often (see SYNC_QUESTIONS_PER_S), and
                    // one that did will ask again at its next round.
                    self.reject("sync_rate_limited");
                    return;
                }
                self.stats.sync_rounds += 1;
                let vv: VersionVector = vv.into_iter().collect();
                let actions = self
                    .ae
                    .handle(Input::Summary { from: peer, vv, reply }, self.log.version_vector());
                self.carry_out(actions);
            }
            SyncRequest::Records {
                records,
                answer,
                part: _,
                parts,
                full,
            } => {
                let queued = self.to_check.len() + self.checking.len();
                let of_peer = self.parts_of.get(&peer).copied().unwrap_or(0);
                if queued >= SYNC_PARTS_QUEUED || of_peer >= SYNC_PARTS_PER_PEER {
                    self.reject("sync_busy");
                    self.respond(channel, 0);
                    if let Some(again) = self.answer_part(peer, answer, parts, full, true, false) {
                        self.applied(peer, again);
                    }
                    return;
                }
                *self.parts_of.entry(peer).or_insert(0) += 1;
                self.to_check.push_back(SyncPart {
                    peer,
                    records,
                    answer,
                    parts,
                    full,
                    channel,
                });
                self.start_checks();
            }
        }
    }

    fn respond(&mut self, channel: request_response::ResponseChannel<SyncResponse>, accepted: u32) {
        // The peer may have gone: nothing to tell it then.
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, SyncResponse { accepted });
    }

    /// Starts checking queued answer parts, up to [`SYNC_CHECKS_RUNNING`] at once.
    fn start_checks(&mut self) {
        while self.checking.len() < SYNC_CHECKS_RUNNING {
            let Some(part) = self.to_check.pop_front() else {
                return;
            };
            let peer = part.peer;
            let store = self.log.store().to_string();
            let job = tokio::task::spawn_blocking(move || check_part(part, &store));
            self.checking.push(Box::pin(async move {
                match job.await {
                    Ok(done) => (peer, Some(done)),
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "checking an anti-entropy answer failed");
                        (peer, None)
                    }
                }
            }));
        }
    }

    /// Stores a checked answer part; a peer whose part held an invalid record is banned, as for gossip.
    fn on_checked(&mut self, peer: PeerId, done: Option<CheckedPart>) {
        self.forget_parts(peer, 1);
        self.start_checks();
        let Some(done) = done else { return };
        if self.is_banned(&peer) || self.blocked.contains(&peer) {
            // Cut off while this part waited: nothing more of it is taken.
            return;
        }
        let mut offences = done.undecodable.len();
        for e in &done.undecodable {
            self.reject(e.reason());
        }
        self.stats.received_sync += done.checked.records().len() as u64;
        let (new, outcomes) = self.ingest_checked(done.checked);
        self.stats.repaired += u64::from(new);
        offences += outcomes
            .iter()
            .filter(|o| o.as_ref().is_err_and(|e| e.blames(&peer)))
            .count();
        let future = outcomes.iter().any(|o| o.as_ref().is_err_and(|e| !e.is_offence()));
        self.respond(done.channel, new);
        if offences > 0 {
            tracing::warn!(%peer, offences, "anti-entropy message with invalid records");
            self.ban(peer, now_ms(), "invalid_sync");
            return;
        }
        if let Some(again) = self.answer_part(peer, done.answer, done.parts, done.full, false, future) {
            self.applied(peer, again);
        }
    }

    /// Tells anti-entropy that an answer from `peer` has been taken in (`full`: it held all we lacked).
    fn applied(&mut self, peer: PeerId, full: bool) {
        let actions = self
            .ae
            .handle(Input::Applied { from: peer, full }, self.log.version_vector());
        self.carry_out(actions);
    }

    fn carry_out(&mut self, actions: Vec<Action<PeerId>>) {
        for a in actions {
            match a {
                Action::SendSummary { to, reply } => {
                    let vv = self.log.version_vector().iter().map(|(o, s)| (*o, *s)).collect();
                    self.swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&to, SyncRequest::Summary { vv, reply });
                }
                Action::SendRecords { to, ranges } => {
                    // Messages of at most `batch` records and SYNC_BATCH_BYTES each; the last says
                    // whether the answer was cut short (then the peer asks again for the rest).
                    let requested = ranges.iter().fold(0u64, |n, r| n.saturating_add(r.len()));
                    let batch = self.ae.batch() as usize;
                    let mut chunks: Vec<Vec<serde_bytes::ByteBuf>> = vec![Vec::new()];
                    let mut bytes = 0usize;
                    let mut sent = 0u64;
                    for r in ranges {
                        let recs = match tokio::task::block_in_place(|| {
                            self.log
                                .range_for_peer(&r.origin, r.from, usize::try_from(r.len()).unwrap_or(usize::MAX))
                        }) {
                            Ok(v) => v,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read records for a peer");
                                continue;
                            }
                        };
                        for rec in recs.into_iter().filter(|x| x.seq <= r.to) {
                            let enc = rec.encode();
                            // The framing counts too, so a part stays under the receiver's limit.
                            let size = enc.len() + RECORD_FRAMING_BYTES;
                            let last = chunks.len() - 1;
                            if chunks[last].len() >= batch || bytes + size > SYNC_BATCH_BYTES {
                                chunks.push(Vec::new());
                                bytes = 0;
                            }
                            bytes += size;
                            sent += 1;
                            let last = chunks.len() - 1;
                            chunks[last].push(serde_bytes::ByteBuf::from(enc));
                        }
                    }
                    let n = chunks.len();
                    self.stats.sent_sync += sent;
                    self.next_answer = self.next_answer.wrapping_add(1);
                    let answer = self.next_answer;
                    let cut_short =
                        requested >= self.ae.batch().saturating_mul(crate::sync::PIPELINE) || sent < requested;
                    // Sent even when empty (nothing to send, one part): the asker waits on it before it
                    // asks another peer.
                    for (i, records) in chunks.into_iter().enumerate() {
                        let request = SyncRequest::Records {
                            records,
                            answer,
                            part: i as u32,
                            parts: n as u32,
                            full: cut_short,
                        };
                        self.swarm.behaviour_mut().sync.send_request(&to, request);
                    }
                }
            }
        }
    }
}

/// The number of records held per origin, for tests and status output.
pub fn count(vv: &VersionVector) -> u64 {
    vv.values().sum()
}

/// Groups version vectors by equality (for convergence checks).
pub fn all_equal(vvs: &[VersionVector]) -> bool {
    vvs.windows(2).all(|w| w[0] == w[1])
}
