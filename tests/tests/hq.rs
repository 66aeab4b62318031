//! The HQ path as an installer sets it up, with the real binaries: `lpmesh hq init`, `lpmesh store-key`,
//! `lpmesh hq register-store` while HQ runs, two `lpmesh run` nodes with an `[hq]` section, `lpmesh
//! status` while they run, and at the end HQ's summaries agree with the events the store holds.

use std::path::Path;
use std::time::{Duration, Instant};

use lpmesh_hq::store::{Embedded, Filter, HqStore};
use lpmesh_tests::{free_port, hq_recipient, http_get, interrupt, lpmesh, ok, prometheus, spawn, TempDir};

fn sample(m: &[(String, f64)], series: &str) -> f64 {
    m.iter().find(|(s, _)| s == series).map(|(_, v)| *v).unwrap_or(-1.0)
}

fn status(data: &Path) -> serde_json::Value {
    let out = lpmesh()
        .args(["status", "--data", &data.to_string_lossy(), "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_store_reports_to_hq_through_its_elected_leader() {
    let dir = TempDir::new("hq-e2e");
    let hq_dir = dir.join("hq");
    let hq_port = free_port();
    let hq_toml = dir.join("hq.toml");
    std::fs::write(
        &hq_toml,
        format!(
            "listen = \"127.0.0.1:{hq_port}\"\ndashboard_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            hq_dir.display()
        ),
    )
    .unwrap();
    let hq_cfg = hq_toml.to_string_lossy().to_string();
    let init = ok(&["hq", "init", "--config", &hq_cfg]);
    let recipient = hq_recipient(&init);
    assert!(recipient.starts_with("age1"), "{init}");
    assert!(init.contains("fingerprint     SHA-256 "), "{init}");
    let mut hq = spawn(&["hq", "--config", &hq_cfg], &dir.join("hq.log"));

    let (n1, n2) = (dir.join("n1"), dir.join("n2"));
    ok(&["init", "--store", "shop-e2e", "--data", &n1.to_string_lossy()]);
    lpmesh_tests::enrol(&n1, &n2);
    let key = ok(&["store-key", "--data", &n2.to_string_lossy()]);
    assert!(key.starts_with("ed25519:"), "{key}");
    // Registered while HQ is already running.
    ok(&[
        "hq",
        "register-store",
        "--config",
        &hq_cfg,
        "--store",
        "shop-e2e",
        "--key",
        key.trim(),
    ]);
    let bad = lpmesh()
        .args([
            "hq",
            "register-store",
            "--config",
            &hq_cfg,
            "--store",
            "x",
            "--key",
            "ed25519:AAAA",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let (p1, p2) = (free_port(), free_port());
    let ops_port = free_port();
    let hq_section = format!(
        "[hq]\nurl = \"https://localhost:{hq_port}\"\nrecipient = \"{recipient}\"\nca_cert = \"{}\"\nprobe_secs = 0.5\nresend_secs = 1.0\n",
        hq_dir.join("cert.pem").display()
    );
    let mesh = |port: u16, boot: &str| {
        format!("[ui]\nlisten = \"127.0.0.1:{}\"\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n{boot}mdns = false\nheartbeat_secs = 0.5\nleader_timeout_secs = 2.0\n", free_port())
    };
    let c1 = dir.join("n1.toml");
    std::fs::write(
        &c1,
        format!(
            "store = \"shop-e2e\"\nnode = \"front\"\ndata_dir = \"{}\"\n[ops]\nlisten = \"127.0.0.1:{ops_port}\"\n{}{hq_section}[[camera]]\nname = \"plaza\"\nsource = \"cache:data/vtest.avi\"\n[[camera.line]]\nname = \"walkway\"\nfrom = [0.45, 0.28]\nto = [0.45, 0.66]\nin = \"left\"\n",
            n1.display(),
            mesh(p1, "")
        ),
    )
    .unwrap();
    let c2 = dir.join("n2.toml");
    std::fs::write(
        &c2,
        format!(
            "store = \"shop-e2e\"\nnode = \"back\"\ndata_dir = \"{}\"\n[ops]\nenabled = false\n{}{hq_section}",
            n2.display(),
            mesh(p2, &format!("bootstrap = [\"/ip4/127.0.0.1/tcp/{p1}\"]\n"))
        ),
    )
    .unwrap();
    for c in [&c1, &c2] {
        ok(&["validate", &c.to_string_lossy()]);
    }
    let mut a = spawn(&["run", "--config", &c1.to_string_lossy()], &dir.join("n1.log"));
    std::thread::sleep(Duration::from_millis(300));
    let mut b = spawn(&["run", "--config", &c2.to_string_lossy()], &dir.join("n2.log"));

    // While they run: both name the same leader, and the leader has synced with HQ.
    let t = Instant::now();
    let synced = loop {
        let (s1, s2) = (status(&n1), status(&n2));
        let leader = s1["leader"].as_str().map(str::to_string);
        let agreed = leader.is_some() && s2["leader"].as_str().map(str::to_string) == leader;
        let leading = if s1["am_leader"] == true { &s1 } else { &s2 };
        if agreed && leading["last_sync_ms"].is_i64() && leading["hq_reachable"] == true {
            break leading.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "no sync within 40 s: {s1} / {s2}\n{}",
            std::fs::read_to_string(dir.join("n1.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(synced["summaries_sent"].as_u64().unwrap() >= 1);
    let human = ok(&["status", "--data", &n2.to_string_lossy()]);
    assert!(
        human.contains("uplink leader") && human.contains("reachable"),
        "{human}"
    );
    // The node's metrics parse as Prometheus text, and its counters move while it runs.
    let t = Instant::now();
    while http_get(ops_port, "/ready").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "node never ready: {}",
            http_get(ops_port, "/ready").1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(ops_port, "/health"), (200, "ok\n".to_string()));
    let first = prometheus(&http_get(ops_port, "/metrics").1);
    // Long enough for people to cross the walkway.
    std::thread::sleep(Duration::from_secs(10));
    let second = prometheus(&http_get(ops_port, "/metrics").1);
    let frames = "lpmesh_camera_frames_detected_total{camera=\"plaza\"}";
    assert!(
        sample(&second, frames) > sample(&first, frames) && sample(&first, frames) >= 0.0,
        "{second:?}"
    );
    assert!(sample(&second, "lpmesh_inference_seconds_count{camera=\"plaza\"}") > 0.0);
    assert_eq!(sample(&second, "lpmesh_mesh_peers"), 1.0);
    assert!(sample(&second, "lpmesh_log_records") > sample(&first, "lpmesh_log_records"));
    assert!(second.iter().any(|(s, _)| s.starts_with("lpmesh_events_total{")));
    assert!(sample(&second, "lpmesh_data_dir_bytes") > 0.0 && sample(&second, "lpmesh_disk_free_bytes") > 0.0);
    // Whether this machine's disk is nearly full is not the test's business; that it is said is.
    assert!([0.0, 1.0].contains(&sample(&second, "lpmesh_disk_nearly_full")));
    interrupt(&mut a, "node front");
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&mut b, "node back");
    interrupt(&mut hq, "HQ");

    // HQ's figures are the store's: every crossing counted once, every incident once.
    let events: Vec<serde_json::Value> = ok(&["events", "--data", &n2.to_string_lossy(), "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let crossings = events.iter().filter(|e| e["kind"] == "line_crossing").count() as u64;
    assert!(crossings > 0, "the camera counted people");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let at_hq = rt.block_on(async {
        let store = HqStore::Embedded(Embedded::open(&hq_dir).unwrap());
        store.summaries(&Filter::default()).await.unwrap()
    });
    assert!(!at_hq.is_empty());
    let footfall: u64 = at_hq
        .iter()
        .map(|s| {
            let (i, o) = s.summary.footfall_totals();
            i + o
        })
        .sum();
    assert_eq!(footfall, crossings, "HQ's footfall is the log's");
    let mut incidents: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] != "line_crossing")
        .filter_map(|e| e["incident"].as_str())
        .collect();
    incidents.sort();
    incidents.dedup();
    let at_hq_incidents: u64 = at_hq.iter().map(|s| s.summary.incidents_total()).sum();
    assert_eq!(at_hq_incidents, incidents.len() as u64);
    // The leader flushed its outbox on the way down.
    let leader_dir = if status(&n1)["am_leader"] == true { &n1 } else { &n2 };
    let final_status = status(leader_dir);
    assert_eq!(final_status["outbox"], 0, "nothing left waiting: {final_status}");
}
