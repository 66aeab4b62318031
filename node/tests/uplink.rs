//! The HQ uplink end to end, in one process over real sockets: three store nodes (real libp2p swarms,
//! sled logs, uplinks) and a real HQ receiver over HTTPS, against the embedded store and against a
//! real PostgreSQL. Each scenario ends by checking that HQ holds exactly the summaries computed from
//! the merged log, once per period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p_identity::Keypair;
use lpmesh_hq::envelope::store_key_to_string;
use lpmesh_hq::server::{serve, HqState, Running};
use lpmesh_hq::store::{Embedded, Filter, HqStore, Postgres};
use lpmesh_hq::summary::Summary;
use lpmesh_hq::testpg::TestPg;
use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::net::{self, Addr, MeshConfig, MeshHandle};
use lpmesh_mesh::record::RecordKind;
use lpmesh_node::action::{Action, ActionKind};
use lpmesh_node::event::{Detail, Event, EventKind, Phase};
use lpmesh_node::summary::{Entry, Ledger};
use lpmesh_node::uplink::{self, UplinkHandle, UplinkSettings};
use lpmesh_node::zone::Direction;

const STORE: &str = "shop-9";
const HOUR: i64 = 3_600_000;
const LEADER_TIMEOUT: Duration = Duration::from_millis(1500);

use lpmesh_testkit::TempDir as Dir;

struct Hq {
    state: Arc<HqState>,
    running: Option<Running>,
    addr: std::net::SocketAddr,
    cert: lpmesh_hq::tls::ServerCert,
    url: String,
    recipient: lpmesh_hq::envelope::HqRecipient,
    _dir: Dir,
    _pg: Option<TestPg>,
}

impl Hq {
    async fn start(postgres: bool, store_key: &Keypair) -> Hq {
        let dir = Dir::new("hq");
        let identity = lpmesh_hq::tls::load_or_create_identity(&dir.0).unwrap();
        let recipient = identity.to_public();
        let (store, pg) = if postgres {
            let pg = tokio::task::spawn_blocking(TestPg::start).await.unwrap().unwrap();
            (
                HqStore::Postgres(Postgres::connect(&pg.url(), 4).await.unwrap()),
                Some(pg),
            )
        } else {
            (HqStore::Embedded(Embedded::open(&dir.0).unwrap()), None)
        };
        store
            .register_store(STORE, &store_key_to_string(&store_key.public()).unwrap(), 0)
            .await
            .unwrap();
        let cert = lpmesh_hq::tls::load_or_create_cert(&dir.0, None, None, &["localhost".into()]).unwrap();
        let state = HqState::new(store, identity, lpmesh_hq::envelope::MAX_ENVELOPE_BYTES);
        let running = serve(
            state.clone(),
            "127.0.0.1:0".parse().unwrap(),
            cert.cert_pem.clone(),
            cert.key_pem.clone(),
        )
        .await
        .unwrap();
        let addr = running.addr;
        Hq {
            state,
            addr,
            url: format!("https://localhost:{}", addr.port()),
            running: Some(running),
            cert,
            recipient,
            _dir: dir,
            _pg: pg,
        }
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_millis(200)).await;
        }
    }

    /// Back on the same address, with everything it had stored.
    async fn restart(&mut self) {
        let r = serve(
            self.state.clone(),
            self.addr,
            self.cert.cert_pem.clone(),
            self.cert.key_pem.clone(),
        )
        .await
        .unwrap();
        self.running = Some(r);
    }

    async fn summaries(&self) -> Vec<Summary> {
        self.state
            .store
            .summaries(&Filter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.summary)
            .collect()
    }
}

struct Node {
    mesh: MeshHandle,
    uplink: Option<UplinkHandle>,
    key: Keypair,
    dir: Dir,
}

struct Store {
    secret: StoreSecret,
    signing: Keypair,
    psk: [u8; 32],
    nodes: Vec<Option<Node>>,
}

