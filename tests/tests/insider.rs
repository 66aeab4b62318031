//! A member of the store turned hostile, with the real binaries: it holds its node key and the store's
//! secrets, so it can sign any record it likes into its own log. Its forgeries (an outage from 1970 to
//! the end of time, one from 1970 until now, an event from tomorrow, a false alarm dated for ever) reach
//! the other node by the mesh; that node keeps running, leaves them out of its views and summaries,
//! counts them, and HQ goes on receiving the store's summaries. Admitted under its name, it cannot
//! speak for the other node's cameras either.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lpmesh_hq::store::{Embedded, Filter, HqStore};
use lpmesh_mesh::keys::{self, StoreSecrets};
use lpmesh_mesh::log::Log;
use lpmesh_mesh::record::RecordKind;
use lpmesh_node::action::{Action, ActionKind};
use lpmesh_node::event::{Detail, Event, EventKind, Phase};
use lpmesh_tests::{enrol, free_port, interrupt, lpmesh, metric, now_ms, ok, spawn, TempDir};

const STORE: &str = "shop-insider";

fn status(data: &Path) -> serde_json::Value {
    let out = lpmesh()
        .args(["status", "--data", &data.to_string_lossy(), "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn offline(incident: &str, started: i64, at: i64, ended: Option<i64>) -> Event {
    Event {
        incident: incident.into(),
        phase: if ended.is_some() { Phase::End } else { Phase::Start },
        store: STORE.into(),
        node: "back".into(),
        camera: "door".into(),
        zone: None,
        kind: EventKind::CameraOffline,
        severity: EventKind::CameraOffline.default_severity(),
        started_at_ms: started,
        at_ms: at,
        ended_at_ms: ended,
        track: None,
        bbox: None,
        confidence: 1.0,
        model: "forged".into(),
        evidence: None,
        detail: Detail::default(),
    }
}

#[test]
fn a_member_forging_records_is_contained_and_hq_still_hears_the_store() {
    let dir = TempDir::new("insider");
    let hq_dir = dir.join("hq");
    let hq_port = free_port();
    let hq_setup = lpmesh_tests::hq_setup(&dir.0, hq_port, "");
    let (hq_cfg, recipient) = (hq_setup.config.clone(), hq_setup.recipient.clone());
    let (n1, n2) = (dir.join("n1"), dir.join("n2"));
    ok(&["init", "--store", STORE, "--data", &n1.to_string_lossy()]);
    lpmesh_tests::enrol_with(&n1, &n2, &["--node", "back"]);
    hq_setup.register(STORE, &n1);
    let mut hq = spawn(&["hq", "--config", &hq_cfg], &dir.join("hq.log"));

    // The insider signs its forgeries into its own log, as its node would have written them.
    let now = now_ms();
    let forged: Vec<(RecordKind, Vec<u8>)> = vec![
        (
            RecordKind::Event,
            serde_json::to_vec(&offline("back/door/0-0", 0, now, Some(i64::MAX))).unwrap(),
        ),
        (
            RecordKind::Event,
            serde_json::to_vec(&offline("back/door/0-1", 0, now, Some(now))).unwrap(),
        ),
        (
            RecordKind::Event,
            serde_json::to_vec(&offline("back/door/1-0", now + 86_400_000, now + 86_400_000, None)).unwrap(),
        ),
        // Dated right, but for the other node's camera: admitted as "back", it speaks only as "back".
        (
            RecordKind::Event,
            serde_json::to_vec(&Event {
                node: "front".into(),
                camera: "synthetic".into(),
                ..offline("front/synthetic/9-9", now - 1000, now, None)
            })
            .unwrap(),
        ),
        (
            RecordKind::Event,
            serde_json::to_vec(&offline("front/door/9-9", now - 1000, now, None)).unwrap(),
        ),
        (
            RecordKind::Action,
            serde_json::to_vec(&Action {
                incident: "front/synthetic/1-1".into(),
                incident_started_at_ms: now,
                action: ActionKind::FalseAlarm,
                by: "nobody".into(),
                node: "back".into(),
                at_ms: i64::MAX,
                note: Some("pinned for ever".into()),
            })
            .unwrap(),
        ),
    ];
    {
        let secrets = StoreSecrets::load(&n2).unwrap();
        let mut log = Log::open(
            &n2.join("log"),
            STORE,
            keys::load_node_key(&n2).unwrap(),
            secrets.recipient().unwrap(),
        )
        .unwrap();
        let items: Vec<(RecordKind, &[u8])> = forged.iter().map(|(k, b)| (*k, b.as_slice())).collect();
        log.append_batch(&items, now as u64).unwrap();
    }

    let (p1, p2, ops) = (free_port(), free_port(), free_port());
    let hq_section = format!(
        "[hq]\nurl = \"https://localhost:{hq_port}\"\nrecipient = \"{recipient}\"\nca_cert = \"{}\"\nprobe_secs = 0.5\nresend_secs = 1.0\n",
        hq_dir.join("cert.pem").display()
    );
    let node = |name: &str, data: &Path, port: u16, extra: &str| {
        format!(
            "store = \"{STORE}\"\nnode = \"{name}\"\ndata_dir = \"{}\"\n{extra}[ui]\nlisten = \"127.0.0.1:{}\"\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nmdns = false\nheartbeat_secs = 0.5\nleader_timeout_secs = 2.0\n{hq_section}",
            data.display(),
            free_port()
        )
    };
    let (c1, c2) = (dir.join("n1.toml"), dir.join("n2.toml"));
    std::fs::write(
        &c1,
        node("front", &n1, p1, &format!("[ops]\nlisten = \"127.0.0.1:{ops}\"\n")),
    )
    .unwrap();
    std::fs::write(
        &c2,
        node("back", &n2, p2, "[ops]\nenabled = false\n").replace(
            "mdns = false\n",
            &format!("mdns = false\nbootstrap = [\"/ip4/127.0.0.1/tcp/{p1}\"]\n"),
        ),
    )
    .unwrap();
    let mut a = spawn(
        &["run", "--config", &c1.to_string_lossy(), "--synthetic", "5"],
        &dir.join("n1.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut b = spawn(&["run", "--config", &c2.to_string_lossy()], &dir.join("n2.log"));

    // The honest node receives the forgeries and refuses their contents: three dated outside what
    // their signed time allows, one from 1970.
    let t = Instant::now();
    let refused = |m: &[(String, f64)], why: &str| {
        metric(m, &format!("lpmesh_records_contents_refused_total{{reason=\"{why}\"}}")).unwrap_or(0.0)
    };
    loop {
        let m = lpmesh_tests::scrape(ops).unwrap_or_default();
        let (code, text) = (if m.is_empty() { 0 } else { 200 }, format!("{m:?}"));
        if code == 200
            && refused(&m, "future") >= 2.0
            && refused(&m, "past") >= 1.0
            && refused(&m, "foreign_node") >= 2.0
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the forgeries were not refused within 40 s: {code} {text}\n{}",
            std::fs::read_to_string(dir.join("n1.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let arrived = now_ms();

    // HQ still hears the store: a summary acknowledged after the forgeries arrived.
    let t = Instant::now();
    loop {
        let synced = [&n1, &n2]
            .iter()
            .map(|d| status(d))
            .any(|s| s["am_leader"] == true && s["last_sync_ms"].as_i64().is_some_and(|ms| ms > arrived));
        if synced {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "HQ heard nothing after the forgeries: {} / {}\n{}",
            status(&n1),
            status(&n2),
            std::fs::read_to_string(dir.join("n1.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for (child, name) in [(&mut a, "front"), (&mut b, "back")] {
        assert!(child.try_wait().unwrap().is_none(), "node {name} died");
    }
    interrupt(&mut a, "node front");
    interrupt(&mut b, "node back");
    interrupt(&mut hq, "HQ");

    // Nothing forged is in the honest node's view of the store or at HQ.
    let events = ok(&["events", "--data", &n1.to_string_lossy(), "--json"]);
    assert!(events.lines().count() > 0, "the honest node's own events are there");
    assert!(!events.contains("forged"), "{events}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let at_hq = rt.block_on(async {
        let store = HqStore::Embedded(Embedded::open(&hq_dir).unwrap());
        store.summaries(&Filter::default()).await.unwrap()
    });
    assert!(!at_hq.is_empty());
    for s in &at_hq {
        let p = s.summary.period_start_ms;
        assert!(
            p > now - 2 * 3_600_000 && p <= now_ms() + 3_600_000,
            "a period HQ should never have seen: {p}"
        );
        assert!(
            s.summary.acknowledgements.false_alarms == 0,
            "the pinned false alarm counted"
        );
    }
}

fn join_with(data: &Path, token: &str, file: Option<&Path>) -> std::process::Output {
    use std::io::Write;
    let mut args = vec!["join".to_string(), "--data".into(), data.to_string_lossy().to_string()];
    if let Some(f) = file {
        args.extend(["--token-file".into(), f.to_string_lossy().to_string()]);
    }
    let mut c = lpmesh()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if file.is_none() {
        c.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
    }
    c.wait_with_output().unwrap()
}

#[test]
fn an_invitation_holds_no_secret_works_once_and_expires() {
    let dir = TempDir::new("invite");
    let member = dir.join("member");
    ok(&["init", "--store", STORE, "--data", &member.to_string_lossy()]);
    // Without a running member there is nobody to answer: said plainly.
    let out = lpmesh()
        .args(["invite", "--data", &member.to_string_lossy()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("start it"), "{out:?}");

    let cfg = dir.join("member.toml");
    std::fs::write(
        &cfg,
        format!(
            "store = \"{STORE}\"\nnode = \"front\"\ndata_dir = \"{}\"\n[ui]\nenabled = false\n[ops]\nenabled = false\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{}\"]\nmdns = false\nenrol_listen = \"127.0.0.1:0\"\n",
            member.display(),
            free_port()
        ),
    )
    .unwrap();
    let mut node = spawn(&["run", "--config", &cfg.to_string_lossy()], &dir.join("member.log"));
    let t = Instant::now();
    while !member.join("enrol.addr").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the member never answered invitations"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = ok(&["invite", "--data", &member.to_string_lossy()]);
    let secrets = std::fs::read_to_string(member.join("store.secrets")).unwrap();
    let secrets: serde_json::Value = serde_json::from_str(&secrets).unwrap();
    for field in ["psk", "age_secret", "signing_key"] {
        let s = secrets[field].as_str().unwrap();
        assert!(!token.contains(s), "the token carries the store's {field}");
    }

    // From standard input: admitted, with the store's secrets and its own identity.
    let first = dir.join("first");
    let out = join_with(&first, &token, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("joined store {STORE}")));
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.join("store.secrets")).unwrap()).unwrap();
    assert_eq!(got["psk"], secrets["psk"]);

    // The same token again: refused, at the joiner (clear message) and nothing written.
    let second = dir.join("second");
    let out = join_with(&second, &token, None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("used already"), "{out:?}");
    assert!(!second.join("store.secrets").exists() && !second.join("node.key").exists());

    // An invitation that expired: refused too. From a token file this time.
    let short = ok(&["invite", "--data", &member.to_string_lossy(), "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let file = dir.join("token.txt");
    std::fs::write(&file, &short).unwrap();
    let out = join_with(&second, "", Some(&file));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"), "{out:?}");

    // A fresh one from a file works; the member logged each refusal.
    let fresh = ok(&["invite", "--data", &member.to_string_lossy()]);
    std::fs::write(&file, &fresh).unwrap();
    let out = join_with(&second, "", Some(&file));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    interrupt(&mut node, "member");
    let log = std::fs::read_to_string(dir.join("member.log")).unwrap();
    assert!(
        log.contains("an enrolment was refused") && log.contains("\"used\"") && log.contains("\"expired\""),
        "{log}"
    );
    assert!(log.matches("a new node was admitted").count() == 2, "{log}");
    // The old kind of token (it carried every secret) is refused outright.
    let out = join_with(&dir.join("old"), "lpmesh-join-1.eyJzZWNyZXRzIjp7fX0", None);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no longer accepted"),
        "{out:?}"
    );
}

#[test]
fn only_admitted_nodes_connect_even_with_the_stores_secrets() {
    let dir = TempDir::new("members");
    let (n1, n2, thief) = (dir.join("n1"), dir.join("n2"), dir.join("thief"));
    ok(&["init", "--store", STORE, "--data", &n1.to_string_lossy()]);
    lpmesh_tests::enrol_with(&n1, &n2, &["--priority", "7"]);
    // Someone who copied a member's store secrets (a stolen disk, or the old kind of token) and made
    // a node key of its own: it holds the network key, but nobody admitted it.
    std::fs::create_dir_all(&thief).unwrap();
    std::fs::copy(n1.join("store.secrets"), thief.join("store.secrets")).unwrap();
    keys::create_node_key(&thief).unwrap();

    let (p1, p2, p3, ops) = (free_port(), free_port(), free_port(), free_port());
    let node = |name: &str, data: &Path, port: u16, extra: &str| {
        format!(
            "store = \"{STORE}\"\nnode = \"{name}\"\ndata_dir = \"{}\"\n{extra}[ui]\nenabled = false\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nmdns = false\nenrol_listen = \"127.0.0.1:0\"\n{}",
            data.display(),
            if port == p1 { String::new() } else { format!("bootstrap = [\"/ip4/127.0.0.1/tcp/{p1}\"]\n") }
        )
    };
    let cfgs = [
        ("front", &n1, p1, format!("[ops]\nlisten = \"127.0.0.1:{ops}\"\n")),
        ("back", &n2, p2, "[ops]\nenabled = false\n".to_string()),
        ("thief", &thief, p3, "[ops]\nenabled = false\n".to_string()),
    ];
    let mut procs = Vec::new();
    for (name, data, port, extra) in &cfgs {
        let c = dir.join(format!("{name}.toml"));
        std::fs::write(&c, node(name, data, *port, extra)).unwrap();
        procs.push(spawn(
            &["run", "--config", &c.to_string_lossy(), "--synthetic", "5"],
            &dir.join(format!("{name}.log")),
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    // The member node keeps the admitted one and refuses the other, again and again.
    let t = Instant::now();
    loop {
        let m = lpmesh_tests::scrape(ops).unwrap_or_default();
        let code = if m.is_empty() { 0 } else { 200 };
        let refused = metric(&m, "lpmesh_records_rejected_total{reason=\"not_member_connection\"}").unwrap_or(0.0);
        let peers = metric(&m, "lpmesh_mesh_peers").unwrap_or(-1.0);
        if code == 200 && refused >= 2.0 && peers == 1.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "peers {peers}, refused {refused}\n{}",
            std::fs::read_to_string(dir.join("front.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));
    for (p, name) in procs.iter_mut().zip(["front", "back", "thief"]) {
        interrupt(p, name);
    }
    // The member's log holds the admitted node's events, none of the stranger's.
    let events = ok(&["events", "--data", &n1.to_string_lossy(), "--json"]);
    assert!(
        events.contains("\"node\":\"back\""),
        "the admitted node's events arrived"
    );
    assert!(
        !events.contains("\"node\":\"thief\""),
        "a stranger's events were stored"
    );
    let members: serde_json::Value =
        serde_json::from_str(&ok(&["members", "--data", &n2.to_string_lossy(), "--json"])).unwrap();
    let list = members.as_array().unwrap();
    assert_eq!(list.len(), 2, "{members}");
    assert!(list.iter().any(|m| m["founder"] == true));
    let admitted = list.iter().find(|m| m["founder"] == false).unwrap();
    assert!(
        admitted["admitted_by"].is_string() && admitted["invitation"].is_string(),
        "{admitted}"
    );
    // Its election rank is the one its invitation gave, whatever its own configuration says.
    assert_eq!(admitted["priority"], 7, "{admitted}");
    let human = ok(&["members", "--data", &n1.to_string_lossy()]);
    assert!(
        human.contains("founder") && human.contains("admitted by") && human.contains("priority 7"),
        "{human}"
    );
}

#[test]
fn a_revoked_node_is_dropped_by_every_member_and_its_later_records_are_refused() {
    let dir = TempDir::new("revoke");
    let (n1, n2, n3) = (dir.join("n1"), dir.join("n2"), dir.join("n3"));
    ok(&["init", "--store", STORE, "--data", &n1.to_string_lossy()]);
    enrol(&n1, &n2);
    let joined = enrol(&n1, &n3);
    let n3_peer = joined.split("this node is ").nth(1).unwrap().trim().to_string();
    let (p1, p2, p3, ops) = (free_port(), free_port(), free_port(), free_port());
    let config = |name: &str, data: &Path, port: u16, extra: &str| {
        let c = dir.join(format!("{name}.toml"));
        std::fs::write(
            &c,
            format!(
                "store = \"{STORE}\"\nnode = \"{name}\"\ndata_dir = \"{}\"\n{extra}[ui]\nenabled = false\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\nmdns = false\nenrol_listen = \"127.0.0.1:0\"\nbootstrap = [{}]\n",
                data.display(),
                [p1, p2, p3]
                    .iter()
                    .filter(|p| **p != port)
                    .map(|p| format!("\"/ip4/127.0.0.1/tcp/{p}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .unwrap();
        c
    };
    let c1 = config("front", &n1, p1, &format!("[ops]\nlisten = \"127.0.0.1:{ops}\"\n"));
    let c2 = config("back", &n2, p2, "[ops]\nenabled = false\n");
    // The member that stays serves its tablet UI: after the revocation, its certificate must come
    // from a CA the revoked node never held.
    let u2 = free_port();
    let text = std::fs::read_to_string(&c2).unwrap();
    std::fs::write(
        &c2,
        text.replace(
            "[ui]\nenabled = false\n",
            &format!("[ui]\nlisten = \"127.0.0.1:{u2}\"\n"),
        ),
    )
    .unwrap();
    let fingerprint = || ok(&["store-ca", "--data", &n2.to_string_lossy()]);
    let first_ca = fingerprint();
    let c3 = config("side", &n3, p3, "[ops]\nenabled = false\n");
    let run = |c: &Path, name: &str| {
        spawn(
            &["run", "--config", &c.to_string_lossy(), "--synthetic", "5"],
            &dir.join(format!("{name}.log")),
        )
    };
    let peers = |want: f64, refused_at_least: f64| {
        let t = Instant::now();
        loop {
            let m = lpmesh_tests::scrape(ops).unwrap_or_default();
            let (code, text) = (if m.is_empty() { 0 } else { 200 }, format!("{m:?}"));
            let refused = metric(&m, "lpmesh_records_rejected_total{reason=\"not_member_connection\"}").unwrap_or(0.0);
            if code == 200 && metric(&m, "lpmesh_mesh_peers") == Some(want) && refused >= refused_at_least {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(40), "want {want} peers: {text}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let mut a = run(&c1, "front");
    let mut b = run(&c2, "back");
    let mut c = run(&c3, "side");
    peers(2.0, 0.0);
    interrupt(&mut a, "front");
    let out = ok(&["revoke", &n3_peer, "--data", &n1.to_string_lossy()]);
    assert!(out.contains(&n3_peer), "{out}");
    let bad = lpmesh()
        .args(["revoke", "12D3KooWNotAMember", "--data", &n1.to_string_lossy()])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not a member"));
    let revoked_at = now_ms();
    let mut a = run(&c1, "front");
    // The revoked node is dropped, and refused each time it comes back.
    peers(1.0, 1.0);
    let settled = now_ms();
    std::thread::sleep(Duration::from_secs(10));
    // The staying member's UI serves a certificate from the new epoch's CA, swapped while it runs.
    let t = Instant::now();
    while fingerprint() == first_ca {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the UI still serves the store's first CA after the revocation"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        std::fs::read_to_string(dir.join("back.log"))
            .unwrap_or_default()
            .contains("tablet certificate changed"),
        "the node told its operator the tablets must install the new CA"
    );
    // Handshakes now fail at the network key (the revoked node's dials, and the member's first try of
    // the new key towards it): the store moved to a new one.
    let m = lpmesh_tests::scrape(ops).unwrap_or_default();
    assert!(
        metric(&m, "lpmesh_handshake_failures_total").unwrap_or(0.0) > 0.0,
        "no handshake failed at the network key: the store did not move to a new one"
    );
    interrupt(&mut a, "front");
    interrupt(&mut b, "back");
    interrupt(&mut c, "side");
    // The other member heard of it too: its member list and its log.
    let members: serde_json::Value =
        serde_json::from_str(&ok(&["members", "--data", &n2.to_string_lossy(), "--json"])).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 2, "{members}");
    assert!(!members.to_string().contains(&n3_peer));
    let events = ok(&["events", "--data", &n2.to_string_lossy(), "--json"]);
    let late = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["node"] == "side" && e["at_ms"].as_i64().unwrap_or(0) > revoked_at + 8_000)
        .count();
    assert_eq!(
        late, 0,
        "records the revoked node wrote after its revocation were stored"
    );
    // The store wrote under a new key epoch after the revocation: every record the members wrote
    // since (as a capture of the mesh would hold them, taken from the other member's log) resists
    // every key the revoked node held, and the members read them all.
    let n3_secrets = StoreSecrets::load(&n3).unwrap();
    let n3_ring = n3_secrets.keyring().unwrap();
    let n3_key = keys::load_node_key(&n3).unwrap();
    let n2_secrets = StoreSecrets::load(&n2).unwrap();
    let n2_key = keys::load_node_key(&n2).unwrap();
    let log = Log::open(&n2.join("log"), STORE, n2_key.clone(), n2_secrets.recipient().unwrap()).unwrap();
    let records: Vec<_> = log.all().map(|r| r.unwrap()).collect();
    drop(log);
    let n3_origin = lpmesh_mesh::record::Origin::of(&n3_key).unwrap();
    let after: Vec<_> = records
        .iter()
        .filter(|r| {
            r.kind == RecordKind::Event
                && r.origin != n3_origin
                && i64::try_from(r.hlc.wall_ms).unwrap() > settled + 4_000
        })
        .collect();
    assert!(
        after.len() >= 10,
        "members wrote {} events after the revocation",
        after.len()
    );
    for r in &after {
        assert!(
            n3_ring.decrypt(&r.ciphertext).is_err(),
            "a record written after the revocation opens with a key the revoked node held"
        );
    }
    // Nor does its node key open the new epoch's keys: the grant is sealed to the others only.
    let reader = lpmesh_node::bounds::Reader::from(n3_secrets.keyring().unwrap());
    let mut grants = lpmesh_node::epochs::Epochs::default();
    let mut n_grants = 0;
    for r in &records {
        if let Some(g) = reader.grant(r) {
            assert!(!g.sealed.contains_key(&lpmesh_node::members::hex(&n3_origin)));
            n_grants += 1;
            grants.add((r.origin, r.seq), g);
        }
    }
    assert!(n_grants >= 1, "no key epoch was begun after the revocation");
    assert!(
        !grants.open_mine(&n3_key, reader.ring()),
        "the revoked node opened a key epoch"
    );
    assert_eq!(reader.ring().newest(), 0);
    let member_events = ok(&["events", "--data", &n2.to_string_lossy(), "--json"]);
    let read_after = member_events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["node"] != "side" && e["at_ms"].as_i64().unwrap_or(0) > settled + 4_000)
        .count();
    assert!(
        read_after >= 10,
        "the members read {read_after} events written after the revocation"
    );
    // A node that joins now receives the epoch keys with the store's secrets: it reads the history
    // written under them.
    let n4 = dir.join("n4");
    enrol(&n1, &n4);
    let n4_secrets = StoreSecrets::load(&n4).unwrap();
    let n4_ring = n4_secrets.keyring().unwrap();
    assert!(n4_ring.newest() >= 1);
    // The epoch brought a tablet CA the revoked node never held: the nodes' certificates come
    // from it from now on, and a joiner receives it with the keys.
    let epoch_ca = n4_ring
        .epochs()
        .last()
        .and_then(|e| e.ui_ca.clone())
        .expect("the epoch's tablet CA");
    let first_ca = n3_secrets.ui_ca.clone().expect("the store's first tablet CA");
    assert_ne!(epoch_ca.cert_pem, first_ca.cert_pem);
    assert!(!std::fs::read_to_string(n3.join("store.secrets"))
        .unwrap_or_default()
        .contains(epoch_ca.key_pem.trim()));
    for r in &after {
        assert!(
            n4_ring.decrypt(&r.ciphertext).is_ok(),
            "a new member cannot read the current epoch"
        );
    }
}
