//! Five real `lpmesh run` nodes of one store on loopback, every link between two nodes through its own
//! fault-injecting proxy (and the uplink to HQ through one more), while each node appends events:
//! random partitions, link delays, connection-cutting loss, HQ outages and node restarts (SIGKILL or
//! SIGINT). Then everything heals; the nodes must converge, their logs be identical with no duplicates,
//! and HQ's summaries equal those computed from the union of the logs.
//!
//! The CI run has about a minute of chaos. `scripts/soak.sh --soak MINUTES` runs it longer
//! (`LPMESH_SOAK_MINUTES`); `LPMESH_CHURN_SEED` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lpmesh_hq::store::{Embedded, Filter};
use lpmesh_tests::{
    interrupt, log_tail, lpmesh, metric, now_ms, ok, scrape, spawn_appending as spawn, ChildGuard, FaultProxy,
    HeldPort, Rng, TempDir,
};

const NODES: usize = 5;
const STORE: &str = "shop-churn";

struct Node {
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
    listen: HeldPort,
    ops: HeldPort,
    proc: Option<ChildGuard>,
    started: Instant,
    id: String,
}

impl Node {
    /// A node that stopped on its own fails the test with its last words.
    fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.proc.as_mut().map(|p| p.try_wait()) {
            panic!(
                "{} exited with {status}:\n{}",
                self.data.display(),
                log_tail(&self.log, 40)
            );
        }
    }

    fn write_config(&mut self, proxies: &BTreeMap<(usize, usize), FaultProxy>, me: usize, hq: &HqInfo) {
        self.ops = HeldPort::new();
        let boot: Vec<String> = (0..NODES)
            .filter(|&j| j != me)
            .map(|j| format!("\"/ip4/127.0.0.1/tcp/{}\"", proxies[&(me, j)].port()))
            .collect();
        std::fs::write(
            &self.config,
            format!(
                "store = \"{STORE}\"\nnode = \"n{me}\"\ndata_dir = \"{}\"\n[ui]\nenabled = false\n[ops]\nlisten = \"127.0.0.1:{}\"\n\
                 [mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{}\"]\nbootstrap = [{}]\nannounce = []\nmdns = false\n\
                 anti_entropy_secs = 1.0\nheartbeat_secs = 0.5\nleader_timeout_secs = 2.0\n\
                 [hq]\nurl = \"https://localhost:{}\"\nrecipient = \"{}\"\nca_cert = \"{}\"\nprobe_secs = 0.5\nresend_secs = 0.5\ntimeout_secs = 2.0\n",
                self.data.display(),
                self.ops.port(),
                self.listen.port(),
                boot.join(", "),
                hq.proxy_port,
                hq.recipient,
                hq.cert.display()
            ),
        )
        .unwrap();
    }

    fn start(&mut self, until_ms: i64) {
        let until = until_ms.to_string();
        self.listen.release();
        self.ops.release();
        self.started = Instant::now();
        self.proc = Some(spawn(
            &[
                "run",
                "--config",
                &self.config.to_string_lossy(),
                "--synthetic",
                "4",
                "--synthetic-until",
                &until,
            ],
            &self.log,
        ));
    }
}

struct HqInfo {
    proxy_port: u16,
    recipient: String,
    cert: PathBuf,
}

fn all_links(proxies: &BTreeMap<(usize, usize), FaultProxy>, f: impl Fn(&FaultProxy)) {
    proxies.values().for_each(f);
}

