//! Real swarms on loopback, in one process: propagation, a device without the store key, partition and
//! heal, and a node catching up after being away.

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p_identity::Keypair;
use lpmesh_mesh::crypto::StoreSecret;
use lpmesh_mesh::net::{self, MeshConfig, MeshHandle};
use lpmesh_mesh::record::RecordKind;

const STORE: &str = "store-7";

use lpmesh_testkit::TempDir as Dir;

fn start(dir: &Dir, key: &Keypair, psk: [u8; 32], secret: &StoreSecret, bootstrap: Vec<Multiaddr>) -> MeshHandle {
    start_retaining(dir, key, psk, secret, bootstrap, None)
}

fn start_retaining(
    dir: &Dir,
    key: &Keypair,
    psk: [u8; 32],
    secret: &StoreSecret,
    bootstrap: Vec<Multiaddr>,
    retention: Option<Duration>,
) -> MeshHandle {
    let mut cfg = MeshConfig::new(STORE, psk, dir.0.clone());
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.mdns = false;
    cfg.bootstrap = bootstrap;
    cfg.anti_entropy_interval = Duration::from_millis(1000);
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.leader_timeout = Duration::from_millis(1500);
    cfg.retention = retention;
    net::start(cfg, key.clone(), secret.recipient()).unwrap()
}

