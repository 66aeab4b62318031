//! Process crashes, 50 times each (not power cuts: the page cache survives them): a real `lpmesh run`
//! node appending records is killed with SIGKILL at random moments and restarted, beside a peer that never stops and an HQ on PostgreSQL; then HQ itself is
//! killed 50 times while summaries are uploaded, and its PostgreSQL crashed (`-m immediate`) every tenth
//! time. The seed is printed; `LPMESH_CRASH_SEED=N` replays a run, `LPMESH_CRASH_CYCLES=N` changes the count.

use std::io::Write;
use std::path::Path;
use std::process::Child;

use std::time::{Duration, Instant};

use lpmesh_hq::client::HqClient;
use lpmesh_hq::envelope::{parse_recipient, seal, store_key_to_string};
use lpmesh_hq::store::{Filter, HqStore};
use lpmesh_hq::summary::Summary;
use lpmesh_hq::testpg::TestPg;
use lpmesh_hq::vv::VersionVector;
use lpmesh_tests::{
    free_port, interrupt, log_tail, metric, ok, scrape, spawn_appending as spawn, HeldPort, Rng, TempDir,
};

fn rng_from_env() -> Rng {
    let seed = std::env::var("LPMESH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("LPMESH_CRASH_SEED={seed}");
    Rng(seed | 1)
}

fn cycles() -> usize {
    std::env::var("LPMESH_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What the log gained since it was `from` bytes long: one start's output, not the starts before it.
fn log_since(path: &Path, from: u64) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(s.get(from as usize..).unwrap_or_default()).into_owned()
}

/// A start's warnings and errors, then its last lines (a node at 40 events/s fills any tail with them).
fn start_report(log: &str) -> String {
    let notable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("error"))
        .collect();
    let last: Vec<&str> = log
        .lines()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "warnings and errors:\n{}\nlast lines:\n{}",
        notable.join("\n"),
        last.join("\n")
    )
}

/// A port found free a moment ago can be taken by another test's connection before the node binds
/// it: the mesh port's loss stops the node; the metrics port's loss leaves it running without them.
fn lost_a_port(log: &str) -> bool {
    log.lines().any(|l| {
        l.contains("error: network: listen on")
            || l.contains("in use")
            || l.contains("metrics and health endpoints are not available")
    })
}

type Hq = lpmesh_tests::HqSetup;

fn hq_setup(dir: &TempDir, pg: &TestPg) -> Hq {
    let extra = format!("dashboard_listen = \"127.0.0.1:0\"\ndatabase_url = \"{}\"\n", pg.url());
    lpmesh_tests::hq_setup(&dir.0, free_port(), &extra)
}