#[test]
fn five_nodes_through_partitions_delays_loss_and_restarts_converge_with_hq_matching_the_union_log() {
    let soak_minutes: f64 = std::env::var("LPMESH_SOAK_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let chaos = if soak_minutes > 0.0 {
        Duration::from_secs_f64(soak_minutes * 60.0)
    } else {
        Duration::from_secs(60)
    };
    let seed = std::env::var("LPMESH_CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() as u64);
    println!("LPMESH_CHURN_SEED={seed}, {chaos:?} of chaos");
    let mut rng = Rng(seed | 1);
    let dir = TempDir::new("churn");

    // HQ (embedded store), reached through its own proxy.
    let mut hq_hold = HeldPort::new();
    let hq_port = hq_hold.port();
    let hq_setup = lpmesh_tests::hq_setup(&dir.0, hq_port, "dashboard_listen = \"127.0.0.1:0\"\n");
    let (hq_cfg, recipient) = (hq_setup.config.clone(), hq_setup.recipient.clone());
    let hq_proxy = FaultProxy::start(([127, 0, 0, 1], hq_port).into());
    let hq = HqInfo {
        proxy_port: hq_proxy.port(),
        recipient,
        cert: hq_setup.cert.clone(),
    };

    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| Node {
            data: dir.join(format!("n{i}")),
            config: dir.join(format!("n{i}.toml")),
            log: dir.join(format!("n{i}.log")),
            listen: HeldPort::new(),
            ops: HeldPort::new(),
            proc: None,
            started: Instant::now(),
            id: String::new(),
        })
        .collect();
    ok(&["init", "--store", STORE, "--data", &nodes[0].data.to_string_lossy()]);
    for n in &nodes[1..] {
        lpmesh_tests::enrol(&nodes[0].data, &n.data);
    }
    hq_setup.register(STORE, &nodes[0].data);
    hq_hold.release();
    let mut hq_proc = spawn(&["hq", "--config", &hq_cfg], &dir.join("hq.log"));

    let mut proxies: BTreeMap<(usize, usize), FaultProxy> = BTreeMap::new();
    for i in 0..NODES {
        for (j, to) in nodes.iter().enumerate() {
            if i != j {
                proxies.insert((i, j), FaultProxy::start(([127, 0, 0, 1], to.listen.port()).into()));
            }
        }
    }
    // Load for the whole chaos, and a little after the heal (so appends meet a healing mesh too).
    let start = Instant::now();
    let load_until = now_ms() + chaos.as_millis() as i64;
    for (i, n) in nodes.iter_mut().enumerate() {
        n.write_config(&proxies, i, &hq);
        n.start(load_until);
    }

    // The proxies carry all the traffic (nodes announce no address of their own): node 0 cut off
    // from every link hears nothing more of node 1, while node 1 goes on appending.
    let id1 = {
        let t = Instant::now();
        loop {
            let out = lpmesh()
                .args(["status", "--data", &nodes[1].data.to_string_lossy(), "--json"])
                .output()
                .unwrap();
            if let Some(id) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["node"].as_str().map(str::to_string))
            {
                break id;
            }
            nodes[1].assert_running();
            assert!(
                t.elapsed() < Duration::from_secs(45),
                "node 1 wrote no status:\n{}",
                log_tail(&nodes[1].log, 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let seen_by_0 = |n: &[Node]| {
        scrape(n[0].ops.port()).and_then(|m| metric(&m, &format!("lpmesh_log_origin_seq{{origin=\"{id1}\"}}")))
    };
    let t = Instant::now();
    while seen_by_0(&nodes).is_none_or(|s| s < 4.0) {
        assert!(t.elapsed() < Duration::from_secs(30), "node 0 never heard of node 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    for ((i, j), p) in &proxies {
        p.block(*i == 0 || *j == 0);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (before, own_before) = (
        seen_by_0(&nodes),
        scrape(nodes[1].ops.port()).and_then(|m| metric(&m, "lpmesh_log_own_seq")),
    );
    std::thread::sleep(Duration::from_secs(3));
    let (after, own_after) = (
        seen_by_0(&nodes),
        scrape(nodes[1].ops.port()).and_then(|m| metric(&m, "lpmesh_log_own_seq")),
    );
    assert_eq!(
        before, after,
        "node 0 heard node 1 with every link of its cut: traffic bypasses the proxies"
    );
    assert!(
        own_after > own_before.map(|s| s + 5.0),
        "node 1 stopped appending: {own_before:?} -> {own_after:?}"
    );
    all_links(&proxies, |p| p.block(false));

    let (mut partitions, mut restarts, mut outages, mut degraded) = (0, 0, 0, 0);
    let mut down: Option<(usize, Instant)> = None;
    while start.elapsed() < chaos {
        std::thread::sleep(Duration::from_millis(700 + rng.below(1800)));
        if let Some((i, back_at)) = down {
            if Instant::now() >= back_at {
                nodes[i].write_config(&proxies, i, &hq);
                nodes[i].start(load_until);
                down = None;
            }
        }
        match rng.below(6) {
            0 | 1 => {
                // A random split in two: every link across it is cut, both ways.
                let side: Vec<bool> = (0..NODES).map(|_| rng.below(2) == 0).collect();
                for ((i, j), p) in &proxies {
                    p.block(side[*i] != side[*j]);
                }
                partitions += 1;
            }
            2 => all_links(&proxies, |p| p.block(false)),
            3 => {
                for p in proxies.values() {
                    let bad = rng.below(3) == 0;
                    p.set_delay(if bad { rng.below(150) } else { 0 });
                    p.set_loss(if bad { rng.below(30) } else { 0 });
                }
                degraded += 1;
            }
            4 if down.is_none() => {
                let i = rng.below(NODES as u64) as usize;
                let mut p = nodes[i].proc.take().unwrap();
                // SIGINT before the node has set its handler up would kill it the hard way anyway.
                let young = nodes[i].started.elapsed() < Duration::from_secs(3);
                if young || rng.below(2) == 0 {
                    p.kill().unwrap();
                    p.wait().unwrap();
                } else {
                    interrupt(&mut p, "a node stopped during the churn");
                }
                down = Some((i, Instant::now() + Duration::from_millis(300 + rng.below(2500))));
                restarts += 1;
            }
            _ => {
                let out = rng.below(2) == 0;
                hq_proxy.block(out);
                outages += usize::from(out);
            }
        }
    }
    // Heal: every node up, every link clean, HQ reachable.
    if let Some((i, _)) = down.take() {
        nodes[i].write_config(&proxies, i, &hq);
        nodes[i].start(load_until);
    }
    all_links(&proxies, |p| {
        p.set_delay(0);
        p.set_loss(0);
        p.block(false);
    });
    hq_proxy.block(false);
    let healed = Instant::now();

    for n in nodes.iter_mut() {
        let t = Instant::now();
        let s: serde_json::Value = loop {
            let out = lpmesh()
                .args(["status", "--data", &n.data.to_string_lossy(), "--json"])
                .output()
                .unwrap();
            if out.status.success() {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    if v["node"].is_string() {
                        break v;
                    }
                }
            }
            n.assert_running();
            assert!(
                t.elapsed() < Duration::from_secs(45),
                "no status from {}:\n{}",
                n.data.display(),
                log_tail(&n.log, 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        n.id = s["node"].as_str().unwrap().to_string();
    }
    // Converged: every node holds every node's records up to what that node has appended.
    let converged = loop {
        let scraped: Vec<Option<Vec<(String, f64)>>> = nodes.iter().map(|n| scrape(n.ops.port())).collect();
        if scraped.iter().all(Option::is_some) && now_ms() > load_until + 500 {
            let m: Vec<&Vec<(String, f64)>> = scraped.iter().flatten().collect();
            let own: Vec<f64> = m
                .iter()
                .map(|m| metric(m, "lpmesh_log_own_seq").unwrap_or(0.0))
                .collect();
            let all = m.iter().all(|mi| {
                nodes
                    .iter()
                    .zip(&own)
                    .all(|(n, s)| metric(mi, &format!("lpmesh_log_origin_seq{{origin=\"{}\"}}", n.id)) == Some(*s))
            });
            if all {
                break healed.elapsed();
            }
        }
        assert!(
            healed.elapsed() < Duration::from_secs(60),
            "no convergence within 60 s of the heal (seed {seed})"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // HQ catches up: the leader's outbox drains.
    let t = Instant::now();
    loop {
        let leader_done = nodes.iter().any(|n| {
            let out = lpmesh()
                .args(["status", "--data", &n.data.to_string_lossy(), "--json"])
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["am_leader"] == true && v["outbox"] == 0 && v["hq_reachable"] == true)
        });
        if leader_done {
            break;
        }
        // A liveness bound, not a speed target: beside the crash tests on 2 cores, one run (seed
        // 1796609541659, whole test 70 s when run alone) needed more than 60 s here.
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "HQ did not catch up (seed {seed})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Everyone stops at once, as a store does at night.
    for n in nodes.iter() {
        if let Some(p) = &n.proc {
            let _ = Command::new("kill").args(["-INT", &p.id().to_string()]).status();
        }
    }
    for n in nodes.iter_mut() {
        interrupt(n.proc.as_mut().unwrap(), "a node at the end");
    }
    interrupt(&mut hq_proc, "HQ");

    let mut logs: Vec<Vec<serde_json::Value>> = Vec::new();
    for n in &nodes {
        let out = ok(&["events", "--data", &n.data.to_string_lossy(), "--json"]);
        logs.push(
            out.lines()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        );
    }
    let ids: Vec<BTreeSet<String>> = logs
        .iter()
        .map(|l| l.iter().map(|e| e["incident"].as_str().unwrap().to_string()).collect())
        .collect();
    for (i, (l, s)) in logs.iter().zip(&ids).enumerate() {
        assert_eq!(l.len(), s.len(), "node {i} holds an event twice");
        assert_eq!(s, &ids[0], "node {i}'s log differs from node 0's");
    }
    // HQ's summaries equal the union log's counts, period by period.
    let mut expected: BTreeMap<i64, u64> = BTreeMap::new();
    for e in &logs[0] {
        let start = e["started_at_ms"].as_i64().unwrap();
        *expected.entry(start.div_euclid(3_600_000) * 3_600_000).or_insert(0) += 1;
    }
    let store = Embedded::open(&dir.join("hq")).unwrap();
    let stored = store
        .summaries(&Filter {
            store: Some(STORE.into()),
            ..Filter::default()
        })
        .unwrap();
    let at_hq: BTreeMap<i64, u64> = stored
        .iter()
        .map(|s| {
            (
                s.summary.period_start_ms,
                s.summary
                    .incidents_by_kind
                    .get("shelf_interaction")
                    .copied()
                    .unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(at_hq, expected, "HQ's summaries differ from the union log");
    let (bytes, cuts) = proxies.values().fold((0, 0), |(b, c), p| {
        let (pb, pc) = p.stats();
        (b + pb, c + pc)
    });
    println!(
        "churn: {:.1} min of chaos, {partitions} partitions, {degraded} delay/loss rounds, {restarts} node restarts, \
         {outages} HQ outages, {cuts} connections cut by loss, {:.1} MB through the links; {} events, logs identical, \
         converged {converged:?} after the last heal; HQ matches the union log in {} period(s)",
        chaos.as_secs_f64() / 60.0,
        bytes as f64 / 1e6,
        ids[0].len(),
        expected.len()
    );
}