async fn addr_of(h: &MeshHandle) -> Addr {
    for _ in 0..200 {
        if let Some(a) = h.listen_addrs().await.unwrap().first() {
            return format!("{a}/p2p/{}", h.peer_id()).parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no listen address");
}

/// Every wait of this file: a check reads HQ's database, so it asks every 50 ms, not more.
async fn eventually(what: &str, limit: Duration, check: impl AsyncFnMut() -> bool) -> Duration {
    lpmesh_testkit::eventually_every(what, limit, Duration::from_millis(50), check).await
}

impl Store {
    async fn new(n: usize, hq: &Hq, signing: Keypair) -> Store {
        let mut s = Store {
            secret: StoreSecret::generate(),
            signing,
            psk: rand::random(),
            nodes: Vec::new(),
        };
        let mut boot = Vec::new();
        for _ in 0..n {
            let node = s.start_node(hq, boot.clone()).await;
            if boot.is_empty() {
                boot.push(addr_of(&node.mesh).await);
            }
            s.nodes.push(Some(node));
        }
        s
    }

    async fn start_node(&self, hq: &Hq, bootstrap: Vec<Addr>) -> Node {
        self.start_node_in(hq, bootstrap, Dir::new("node"), Keypair::generate_ed25519())
            .await
    }

    async fn start_node_in(&self, hq: &Hq, bootstrap: Vec<Addr>, dir: Dir, key: Keypair) -> Node {
        self.start_node_opts(hq, bootstrap, dir, key, 0, Duration::ZERO).await
    }

    /// A node with an election `priority` and stall limit (`Duration::ZERO`: off).
    async fn start_node_opts(
        &self,
        hq: &Hq,
        bootstrap: Vec<Addr>,
        dir: Dir,
        key: Keypair,
        priority: u8,
        leader_stall: Duration,
    ) -> Node {
        let mut cfg = MeshConfig::new(STORE, self.psk, dir.0.join("log"));
        cfg.priority = priority;
        cfg.leader_stall = leader_stall;
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.mdns = false;
        cfg.bootstrap = bootstrap;
        cfg.anti_entropy_interval = Duration::from_millis(500);
        cfg.heartbeat_interval = Duration::from_millis(300);
        cfg.leader_timeout = LEADER_TIMEOUT;
        let mesh = net::start(cfg, key.clone(), self.secret.recipient()).unwrap();
        let settings = UplinkSettings {
            store: STORE.into(),
            url: hq.url.clone(),
            ca_cert: Some(hq.cert.cert_path.clone()),
            recipient: hq.recipient.clone(),
            period_secs: 3600,
            probe_every: Duration::from_millis(200),
            resend_every: Duration::from_millis(300),
            timeout: Duration::from_secs(5),
            data_dir: dir.0.clone(),
            settle: LEADER_TIMEOUT,
            retention: None,
        };
        let up = uplink::start(
            settings,
            mesh.clone(),
            StoreSecret::parse(&self.secret.expose()).unwrap(),
            self.signing.clone(),
        )
        .unwrap();
        Node {
            mesh,
            uplink: Some(up),
            key,
            dir,
        }
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().unwrap()
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// The node the live nodes agree is the uplink leader.
    async fn leader(&self) -> usize {
        let mut found = None;
        eventually(
            "one leader agreed by every live node",
            Duration::from_secs(10),
            async || {
                let mut leaders = Vec::new();
                for (_, n) in self.live() {
                    leaders.push(n.mesh.leader().await.unwrap());
                }
                let agreed = leaders.windows(2).all(|w| w[0] == w[1]) && leaders[0].is_some();
                if agreed {
                    found = self
                        .live()
                        .find(|(_, n)| Some(n.mesh.origin()) == leaders[0])
                        .map(|(i, _)| i);
                }
                found.is_some()
            },
        )
        .await;
        found.unwrap()
    }

    /// The leader once the store has settled: every live node reached HQ and all agree on the node
    /// the rule picks among equals (smallest id). Before that, a node whose first probe came late
    /// (a loaded machine) can take the lead from one that already sent everything, and then has
    /// nothing to send.
    async fn settled_leader(&self) -> usize {
        eventually("every live node reached HQ", Duration::from_secs(20), async || {
            self.live()
                .all(|(_, n)| n.uplink.as_ref().is_some_and(|u| u.status().hq_reachable))
        })
        .await;
        let smallest = self.live().map(|(_, n)| n.mesh.origin()).min().unwrap();
        let mut found = None;
        eventually(
            "the smallest id leads, agreed by every live node",
            Duration::from_secs(10),
            async || {
                found = Some(self.leader().await);
                found.is_some_and(|i| self.node(i).mesh.origin() == smallest)
            },
        )
        .await;
        found.unwrap()
    }

    async fn kill(&mut self, i: usize) -> (Dir, Keypair) {
        let mut n = self.nodes[i].take().unwrap();
        if let Some(u) = n.uplink.take() {
            u.shutdown().await;
        }
        n.mesh.shutdown().await.unwrap();
        (n.dir, n.key)
    }

    async fn append(&self, i: usize, entries: Vec<Entry>) {
        let items = entries
            .into_iter()
            .map(|e| match e {
                Entry::Event(e) => (RecordKind::Event, serde_json::to_vec(&e).unwrap()),
                Entry::Action(a) => (RecordKind::Action, serde_json::to_vec(&a).unwrap()),
            })
            .collect();
        self.node(i).mesh.append(items).await.unwrap();
    }

    /// The summaries of every period, computed from node `i`'s whole log.
    async fn expected(&self, i: usize) -> Vec<Summary> {
        let mesh = &self.node(i).mesh;
        let mut ledger = Ledger::new(3600);
        for (origin, high) in mesh.version_vector().await.unwrap() {
            for r in mesh.range(origin, 1, high as usize).await.unwrap() {
                let p = self.secret.decrypt(&r.ciphertext).unwrap();
                let e = match r.kind {
                    RecordKind::Event => Entry::Event(serde_json::from_slice(&p).unwrap()),
                    RecordKind::Action => Entry::Action(serde_json::from_slice(&p).unwrap()),
                    RecordKind::Member | RecordKind::Keys | RecordKind::User => {
                        ledger.add(r.origin, r.seq, None);
                        continue;
                    }
                };
                ledger.add(r.origin, r.seq, Some(e));
            }
        }
        let periods: Vec<i64> = ledger.periods().collect();
        periods.into_iter().map(|p| ledger.summarize(STORE, p)).collect()
    }

    async fn converged(&self) -> bool {
        let mut vvs = Vec::new();
        for (_, n) in self.live() {
            vvs.push(n.mesh.version_vector().await.unwrap());
        }
        net::all_equal(&vvs)
    }

    /// Waits until HQ holds exactly what the merged log says, one summary per period. The version
    /// vectors may differ: a period nothing new happened in keeps the one it was computed from.
    async fn hq_matches_log(&self, hq: &Hq, limit: Duration) -> Duration {
        let i = self.live().next().unwrap().0;
        let content = |v: Vec<Summary>| -> Vec<Summary> {
            v.into_iter()
                .map(|mut s| {
                    s.vv = Default::default();
                    s
                })
                .collect()
        };
        eventually("HQ holds the summaries of the merged log", limit, async || {
            self.converged().await && content(hq.summaries().await) == content(self.expected(i).await)
        })
        .await
    }

    async fn stop(mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                self.kill(i).await;
            }
        }
    }
}

fn crossing(node: usize, at: i64, n: usize) -> Entry {
    Entry::Event(Event {
        incident: format!("n{node}/door/{at}-{n}"),
        phase: Phase::Instant,
        store: STORE.into(),
        node: format!("n{node}"),
        camera: format!("door-{node}"),
        zone: None,
        kind: EventKind::LineCrossing,
        severity: EventKind::LineCrossing.default_severity(),
        started_at_ms: at,
        at_ms: at,
        ended_at_ms: None,
        track: Some(n as u64),
        bbox: Some([0.1, 0.2, 0.1, 0.3]),
        confidence: 0.8,
        model: "nanodet-m-416".into(),
        evidence: None,
        detail: Detail {
            line: Some("main".into()),
            direction: Some(if n % 3 == 0 { Direction::Out } else { Direction::In }),
            ..Detail::default()
        },
    })
}

fn incident(node: usize, at: i64, kind: EventKind) -> Entry {
    let Entry::Event(mut e) = crossing(node, at, 0) else {
        unreachable!()
    };
    e.incident = format!("n{node}/shelf/{at}");
    e.camera = format!("shelf-{node}");
    e.zone = Some("spirits".into());
    e.kind = kind;
    e.severity = kind.default_severity();
    e.detail = Detail::default();
    Entry::Event(e)
}

fn traffic(node: usize, hour_start: i64, n: usize) -> Vec<Entry> {
    let mut v: Vec<Entry> = (0..n)
        .map(|k| crossing(node, hour_start + 1000 * k as i64 + node as i64, k))
        .collect();
    v.push(incident(
        node,
        hour_start + 7000 + node as i64,
        EventKind::ExitWithoutCheckout,
    ));
    v
}

fn this_hour() -> i64 {
    chrono::Utc::now().timestamp_millis().div_euclid(HOUR) * HOUR
}

async fn sent(n: &Node) -> u64 {
    n.uplink.as_ref().unwrap().status().summaries_sent
}

/// A node counts a send once HQ's answer is on its disk, a moment after HQ holds the summary.
async fn counts_a_send(n: &Node, what: &str) {
    eventually(what, Duration::from_secs(5), async || sent(n).await > 0).await;
}

/// Leader elected, summaries arrive; the leader dies, another takes over within the failover time,
/// summaries keep arriving, nothing is counted twice.
async fn failover(postgres: bool) {
    let key = Keypair::generate_ed25519();
    let hq = Hq::start(postgres, &key).await;
    let mut store = Store::new(3, &hq, key).await;
    let leader = store.settled_leader().await;
    let now = this_hour();
    for i in 0..3 {
        store.append(i, traffic(i, now - 2 * HOUR, 5)).await;
        store.append(i, traffic(i, now, 4)).await;
    }
    assert_eq!(store.leader().await, leader, "nothing changed the lead");
    store.hq_matches_log(&hq, Duration::from_secs(20)).await;
    counts_a_send(store.node(leader), "the leader sends").await;
    for (i, n) in store.live() {
        if i != leader {
            assert_eq!(sent(n).await, 0, "only the leader sends");
        }
    }
    // Acknowledge the exit incident on a follower, then kill the leader.
    let Entry::Event(e) = incident(0, now + 7000, EventKind::ExitWithoutCheckout) else {
        unreachable!()
    };
    let ack = Action {
        incident: e.incident,
        incident_started_at_ms: e.started_at_ms,
        action: ActionKind::Acknowledge,
        by: "guard".into(),
        node: "n1".into(),
        at_ms: e.started_at_ms + 20_000,
        note: None,
    };
    let follower = (0..3).find(|i| *i != leader).unwrap();
    store.append(follower, vec![Entry::Action(ack)]).await;
    let killed = Instant::now();
    store.kill(leader).await;
    let next = store.leader().await;
    assert_ne!(next, leader);
    let took = killed.elapsed();
    for i in 0..3 {
        if store.nodes[i].is_some() {
            store.append(i, traffic(i, now, 3)).await;
        }
    }
    store.hq_matches_log(&hq, Duration::from_secs(20)).await;
    counts_a_send(store.node(next), "the new leader sends").await;
    assert!(
        took < LEADER_TIMEOUT + Duration::from_secs(3),
        "failover took {took:?}, documented as the leader timeout"
    );
    let at_hq = hq.summaries().await;
    let current = at_hq.iter().find(|s| s.period_start_ms == now).unwrap();
    assert_eq!(current.acknowledgements.acknowledged, 1);
    assert_eq!(at_hq.len(), 2, "one summary per period");
    eprintln!("failover: new leader agreed {took:?} after the old one died");
    store.stop().await;
}

/// HQ away: the outbox grows, then drains when HQ returns, and HQ's totals are the log's.
async fn hq_outage(postgres: bool) {
    let key = Keypair::generate_ed25519();
    let mut hq = Hq::start(postgres, &key).await;
    let store = Store::new(3, &hq, key).await;
    let leader = store.settled_leader().await;
    let now = this_hour();
    store.append(0, traffic(0, now, 2)).await;
    store.hq_matches_log(&hq, Duration::from_secs(20)).await;
    hq.stop().await;
    for h in 1..=5 {
        for i in 0..3 {
            store.append(i, traffic(i, now - h * HOUR, 3)).await;
        }
    }
    let lu = store.node(leader).uplink.as_ref().unwrap();
    eventually(
        "the outbox holds the periods HQ has not got",
        Duration::from_secs(10),
        async || lu.status().outbox >= 5 && !lu.status().hq_reachable,
    )
    .await;
    let waiting = lu.status().outbox;
    hq.restart().await;
    let drained = store.hq_matches_log(&hq, Duration::from_secs(30)).await;
    let lu = store.node(leader).uplink.as_ref().unwrap();
    eventually("the outbox drains", Duration::from_secs(5), async || {
        lu.status().outbox == 0
    })
    .await;
    let at_hq = hq.summaries().await;
    let footfall: u64 = at_hq
        .iter()
        .map(|s| s.footfall_totals().0 + s.footfall_totals().1)
        .sum();
    assert_eq!(footfall, 2 + 5 * 3 * 3, "every crossing counted once");
    eprintln!("hq outage: {waiting} periods waited; HQ matched the log {drained:?} after it returned");
    store.stop().await;
}

/// A partition elects a leader on each side; both send different summaries of the same hour; after
/// the heal HQ holds exactly the summary of the merged log.
async fn partition(postgres: bool) {
    let key = Keypair::generate_ed25519();
    let hq = Hq::start(postgres, &key).await;
    let store = Store::new(3, &hq, key).await;
    let now = this_hour();
    store.append(0, traffic(0, now, 1)).await;
    store.hq_matches_log(&hq, Duration::from_secs(20)).await;
    let peers = |i: usize| store.node(i).mesh.peer_id();
    let (a, b, c) = (peers(0), peers(1), peers(2));
    store.node(0).mesh.block(vec![b, c]).await.unwrap();
    store.node(1).mesh.block(vec![a]).await.unwrap();
    store.node(2).mesh.block(vec![a]).await.unwrap();
    eventually("each side names its own leader", Duration::from_secs(10), async || {
        let l0 = store.node(0).mesh.leader().await.unwrap();
        let l1 = store.node(1).mesh.leader().await.unwrap();
        l0 == Some(store.node(0).mesh.origin()) && l1.is_some() && l1 != l0
    })
    .await;
    let before: Vec<u64> = vec![
        sent(store.node(0)).await,
        sent(store.node(1)).await,
        sent(store.node(2)).await,
    ];
    store.append(0, traffic(0, now, 4)).await;
    store.append(1, traffic(1, now, 6)).await;
    store.append(2, traffic(2, now, 2)).await;
    // Both leaders upload their side's view of this hour; the second to arrive is concurrent.
    eventually(
        "both sides uploaded different summaries",
        Duration::from_secs(15),
        async || {
            let left = sent(store.node(0)).await > before[0];
            let right = sent(store.node(1)).await > before[1] || sent(store.node(2)).await > before[2];
            left && right && hq.state.metrics.outcomes().keys().any(|k| k.starts_with("concurrent"))
        },
    )
    .await;
    store.node(0).mesh.unblock(vec![b, c]).await.unwrap();
    store.node(1).mesh.unblock(vec![a]).await.unwrap();
    store.node(2).mesh.unblock(vec![a]).await.unwrap();
    store
        .node(1)
        .mesh
        .dial(addr_of(&store.node(0).mesh).await)
        .await
        .unwrap();
    store
        .node(2)
        .mesh
        .dial(addr_of(&store.node(0).mesh).await)
        .await
        .unwrap();
    let healed = store.hq_matches_log(&hq, Duration::from_secs(30)).await;
    let s = hq.summaries().await;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].footfall_totals().0 + s[0].footfall_totals().1, 1 + 4 + 6 + 2);
    eprintln!(
        "partition: HQ held the merged summary {healed:?} after the heal; outcomes {:?}",
        hq.state.metrics.outcomes()
    );
    store.stop().await;
}