fn wait_healthy(hq: &Hq, log: &Path) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", hq.port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "HQ did not come back:\n{}",
            log_tail(log, 30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ports`: the ops listener and the mesh listener.
fn node_config(path: &Path, data: &Path, name: &str, ports: (u16, u16), boot: Option<u16>, priority: u8, hq: &Hq) {
    let (ops, mesh) = ports;
    // A port of its own for invitations: two nodes on one machine cannot both have 7421, and the
    // fallback (any free port) could take the one drawn for the next start's operations endpoint.
    let enrol = free_port();
    let boot = boot
        .map(|p| format!("bootstrap = [\"/ip4/127.0.0.1/tcp/{p}\"]\n"))
        .unwrap_or_default();
    std::fs::write(
        path,
        format!(
            "store = \"shop-crash\"\nnode = \"{name}\"\ndata_dir = \"{}\"\n[ui]\nenabled = false\n[ops]\nlisten = \"127.0.0.1:{ops}\"\n\
             [mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{mesh}\"]\nenrol_listen = \"127.0.0.1:{enrol}\"\n{boot}mdns = false\nheartbeat_secs = 0.5\nleader_timeout_secs = 2.0\npriority = {priority}\n\
             [hq]\nurl = \"https://localhost:{}\"\nrecipient = \"{}\"\nca_cert = \"{}\"\nprobe_secs = 0.5\nresend_secs = 0.5\ntimeout_secs = 2.0\n",
            data.display(),
            hq.port,
            hq.recipient,
            hq.cert.display()
        ),
    )
    .unwrap();
}

fn own_seq(m: &[(String, f64)]) -> u64 {
    metric(m, "lpmesh_log_own_seq").unwrap_or(0.0) as u64
}

#[test]
fn a_node_killed_50_times_loses_no_durable_record_and_never_reuses_a_seq() {
    let mut rng = rng_from_env();
    let dir = TempDir::new("crash-node");
    let pg = TestPg::start_with(true).expect("PostgreSQL (scripts/setup.sh installs it)");
    let hq = hq_setup(&dir, &pg);
    let hq_log = dir.join("hq.log");
    let mut hq_proc = spawn(&["hq", "--config", &hq.config], &hq_log);

    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&["init", "--store", "shop-crash", "--data", &a.to_string_lossy()]);
    lpmesh_tests::enrol(&a, &b);
    hq.register("shop-crash", &a);
    wait_healthy(&hq, &hq_log);

    let (b_ops, b_mesh) = (free_port(), free_port());
    let b_cfg = dir.join("b.toml");
    node_config(&b_cfg, &b, "back", (b_ops, b_mesh), None, 0, &hq);
    let b_log = dir.join("b.log");
    let mut peer = spawn(&["run", "--config", &b_cfg.to_string_lossy()], &b_log);

    let a_cfg = dir.join("a.toml");
    let a_log = dir.join("a.log");
    let mut durable = 0u64;
    let mut restarts = Vec::new();
    let n = cycles();
    let mut port_taken = 0;
    let mut cycle = 0;
    while cycle <= n {
        // Fresh ports every time: a killed process's ports may linger.
        let (mut ops_port, mut mesh_port) = (HeldPort::new(), HeldPort::new());
        let a_ops = ops_port.port();
        node_config(&a_cfg, &a, "front", (a_ops, mesh_port.port()), Some(b_mesh), 10, &hq);
        ops_port.release();
        mesh_port.release();
        let started = Instant::now();
        let log_from = std::fs::metadata(&a_log).map(|m| m.len()).unwrap_or(0);
        let mut node = spawn(
            &["run", "--config", &a_cfg.to_string_lossy(), "--synthetic", "40"],
            &a_log,
        );
        let first = loop {
            if let Some(m) = scrape(a_ops) {
                break Some(m);
            }
            let exited = node.try_wait().ok().flatten();
            let log = log_since(&a_log, log_from);
            // A start that lost a port is tried again on fresh ports, a few times at most.
            if lost_a_port(&log) && port_taken < 3 {
                port_taken += 1;
                if exited.is_none() {
                    kill9(&mut node);
                }
                break None;
            }
            if let Some(status) = exited {
                panic!(
                    "cycle {cycle}: the node exited with {status} on start:\n{}",
                    start_report(&log)
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "cycle {cycle}: the node did not answer on its metrics port within 30 s:\n{}",
                start_report(&log)
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let Some(first) = first else {
            continue;
        };
        restarts.push(started.elapsed());
        let reopened = own_seq(&first);
        assert!(
            reopened >= durable,
            "cycle {cycle}: seq {reopened} after the restart, but {durable} was reported durable"
        );
        if cycle == n {
            // The last start is left running: the store converges and HQ catches up.
            let t = Instant::now();
            loop {
                let (ma, mb) = (scrape(a_ops).unwrap(), scrape(b_ops).unwrap());
                let converged =
                    metric(&ma, "lpmesh_log_records") == metric(&mb, "lpmesh_log_records") && own_seq(&ma) > durable;
                if converged {
                    durable = own_seq(&ma);
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "the peer did not converge");
                std::thread::sleep(Duration::from_millis(100));
            }
            interrupt(&mut node, "the node after the crashes");
            break;
        }
        let run_for = Duration::from_millis(200 + rng.below(1300));
        let t = Instant::now();
        while t.elapsed() < run_for {
            if let Some(m) = scrape(a_ops) {
                durable = durable.max(own_seq(&m));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        kill9(&mut node);
        cycle += 1;
    }

    // The peer never saw two different records under one seq (it refuses that as an equivocation).
    let mb = scrape(b_ops).unwrap();
    assert_eq!(
        metric(&mb, "lpmesh_records_rejected_total{reason=\"equivocation\"}").unwrap_or(0.0),
        0.0,
        "a seq was issued twice"
    );
    // The outbox resumed after the last restart: HQ holds A's records up to the last durable seq.
    let node_id = {
        let s: serde_json::Value =
            serde_json::from_str(&ok(&["status", "--data", &a.to_string_lossy(), "--json"])).unwrap();
        s["node"].as_str().unwrap().to_string()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(HqStore::open(&dir.join("hq-check"), Some(&pg.url()), 1))
        .unwrap();
    let t = Instant::now();
    let at_hq = loop {
        let stored = rt
            .block_on(store.summaries(&Filter {
                store: Some("shop-crash".into()),
                ..Filter::default()
            }))
            .unwrap();
        let best = stored
            .iter()
            .filter_map(|s| s.summary.vv.0.get(&node_id))
            .max()
            .copied()
            .unwrap_or(0);
        if best >= durable {
            break best;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "HQ has seq {best} of the node, {durable} were durable:\n{}",
            log_tail(&b_log, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    interrupt(&mut peer, "the peer");
    interrupt(&mut hq_proc, "HQ");

    // Every durable record is in the node's database, once.
    let out = ok(&["events", "--data", &a.to_string_lossy(), "--json"]);
    let ids: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["incident"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an event was stored twice");
    // The node's own records are its events and its member records (the peer's admission; and, being
    // the founder, the record naming itself).
    let members: serde_json::Value =
        serde_json::from_str(&ok(&["members", "--data", &a.to_string_lossy(), "--json"])).unwrap();
    let own_member_records = members.as_array().map_or(0, |m| {
        m.iter()
            .filter(|m| m["admitted_by"].is_string() || (m["founder"] == true && m["name"].is_string()))
            .count()
    }) as u64;
    assert!(
        ids.len() as u64 + own_member_records >= durable,
        "{} events and {own_member_records} member records in the log, {durable} were durable",
        ids.len()
    );
    restarts.sort();
    println!(
        "{n} SIGKILLs survived: {durable} records durable, {} in the log, 0 lost, 0 seqs reused; HQ holds seq {at_hq}; \
         restart to metrics p50 {:?}, max {:?}",
        ids.len(),
        restarts[restarts.len() / 2],
        restarts[restarts.len() - 1]
    );
}

#[test]
fn hq_killed_50_times_and_its_database_crashed_keeps_every_acknowledged_summary() {
    let mut rng = rng_from_env();
    let dir = TempDir::new("crash-hq");
    let pg = TestPg::start_with(true).expect("PostgreSQL (scripts/setup.sh installs it)");
    let hq = hq_setup(&dir, &pg);
    let key = libp2p_identity::Keypair::generate_ed25519();
    let public = store_key_to_string(&key.public()).unwrap();
    ok(&[
        "hq",
        "register-store",
        "--config",
        &hq.config,
        "--store",
        "shop-hq",
        "--key",
        &public,
    ]);
    let recipient = parse_recipient(&hq.recipient).unwrap();
    // Version vectors name nodes by their peer id.
    let node = libp2p_identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let log = dir.join("hq.log");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = HqClient::new(
        &format!("https://localhost:{}", hq.port),
        Some(&hq.cert),
        Duration::from_secs(2),
    )
    .unwrap();
    // Per period, the highest version HQ acknowledged (200, or 409: it holds a newer one).
    let mut acked: std::collections::BTreeMap<i64, u64> = Default::default();
    let mut next: std::collections::BTreeMap<i64, u64> = Default::default();
    let (mut sent, mut refused_or_cut) = (0u64, 0u64);
    let n = cycles();
    let mut db_crashes = 0;
    for cycle in 0..n {
        let mut proc = spawn(&["hq", "--config", &hq.config], &log);
        wait_healthy(&hq, &log);
        let run_for = Duration::from_millis(100 + rng.below(900));
        // The kill comes from another thread, so it lands in the middle of uploads: the one in flight
        // then may or may not have been stored, but one acknowledged must be.
        let killer = std::thread::spawn(move || {
            std::thread::sleep(run_for);
            kill9(&mut proc);
        });
        while !killer.is_finished() {
            let period = 3_600_000 * (480_000 + rng.below(12) as i64);
            let v = next.entry(period).or_insert(0);
            *v += 1;
            let summary = Summary {
                store: "shop-hq".into(),
                period_start_ms: period,
                period_secs: 3600,
                vv: VersionVector([(node.clone(), *v)].into()),
                ..Summary::default()
            };
            let env = seal(&summary, &recipient, &key).unwrap().encode();
            sent += 1;
            match rt.block_on(client.post(env)) {
                Ok(ack) if ack.stored_vv.covers(&node, *v) => {
                    let a = acked.entry(period).or_insert(0);
                    *a = (*a).max(*v);
                }
                Ok(ack) => panic!("HQ did not store a newer version: {ack:?}"),
                Err(lpmesh_hq::client::ClientError::Refused { status, error, message }) => {
                    panic!("HQ refused a good summary: {status} {error}: {message}")
                }
                Err(_) => refused_or_cut += 1,
            }
        }
        killer.join().unwrap();
        if cycle % 10 == 9 {
            pg.crash().unwrap();
            pg.restart().unwrap();
            db_crashes += 1;
        }
    }
    let mut proc = spawn(&["hq", "--config", &hq.config], &log);
    wait_healthy(&hq, &log);
    let store = rt
        .block_on(HqStore::open(&dir.join("hq-check"), Some(&pg.url()), 1))
        .unwrap();
    let stored = rt
        .block_on(store.summaries(&Filter {
            store: Some("shop-hq".into()),
            ..Filter::default()
        }))
        .unwrap();
    let mut lost = 0;
    for (period, v) in &acked {
        let held = stored
            .iter()
            .find(|s| s.summary.period_start_ms == *period)
            .and_then(|s| s.summary.vv.0.get(&node).copied())
            .unwrap_or(0);
        if held < *v {
            lost += 1;
            eprintln!("period {period}: HQ acknowledged version {v}, holds {held}");
        }
    }
    interrupt(&mut proc, "HQ");
    let _ = std::io::stdout().flush();
    println!(
        "HQ: {n} SIGKILLs and {db_crashes} PostgreSQL crashes survived; {sent} uploads, {} periods acknowledged, \
         {refused_or_cut} cut by a kill, {lost} acknowledged summaries lost",
        acked.len()
    );
    assert_eq!(lost, 0);
    assert!(
        acked.len() >= 6,
        "too few uploads got through to prove anything: {acked:?}"
    );
}