async fn addr(h: &MeshHandle) -> Multiaddr {
    for _ in 0..200 {
        if let Some(a) = h.listen_addrs().await.unwrap().first() {
            return format!("{a}/p2p/{}", h.peer_id()).parse().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no listen address");
}

use lpmesh_testkit::eventually;

struct Cluster {
    secret: StoreSecret,
    psk: [u8; 32],
    dirs: Vec<Dir>,
    keys: Vec<Keypair>,
    nodes: Vec<MeshHandle>,
}

impl Cluster {
    /// Stops every actor before the runtime goes away, as a node does on shutdown.
    async fn stop(self, extra: &[&MeshHandle]) {
        for h in self.nodes.iter().chain(extra.iter().copied()) {
            let _ = h.shutdown().await;
        }
    }
}

async fn cluster(n: usize) -> Cluster {
    let secret = StoreSecret::generate();
    let psk: [u8; 32] = rand::random();
    let mut c = Cluster {
        secret,
        psk,
        dirs: Vec::new(),
        keys: Vec::new(),
        nodes: Vec::new(),
    };
    for i in 0..n {
        let dir = Dir::new(&format!("n{i}"));
        let key = Keypair::generate_ed25519();
        let mut boot = Vec::new();
        for h in &c.nodes {
            boot.push(addr(h).await);
        }
        let h = start(&dir, &key, psk, &c.secret, boot);
        c.dirs.push(dir);
        c.keys.push(key);
        c.nodes.push(h);
    }
    for (i, h) in c.nodes.iter().enumerate() {
        eventually(
            &format!("node {i} connected to all"),
            Duration::from_secs(10),
            async || h.peers().await.unwrap().len() == n - 1,
        )
        .await;
    }
    // Let gossipsub build its mesh (two heartbeats).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_appended_on_one_of_five_nodes_is_on_all_within_a_second() {
    let c = cluster(5).await;
    let mut subs: Vec<_> = c.nodes.iter().map(|h| h.subscribe()).collect();
    let t = Instant::now();
    let appended = c.nodes[3]
        .append(vec![(RecordKind::Event, b"loitering at aisle 4".to_vec())])
        .await
        .unwrap();
    let mut latest = Duration::ZERO;
    for (i, s) in subs.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(1), s.recv())
            .await
            .unwrap_or_else(|_| panic!("node {i} did not get it in 1 s"))
            .unwrap();
        assert_eq!(r, appended[0]);
        assert_eq!(c.secret.decrypt(&r.ciphertext).unwrap(), b"loitering at aisle 4");
        latest = latest.max(t.elapsed());
    }
    println!("propagation to all 5 nodes: {latest:?}");
    for h in &c.nodes {
        let s = h.stats().await.unwrap();
        assert!(s.rejected.is_empty(), "{s:?}");
    }
    c.stop(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_the_store_key_cannot_connect() {
    let c = cluster(2).await;
    let dir = Dir::new("intruder");
    let intruder = start(
        &dir,
        &Keypair::generate_ed25519(),
        rand::random(),
        &c.secret,
        vec![addr(&c.nodes[0]).await],
    );
    intruder.dial(addr(&c.nodes[1]).await).await.unwrap();
    eventually(
        "both sides saw the handshake fail",
        Duration::from_secs(15),
        async || {
            c.nodes[0].stats().await.unwrap().handshake_failures > 0
                && intruder.stats().await.unwrap().handshake_failures > 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(intruder.peers().await.unwrap().is_empty());
    assert_eq!(c.nodes[0].peers().await.unwrap().len(), 1, "only the honest peer");
    intruder
        .append(vec![(RecordKind::Event, b"forged".to_vec())])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let vv = c.nodes[0].version_vector().await.unwrap();
    assert!(!vv.contains_key(&intruder.origin()));
    c.stop(&[&intruder]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_into_identical_logs() {
    let c = cluster(5).await;
    let (left, right) = c.nodes.split_at(2);
    let ids = |hs: &[MeshHandle]| hs.iter().map(|h| h.peer_id()).collect::<Vec<_>>();
    for h in left {
        h.block(ids(right)).await.unwrap();
    }
    for h in right {
        h.block(ids(left)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, h) in c.nodes.iter().enumerate() {
        for j in 0..20 {
            h.append(vec![(RecordKind::Event, format!("node {i} event {j}").into_bytes())])
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let vv0 = c.nodes[0].version_vector().await.unwrap();
    let vv4 = c.nodes[4].version_vector().await.unwrap();
    assert_ne!(vv0, vv4, "the sides diverged while split");
    assert_eq!(vv0.len(), 2, "the left side only knows itself: {vv0:?}");
    for h in &c.nodes {
        h.unblock(ids(&c.nodes)).await.unwrap();
    }
    for (i, h) in c.nodes.iter().enumerate() {
        for (j, other) in c.nodes.iter().enumerate() {
            if i < j {
                h.dial(addr(other).await).await.unwrap();
            }
        }
    }
    let took = eventually("all logs identical", Duration::from_secs(10), async || {
        let mut vvs = Vec::new();
        for h in &c.nodes {
            vvs.push(h.version_vector().await.unwrap());
        }
        net::all_equal(&vvs) && net::count(&vvs[0]) == 100
    })
    .await;
    println!("partition healed in {took:?}");
    c.stop(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_away_catches_up_and_continues_its_own_seq() {
    let c = cluster(3).await;
    c.nodes[2]
        .append(vec![(RecordKind::Event, b"before".to_vec())])
        .await
        .unwrap();
    // Its record reached the others before it went away (gossip is fast, but not instant).
    let origin2 = c.nodes[2].origin();
    eventually("node 0 has node 2's record", Duration::from_secs(5), async || {
        c.nodes[0].version_vector().await.unwrap().get(&origin2) == Some(&1)
    })
    .await;
    c.nodes[2].shutdown().await.unwrap();
    let batch: Vec<(RecordKind, Vec<u8>)> = (0..500)
        .map(|i| (RecordKind::Event, format!("event {i:05}").into_bytes()))
        .collect();
    for _ in 0..20 {
        c.nodes[0].append(batch.clone()).await.unwrap();
    }
    let target = c.nodes[0].version_vector().await.unwrap();
    assert_eq!(net::count(&target), 10_001);
    let t = Instant::now();
    let back = start(&c.dirs[2], &c.keys[2], c.psk, &c.secret, vec![addr(&c.nodes[0]).await]);
    eventually("caught up", Duration::from_secs(30), async || {
        back.version_vector().await.unwrap() == target
    })
    .await;
    println!("caught up on 10,000 records in {:?}", t.elapsed());
    let mine = back.append(vec![(RecordKind::Event, b"after".to_vec())]).await.unwrap();
    assert_eq!(mine[0].seq, 2, "its own seq continues after the restart");
    let s = back.stats().await.unwrap();
    println!("{s:?}");
    // Mostly anti-entropy; gossipsub may also hand a newly connected peer its recent messages.
    assert!(s.repaired >= 9_000 && s.repaired + s.received_gossip >= 10_000, "{s:?}");
    c.stop(&[&back]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_from_a_peer_with_the_key_are_rejected_counted_and_honest_ones_still_flow() {
    use lpmesh_mesh::hlc::Timestamp;
    use lpmesh_mesh::record::{Record, WIRE_VERSION};
    // One bad message is enough to get a peer banned, so each kind comes from its own attacker
    // (nodes 2 to 5), and each is counted by its reason.
    let c = cluster(6).await;
    let attacker = &c.nodes[2];
    let good = attacker
        .append(vec![(RecordKind::Event, b"honest".to_vec())])
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Malformed CBOR, a forged signature, another store, and a second record under an existing seq.
    let mut forged = good.clone();
    forged.ciphertext[0] ^= 1;
    forged.seq = 2;
    let other_store = Record::seal(
        "store-8",
        &c.keys[2],
        3,
        Timestamp::default(),
        RecordKind::Event,
        vec![1],
    )
    .unwrap();
    let equivocation = Record::seal(
        STORE,
        &c.keys[2],
        1,
        Timestamp::default(),
        RecordKind::Event,
        vec![9, 9],
    )
    .unwrap();
    for (i, bytes) in [
        vec![WIRE_VERSION, 0xff, 0x13, 0x37],
        forged.encode(),
        other_store.encode(),
        equivocation.encode(),
    ]
    .into_iter()
    .enumerate()
    {
        c.nodes[2 + i].publish_raw(bytes).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let honest = c.nodes[0]
        .append(vec![(RecordKind::Event, b"still flowing".to_vec())])
        .await
        .unwrap()
        .remove(0);
    eventually("the honest record reached node 1", Duration::from_secs(3), async || {
        c.nodes[1].version_vector().await.unwrap().get(&honest.origin) == Some(&honest.seq)
    })
    .await;
    let s = c.nodes[1].stats().await.unwrap();
    for reason in ["malformed", "bad_signature", "wrong_store", "equivocation"] {
        assert!(
            s.rejected.get(reason).copied().unwrap_or(0) >= 1,
            "{reason} not counted: {s:?}"
        );
    }
    let vv = c.nodes[1].version_vector().await.unwrap();
    assert_eq!(
        vv.get(&good.origin),
        Some(&1),
        "only the attacker's genuine record is held"
    );
    c.stop(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_agree_on_the_uplink_leader_and_fail_over() {
    let c = cluster(3).await;
    c.nodes[1].set_hq_reachable(true).await.unwrap();
    c.nodes[2].set_hq_reachable(true).await.unwrap();
    // Both reachable, same priority: the smaller id leads; the unreachable node 0 never does.
    let (a, b) = (c.nodes[1].origin(), c.nodes[2].origin());
    let (first, second, first_idx) = if a < b { (a, b, 1) } else { (b, a, 2) };
    for (i, h) in c.nodes.iter().enumerate() {
        eventually(
            &format!("node {i} names the leader"),
            Duration::from_secs(5),
            async || h.leader().await.unwrap() == Some(first),
        )
        .await;
    }
    c.nodes[first_idx].shutdown().await.unwrap();
    let t = Instant::now();
    for (i, h) in c.nodes.iter().enumerate().filter(|(i, _)| *i != first_idx) {
        eventually(&format!("node {i} fails over"), Duration::from_secs(5), async || {
            h.leader().await.unwrap() == Some(second)
        })
        .await;
    }
    println!("failover in {:?} (leader timeout 1.5 s)", t.elapsed());
    c.stop(&[]).await;
}

/// A member that claims the top priority in its heartbeats does not lead once the store's member
/// records rank the nodes: every node uses the recorded priorities, its own included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_come_from_the_member_records_not_from_heartbeats() {
    let secret = StoreSecret::generate();
    let psk: [u8; 32] = rand::random();
    let dirs: Vec<Dir> = (0..3).map(|i| Dir::new(&format!("rank{i}"))).collect();
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let mut nodes: Vec<MeshHandle> = Vec::new();
    for (i, (d, k)) in dirs.iter().zip(&keys).enumerate() {
        let mut cfg = MeshConfig::new(STORE, psk, d.0.clone());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.mdns = false;
        cfg.heartbeat_interval = Duration::from_millis(300);
        cfg.leader_timeout = Duration::from_millis(1500);
        // Node 2 claims the top rank for itself.
        cfg.priority = if i == 2 { u8::MAX } else { 0 };
        if let Some(first) = nodes.first() {
            cfg.bootstrap = vec![addr(first).await];
        }
        nodes.push(net::start(cfg, k.clone(), secret.recipient()).unwrap());
    }
    for h in &nodes {
        h.set_hq_reachable(true).await.unwrap();
    }
    let claimer = nodes[2].origin();
    for (i, h) in nodes.iter().enumerate() {
        eventually(
            &format!("node {i} follows the claim"),
            Duration::from_secs(5),
            async || h.leader().await.unwrap() == Some(claimer),
        )
        .await;
    }
    // The member records rank node 1 first and node 2 last (node 0, the founder, has no record and
    // keeps the priority it claims: 0).
    let ranks: std::collections::HashMap<_, _> = [(nodes[1].origin(), 5u8), (nodes[2].origin(), 0u8)]
        .into_iter()
        .collect();
    for h in &nodes {
        h.set_priorities(ranks.clone()).await.unwrap();
    }
    let first = nodes[1].origin();
    for (i, h) in nodes.iter().enumerate() {
        eventually(
            &format!("node {i} names the recorded first"),
            Duration::from_secs(5),
            async || h.leader().await.unwrap() == Some(first),
        )
        .await;
    }
    for h in &nodes {
        h.shutdown().await.unwrap();
    }
}

/// Nodes that only know the first node as bootstrap learn each other from heartbeats, so the store
/// keeps one mesh when that first node goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_survives_the_loss_of_the_bootstrap_node() {
    let secret = StoreSecret::generate();
    let psk: [u8; 32] = rand::random();
    let dirs: Vec<Dir> = (0..3).map(|i| Dir::new(&format!("star{i}"))).collect();
    let hub = start(&dirs[0], &Keypair::generate_ed25519(), psk, &secret, vec![]);
    let boot = vec![addr(&hub).await];
    let a = start(&dirs[1], &Keypair::generate_ed25519(), psk, &secret, boot.clone());
    let b = start(&dirs[2], &Keypair::generate_ed25519(), psk, &secret, boot);
    let took = eventually("the spokes dial each other", Duration::from_secs(10), async || {
        a.peers().await.unwrap().contains(&b.peer_id())
    })
    .await;
    hub.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut sub = b.subscribe();
    let sent = a
        .append(vec![(RecordKind::Event, b"after the hub went".to_vec())])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, sent[0]);
    eprintln!("spokes connected {took:?} after start");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Every (origin, seq) a node holds.
async fn held(h: &MeshHandle) -> std::collections::BTreeSet<(String, u64)> {
    let mut out = std::collections::BTreeSet::new();
    for (o, high) in h.version_vector().await.unwrap() {
        for r in h.range(o, 1, high as usize + 1).await.unwrap() {
            out.insert((o.to_string(), r.seq));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_leave_every_node_and_newcomers_converge_past_them() {
    const RETENTION: Duration = Duration::from_secs(6);
    let secret = StoreSecret::generate();
    let psk: [u8; 32] = rand::random();
    let dirs: Vec<Dir> = (0..4).map(|i| Dir::new(&format!("r{i}"))).collect();
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let mut nodes: Vec<MeshHandle> = Vec::new();
    for i in 0..3 {
        let mut boot = Vec::new();
        for h in &nodes {
            boot.push(addr(h).await);
        }
        nodes.push(start_retaining(&dirs[i], &keys[i], psk, &secret, boot, Some(RETENTION)));
    }
    let old: Vec<(RecordKind, Vec<u8>)> = (0..20).map(|i| (RecordKind::Event, vec![i])).collect();
    for h in &nodes {
        h.append(old.clone()).await.unwrap();
    }
    eventually(
        "every node holds the 60 old records",
        Duration::from_secs(10),
        async || {
            for h in &nodes {
                if held(h).await.len() != 60 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // Node 2 is away while the old records expire; it keeps them on its disk.
    let away = nodes.pop().unwrap();
    away.shutdown().await.unwrap();
    tokio::time::sleep(RETENTION + Duration::from_millis(500)).await;
    for h in &nodes {
        h.append(vec![(RecordKind::Event, b"new".to_vec()); 5]).await.unwrap();
    }
    eventually("only the 10 new records are left", Duration::from_secs(4), async || {
        held(&nodes[0]).await.len() == 10 && held(&nodes[1]).await == held(&nodes[0]).await
    })
    .await;
    let target = nodes[0].version_vector().await.unwrap();
    assert_eq!(net::count(&target), 20 + 25 + 25, "the version vector never goes back");

    // The node that was away comes back with expired records, and a new node joins with none: both
    // end with the same log and version vector, and nobody asks for the expired records again.
    let boot = vec![addr(&nodes[0]).await];
    let back = start_retaining(&dirs[2], &keys[2], psk, &secret, boot.clone(), Some(RETENTION));
    let fresh = start_retaining(&dirs[3], &keys[3], psk, &secret, boot, Some(RETENTION));
    let want = held(&nodes[0]).await;
    let t = Instant::now();
    eventually("back and fresh converge", Duration::from_secs(4), async || {
        let mut ok = true;
        for h in [&back, &fresh] {
            let mut vv = h.version_vector().await.unwrap();
            // The newcomer joined after node 2 went away: it knows node 2 only through the floor.
            vv.retain(|_, s| *s > 0);
            ok &= vv == target && held(h).await == want;
        }
        ok
    })
    .await;
    println!("converged past the expired records in {:?}", t.elapsed());
    let s = fresh.stats().await.unwrap();
    assert!(s.expired_received >= 1, "{s:?}");
    assert_eq!(s.records, 10, "{s:?}");
    assert!(back.stats().await.unwrap().expired >= 20);
    let mine = back.append(vec![(RecordKind::Event, b"after".to_vec())]).await.unwrap();
    assert_eq!(mine[0].seq, 21, "its own seq continues past its expired records");
    for h in nodes.iter().chain([&back, &fresh]) {
        let _ = h.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_forging_peer_with_the_key_is_scored_down_and_cut_off_while_the_others_converge() {
    use lpmesh_mesh::hlc::Timestamp;
    use lpmesh_mesh::record::{Record, MAX_RECORD_BYTES, WIRE_VERSION};
    let c = cluster(3).await;
    let attacker = c.nodes[2].clone();
    let victim = c.nodes[0].origin();
    let old = c.nodes[0]
        .append(vec![(RecordKind::Event, b"old".to_vec())])
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A record claiming node 0 as its origin, signed with the attacker's key.
    let mut forged_origin =
        Record::seal(STORE, &c.keys[2], 2, Timestamp::default(), RecordKind::Event, vec![7]).unwrap();
    forged_origin.origin = victim;
    let flood = tokio::spawn(async move {
        for i in 0..3000u32 {
            let bytes = match i % 4 {
                0 => vec![WIRE_VERSION, 0xff, (i % 251) as u8, (i / 251) as u8],
                1 => forged_origin.encode(),
                2 => vec![WIRE_VERSION; MAX_RECORD_BYTES + 100 + (i as usize % 1000)],
                _ => old.encode(),
            };
            if attacker.publish_raw(bytes).await.is_err() {
                break;
            }
        }
    });
    // Honest records keep flowing between the honest nodes through the flood.
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let r = c.nodes[0]
            .append(vec![(RecordKind::Event, format!("honest {i}").into_bytes())])
            .await
            .unwrap()
            .remove(0);
        let took = eventually(
            "an honest record during the flood",
            Duration::from_secs(5),
            async || c.nodes[1].version_vector().await.unwrap().get(&r.origin) == Some(&r.seq),
        )
        .await;
        worst = worst.max(took);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    flood.await.unwrap();
    let attacker_id = c.nodes[2].peer_id();
    for h in &c.nodes[..2] {
        eventually("the attacker is cut off", Duration::from_secs(5), async || {
            !h.peers().await.unwrap().contains(&attacker_id)
        })
        .await;
        let s = h.stats().await.unwrap();
        assert!(s.peers_banned >= 1, "{s:?}");
        // The first invalid messages are counted; then gossipsub stops listening and the actor bans
        // the peer, so most of the 3000 never get in.
        let rejected: u64 = s.rejected.values().sum();
        assert!((1..500).contains(&rejected), "{s:?}");
    }
    // Node 0's log holds only its own records: nothing forged in its name.
    assert_eq!(c.nodes[1].version_vector().await.unwrap().get(&victim), Some(&11));
    println!(
        "flood of 3000 bad messages: attacker cut off, honest records through in at most {worst:?} ({:?} in all)",
        t.elapsed()
    );
    c.stop(&[]).await;
}

/// An answer part carrying `bytes` as its records, as a hostile peer with the store key can send.
fn raw_part(bytes: Vec<u8>) -> net::SyncRequest {
    net::SyncRequest::Records {
        records: vec![serde_bytes::ByteBuf::from(bytes)],
        answer: 1,
        part: 0,
        parts: 1,
        full: false,
    }
}

fn now_ms() -> u64 {
    lpmesh_testkit::now_ms() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_sync_answers_carry_invalid_records_is_banned_like_a_gossiping_one() {
    use lpmesh_mesh::hlc::Timestamp;
    use lpmesh_mesh::record::{Record, WIRE_VERSION};
    // Node 0 is the target; nodes 1 to 4 each send it one kind of invalid record in an anti-entropy
    // answer (never gossiped): one invalid record is enough, as for gossip.
    let c = cluster(5).await;
    let good = c.nodes[4]
        .append(vec![(RecordKind::Event, b"honest".to_vec())])
        .await
        .unwrap()
        .remove(0);
    eventually("node 0 holds the genuine record", Duration::from_secs(5), async || {
        c.nodes[0].version_vector().await.unwrap().get(&good.origin) == Some(&1)
    })
    .await;
    let mut forged = good.clone();
    forged.ciphertext[0] ^= 1;
    forged.seq = 2;
    let other_store = Record::seal(
        "store-8",
        &c.keys[3],
        1,
        Timestamp::default(),
        RecordKind::Event,
        vec![1],
    )
    .unwrap();
    let equivocation = Record::seal(
        STORE,
        &c.keys[4],
        1,
        Timestamp::default(),
        RecordKind::Event,
        vec![9, 9],
    )
    .unwrap();
    let target = c.nodes[0].peer_id();
    for (i, bytes) in [
        vec![WIRE_VERSION, 0xff, 0x13, 0x37],
        forged.encode(),
        other_store.encode(),
        equivocation.encode(),
    ]
    .into_iter()
    .enumerate()
    {
        c.nodes[1 + i].send_sync_raw(target, raw_part(bytes)).await.unwrap();
    }
    let attackers: Vec<_> = c.nodes[1..].iter().map(|h| h.peer_id()).collect();
    eventually("every attacker is cut off", Duration::from_secs(5), async || {
        let peers = c.nodes[0].peers().await.unwrap();
        attackers.iter().all(|a| !peers.contains(a))
    })
    .await;
    let s = c.nodes[0].stats().await.unwrap();
    for reason in ["malformed", "bad_signature", "wrong_store", "equivocation"] {
        assert!(
            s.rejected.get(reason).copied().unwrap_or(0) >= 1,
            "{reason} not counted: {s:?}"
        );
    }
    assert_eq!(s.peers_banned, 4, "{s:?}");
    assert_eq!(s.peers_banned_by.get("invalid_sync"), Some(&4), "{s:?}");
    assert_eq!(c.nodes[0].version_vector().await.unwrap().get(&good.origin), Some(&1));
    // Banned, not just disconnected: a redial is refused for the ban's minute.
    c.nodes[1].dial(addr(&c.nodes[0]).await).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!c.nodes[0].peers().await.unwrap().contains(&attackers[0]));
    c.stop(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_spamming_sync_questions_is_rate_limited_while_honest_sync_converges() {
    let c = cluster(3).await;
    // Node 1 is cut off from both others while it appends, so only anti-entropy can bring its
    // records to node 0 afterwards.
    let (n0, n1, n2) = (c.nodes[0].peer_id(), c.nodes[1].peer_id(), c.nodes[2].peer_id());
    c.nodes[1].block(vec![n0, n2]).await.unwrap();
    c.nodes[0].block(vec![n1]).await.unwrap();
    c.nodes[2].block(vec![n1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let batch: Vec<(RecordKind, Vec<u8>)> = (0..300).map(|i| (RecordKind::Event, vec![i as u8])).collect();
    c.nodes[1].append(batch).await.unwrap();
    // Node 2 asks node 0 for everything (an empty version vector), 200 times in about half a second.
    let spammer = c.nodes[2].clone();
    let spam = tokio::spawn(async move {
        for _ in 0..20 {
            for _ in 0..10 {
                let q = net::SyncRequest::Summary {
                    vv: vec![],
                    reply: false,
                };
                spammer.send_sync_raw(n0, q).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    for h in &c.nodes {
        h.unblock(vec![n0, n1, n2]).await.unwrap();
    }
    c.nodes[1].dial(addr(&c.nodes[0]).await).await.unwrap();
    spam.await.unwrap();
    let want = c.nodes[1].version_vector().await.unwrap();
    let took = eventually("node 0 caught up with node 1", Duration::from_secs(10), async || {
        c.nodes[0].version_vector().await.unwrap() == want
    })
    .await;
    let s = c.nodes[0].stats().await.unwrap();
    let refused = s.rejected.get("sync_rate_limited").copied().unwrap_or(0);
    // 200 questions over ~0.5 s: the burst of 10 and ~5 a second are answered, the rest refused.
    assert!(refused >= 150, "{s:?}");
    assert_eq!(s.peers_banned, 0, "asking too often is refused, not banned: {s:?}");
    println!("{refused} questions refused; honest anti-entropy caught up in {took:?}");
    c.stop(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_a_clock_far_ahead_is_refused_counted_not_forwarded_and_not_punished() {
    use lpmesh_mesh::hlc::Timestamp;
    use lpmesh_mesh::record::Record;
    let c = cluster(3).await;
    // Node 2 reaches node 1 only through node 0, so whatever node 1 gets of node 2's was forwarded.
    let (n0, n1, n2) = (c.nodes[0].peer_id(), c.nodes[1].peer_id(), c.nodes[2].peer_id());
    c.nodes[1].block(vec![n2]).await.unwrap();
    c.nodes[2].block(vec![n1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Signed by a node whose clock runs an hour ahead, relayed by node 2.
    let skewed = Keypair::generate_ed25519();
    let hlc = Timestamp {
        wall_ms: now_ms() + 3_600_000,
        logical: 0,
    };
    let early = Record::seal(
        STORE,
        &skewed,
        1,
        hlc,
        RecordKind::Event,
        c.secret.recipient().encrypt(b"early").unwrap(),
    )
    .unwrap();
    c.nodes[2].publish_raw(early.encode()).await.unwrap();
    eventually("node 0 refused it", Duration::from_secs(3), async || {
        c.nodes[0]
            .stats()
            .await
            .unwrap()
            .rejected
            .get("future")
            .copied()
            .unwrap_or(0)
            >= 1
    })
    .await;
    // The same record in an anti-entropy answer: refused the same way, and no offence either.
    c.nodes[2].send_sync_raw(n0, raw_part(early.encode())).await.unwrap();
    eventually("node 0 refused it again", Duration::from_secs(3), async || {
        c.nodes[0]
            .stats()
            .await
            .unwrap()
            .rejected
            .get("future")
            .copied()
            .unwrap_or(0)
            >= 2
    })
    .await;
    // A record node 2 appends now does travel through node 0 to node 1: the path works.
    let honest = c.nodes[2]
        .append(vec![(RecordKind::Event, b"on time".to_vec())])
        .await
        .unwrap()
        .remove(0);
    eventually(
        "node 1 got node 2's honest record",
        Duration::from_secs(5),
        async || c.nodes[1].version_vector().await.unwrap().get(&honest.origin) == Some(&honest.seq),
    )
    .await;
    let origin = early.origin;
    for (i, h) in c.nodes[..2].iter().enumerate() {
        let s = h.stats().await.unwrap();
        assert_eq!(s.peers_banned, 0, "node {i}: a skewed clock is no offence: {s:?}");
        assert!(
            !h.version_vector().await.unwrap().contains_key(&origin),
            "node {i} holds it"
        );
        assert_eq!(h.range(origin, 1, 10).await.unwrap(), vec![], "node {i} stored it");
    }
    assert!(
        c.nodes[0].peers().await.unwrap().contains(&n2),
        "node 2 is still connected"
    );
    let s1 = c.nodes[1].stats().await.unwrap();
    assert_eq!(s1.rejected.get("future"), None, "node 0 did not forward it: {s1:?}");
    c.stop(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_appended_together_go_out_as_bundles_and_a_bad_bundle_is_refused_whole() {
    use lpmesh_mesh::hlc::Timestamp;
    use lpmesh_mesh::record::{bundles, Record};
    // Nodes 3, 4 and 5 are attackers holding the store key: one bad message each gets them banned.
    let c = cluster(6).await;
    let batch: Vec<(RecordKind, Vec<u8>)> = (0..600).map(|i| (RecordKind::Event, vec![i as u8; 300])).collect();
    let appended = c.nodes[2].append(batch).await.unwrap();
    let last = appended.last().unwrap().clone();
    for i in [0, 1] {
        eventually(
            &format!("node {i} holds the batch"),
            Duration::from_secs(5),
            async || c.nodes[i].version_vector().await.unwrap().get(&last.origin) == Some(&600),
        )
        .await;
    }
    // Gossip is milliseconds; anti-entropy (every second here) may still bring some first.
    eventually(
        "the whole batch came by gossip too",
        Duration::from_secs(3),
        async || c.nodes[0].stats().await.unwrap().received_gossip >= 600,
    )
    .await;
    let s = c.nodes[0].stats().await.unwrap();
    assert!(s.rejected.is_empty(), "{s:?}");
    // A bundle holding one forged record among genuine ones, and a truncated bundle.
    let key = &c.keys[3];
    let seal = |seq: u64| Record::seal(STORE, key, seq, Timestamp::default(), RecordKind::Event, vec![1]).unwrap();
    let mut forged = seal(2);
    forged.ciphertext[0] ^= 1;
    let encoded = [seal(1).encode(), forged.encode(), seal(3).encode()];
    let bad = bundles(encoded.iter().map(Vec::as_slice)).remove(0);
    c.nodes[3].publish_raw(bad).await.unwrap();
    let good = bundles([seal(1).encode().as_slice()]).remove(0);
    c.nodes[4].publish_raw(good[..good.len() - 3].to_vec()).await.unwrap();
    // A bundle of genuine records, but another node's (node 3's): a bundle carries its publisher's own.
    c.nodes[5].publish_raw(good).await.unwrap();
    eventually(
        "the three bad bundles refused and counted",
        Duration::from_secs(3),
        async || {
            let s = c.nodes[0].stats().await.unwrap();
            ["bad_signature", "malformed", "foreign_bundle"]
                .iter()
                .all(|r| s.rejected.get(*r).is_some_and(|n| *n >= 1))
        },
    )
    .await;
    let vv = c.nodes[0].version_vector().await.unwrap();
    let forger = lpmesh_mesh::record::Origin::of(key).unwrap();
    assert!(
        vv.get(&forger).copied().unwrap_or(0) < 2,
        "nothing past the forged record is held in order: {vv:?}"
    );
    c.stop(&[]).await;
}

/// A burst from one node loads every receiver's CPU and send queues (slow consumers, IWANT promises
/// kept late): that is load, not misbehaviour, and must cut nobody off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_appends_bans_no_honest_peer() {
    let c = cluster(6).await;
    let batch: Vec<(RecordKind, Vec<u8>)> = (0..500).map(|_| (RecordKind::Event, vec![7u8; 400])).collect();
    for _ in 0..30 {
        c.nodes[0].append(batch.clone()).await.unwrap();
    }
    let target = c.nodes[0].version_vector().await.unwrap();
    for (i, h) in c.nodes.iter().enumerate() {
        eventually(
            &format!("node {i} holds the burst"),
            Duration::from_secs(60),
            async || h.version_vector().await.unwrap() == target,
        )
        .await;
    }
    for (i, h) in c.nodes.iter().enumerate() {
        let s = h.stats().await.unwrap();
        assert_eq!(
            s.peers_banned, 0,
            "node {i} banned an honest peer: {:?}",
            s.peers_banned_by
        );
    }
    c.stop(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_a_new_network_key_is_reached_and_the_old_key_alone_gets_nowhere() {
    let secret = StoreSecret::generate();
    let (old, new): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
    let (da, db, dc) = (Dir::new("ka"), Dir::new("kb"), Dir::new("kc"));
    let (ka, kb, kc) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let a = start(&da, &ka, old, &secret, vec![]);
    let b = start(&db, &kb, old, &secret, vec![addr(&a).await]);
    eventually("a and b connected", Duration::from_secs(10), async || {
        a.peers().await.unwrap().len() == 1
    })
    .await;
    // Heard of each other by heartbeat, then apart while a moves to a new key epoch.
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.block(vec![b.peer_id()]).await.unwrap();
    eventually("apart", Duration::from_secs(10), async || {
        b.peers().await.unwrap().is_empty()
    })
    .await;
    a.set_network_keys(vec![new, old]).await.unwrap();
    a.unblock(vec![b.peer_id()]).await.unwrap();
    let failures_before = b.stats().await.unwrap().handshake_failures;
    // b holds the old key only: its own dials fail, but a dials it with the old key after the new
    // one fails, and they are connected again.
    eventually("a reached b with the old key", Duration::from_secs(30), async || {
        a.peers().await.unwrap() == vec![b.peer_id()]
    })
    .await;
    assert!(
        b.stats().await.unwrap().handshake_failures > failures_before,
        "b's dials under the old key failed against a"
    );
    // A node that holds the old key only and that a never knew (a revoked one) gets nowhere.
    let c = start(&dc, &kc, old, &secret, vec![addr(&a).await]);
    eventually("c's dial failed", Duration::from_secs(15), async || {
        c.stats().await.unwrap().handshake_failures > 0
    })
    .await;
    assert!(c.peers().await.unwrap().is_empty());
    assert!(!a.peers().await.unwrap().contains(&c.peer_id()));
    // Once b holds the new key too, it accepts only that one.
    b.set_network_keys(vec![new, old]).await.unwrap();
    let c_failures = c.stats().await.unwrap().handshake_failures;
    c.dial(addr(&b).await).await.unwrap();
    eventually("c's dial to b failed", Duration::from_secs(15), async || {
        c.stats().await.unwrap().handshake_failures > c_failures
    })
    .await;
    assert!(c.peers().await.unwrap().is_empty());
    for h in [&a, &b, &c] {
        let _ = h.shutdown().await;
    }
}