/// A node away for two days (no network at all) comes back with old events: those periods are sent
/// again and HQ's figures become right.
async fn offline_two_days(postgres: bool) {
    let key = Keypair::generate_ed25519();
    let hq = Hq::start(postgres, &key).await;
    let mut store = Store::new(3, &hq, key).await;
    let now = this_hour();
    let two_days_ago = now - 48 * HOUR;
    store.append(0, traffic(0, two_days_ago, 3)).await;
    store.append(0, traffic(0, now, 1)).await;
    store.hq_matches_log(&hq, Duration::from_secs(20)).await;
    let before = hq.summaries().await[0].footfall_totals();
    assert_eq!(before.0 + before.1, 3);
    // The node goes away; what its cameras saw meanwhile lands in its own log, timed two days back.
    let (dir, node_key) = store.kill(2).await;
    {
        let mut log =
            lpmesh_mesh::log::Log::open(&dir.0.join("log"), STORE, node_key.clone(), store.secret.recipient()).unwrap();
        // Each record signed as it happened (a record may not claim a time after its signature's).
        for e in traffic(2, two_days_ago, 7)
            .into_iter()
            .chain(traffic(2, two_days_ago + HOUR, 2))
        {
            let Entry::Event(e) = e else { unreachable!() };
            log.append(
                RecordKind::Event,
                &serde_json::to_vec(&e).unwrap(),
                e.at_ms as u64 + 1000,
            )
            .unwrap();
        }
    }
    let boot = vec![addr_of(&store.node(0).mesh).await];
    let back = store.start_node_in(&hq, boot, dir, node_key).await;
    store.nodes[2] = Some(back);
    let took = store.hq_matches_log(&hq, Duration::from_secs(30)).await;
    let s = hq.summaries().await;
    assert_eq!(s.len(), 3, "the two old periods and this one");
    let old = s.iter().find(|x| x.period_start_ms == two_days_ago).unwrap();
    assert_eq!(old.footfall_totals().0 + old.footfall_totals().1, 3 + 7);
    eprintln!("offline two days: HQ right {took:?} after the node came back");
    store.stop().await;
}

/// A leader that answers HQ's probe but never gets a summary through (its HQ URL points at an HQ that
/// has the store registered with another key: every post is refused, 401 `bad_signature`) leads first,
/// being preferred; within the stall limit it is demoted, the other node leads, HQ gets the store's
/// summaries, and the broken node does not take the lead back during its penalty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_gets_nothing_through_is_replaced() {
    const RESEND: Duration = Duration::from_millis(300);
    // `[hq] leader_stall_windows = 4` with `resend_secs` as in `start_node_opts`.
    let stall = 4 * RESEND;
    // What the mesh adds to the limit: a heartbeat interval and the uplink's report interval.
    let lag = Duration::from_millis(300 + net::PROGRESS_REPORT_MS);
    let key = Keypair::generate_ed25519();
    let hq = Hq::start(false, &key).await;
    let wrong = Hq::start(false, &Keypair::generate_ed25519()).await;
    let mut store = Store {
        secret: StoreSecret::generate(),
        signing: key,
        psk: rand::random(),
        nodes: Vec::new(),
    };
    let broken = store
        .start_node_opts(&wrong, vec![], Dir::new("node"), Keypair::generate_ed25519(), 9, stall)
        .await;
    let boot = vec![addr_of(&broken.mesh).await];
    store.nodes.push(Some(broken));
    let good = store
        .start_node_opts(&hq, boot, Dir::new("node"), Keypair::generate_ed25519(), 0, stall)
        .await;
    store.nodes.push(Some(good));
    eventually(
        "both nodes hear each other, reach their HQ, and name the preferred one",
        Duration::from_secs(10),
        async || {
            for (_, n) in store.live() {
                let nodes = n.mesh.nodes().await.unwrap();
                if nodes.len() != 2 || !nodes.iter().all(|x| x.live && x.hq_reachable) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    assert_eq!(store.leader().await, 0, "the higher priority leads first");
    let now = this_hour();
    store.append(0, traffic(0, now, 3)).await;
    store.append(1, traffic(1, now - HOUR, 2)).await;
    let owed = Instant::now();
    eventually(
        "the wrong HQ refuses the broken leader's uploads",
        Duration::from_secs(10),
        async || wrong.state.metrics.rejections().contains_key("bad_signature"),
    )
    .await;
    eventually(
        "the other node leads",
        stall + lag + Duration::from_secs(5),
        async || {
            let mut all = true;
            for (_, n) in store.live() {
                all &= n.mesh.leader().await.unwrap() == Some(store.node(1).mesh.origin());
            }
            all
        },
    )
    .await;
    let replaced = owed.elapsed();
    let broken_status = store.node(0).uplink.as_ref().unwrap().status();
    assert!(
        broken_status.hq_reachable,
        "still answering the probe: the reachability rule alone would keep it"
    );
    store.hq_matches_log(&hq, Duration::from_secs(10)).await;
    let delivered = owed.elapsed();
    assert!(
        replaced < stall + lag + Duration::from_secs(3),
        "replaced {replaced:?} after the uploads began to fail; the limit is {stall:?} + {lag:?}"
    );
    counts_a_send(store.node(1), "the new leader sends").await;
    let bu = store.node(0).uplink.as_ref().unwrap();
    eventually(
        "the demoted node's uplink steps down",
        Duration::from_secs(2),
        async || !bu.status().am_leader,
    )
    .await;
    // The penalty is ten limits: well past another limit, the broken node has not taken the lead back.
    let watch = Instant::now();
    while watch.elapsed() < 2 * (stall + lag) {
        for (_, n) in store.live() {
            assert_eq!(
                n.mesh.leader().await.unwrap(),
                Some(store.node(1).mesh.origin()),
                "the demoted node came back during its penalty"
            );
        }
        assert!(!store.node(0).uplink.as_ref().unwrap().status().am_leader);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(wrong.summaries().await.is_empty());
    eprintln!(
        "stalled leader: replaced {replaced:?}, HQ matched the log {delivered:?} after the uploads began to fail"
    );
    store.stop().await;
}

macro_rules! both_stores {
    ($($name:ident),*) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(false).await })*
        }
        mod postgresql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(true).await })*
        }
    };
}

both_stores!(failover, hq_outage, partition, offline_two_days);
