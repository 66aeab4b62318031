//! No pixels and no plaintext event leave a node: a camera node (the demo footage, real detection,
//! evidence kept for every incident) and a second node of its store talk only through a tapping
//! proxy, and both reach HQ only through another; every byte those links carry is kept and searched
//! for event fields, names from the configuration, and image signatures. Then what crossed is read
//! decrypted, as its receivers hold it: every record of the peer's log and every summary HQ stored
//! must fit its schema (only the listed metadata fields, bounded sizes, no binary). The evidence
//! files on the camera node are not readable as images. The run must have moved events, summaries
//! and evidence, or the proof would be empty.

use std::time::{Duration, Instant};

use lpmesh_tests::{free_port, http_get, interrupt, metric, ok, prometheus, spawn, FaultProxy, HeldPort, TempDir};

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn the_bytes_a_node_sends_to_peers_and_hq_carry_no_event_field_and_no_image() {
    let dir = TempDir::new("privacy");
    let hq_port = free_port();
    let hq_setup = lpmesh_tests::hq_setup(&dir.0, hq_port, "");
    let (hq_cfg, recipient) = (hq_setup.config.clone(), hq_setup.recipient.clone());
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&["init", "--store", "privacy-store", "--data", &a.to_string_lossy()]);
    lpmesh_tests::enrol(&a, &b);
    hq_setup.register("privacy-store", &a);
    let mut hq = spawn(&["hq", "--config", &hq_cfg], &dir.join("hq.log"));

    // Held while the proxies bind theirs, so no proxy lands on a node's port.
    let (mut a_hold, mut b_hold) = (HeldPort::new(), HeldPort::new());
    let (a_listen, b_listen) = (a_hold.port(), b_hold.port());
    let to_b = FaultProxy::start(([127, 0, 0, 1], b_listen).into());
    let to_a = FaultProxy::start(([127, 0, 0, 1], a_listen).into());
    let to_hq = FaultProxy::start(([127, 0, 0, 1], hq_port).into());
    for p in [&to_a, &to_b, &to_hq] {
        p.capture();
    }
    let hq_section = format!(
        "[hq]\nurl = \"https://localhost:{}\"\nrecipient = \"{recipient}\"\nca_cert = \"{}\"\nprobe_secs = 0.5\nresend_secs = 1.0\n",
        to_hq.port(),
        dir.join("hq").join("cert.pem").display()
    );
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo/node-1.toml")).unwrap();
    let cameras: String = demo
        .lines()
        .skip_while(|l| !l.starts_with("[[camera]]"))
        .collect::<Vec<_>>()
        .join("\n");
    let a_ops = free_port();
    let a_cfg = dir.join("a.toml");
    std::fs::write(
        &a_cfg,
        format!(
            "store = \"privacy-store\"\nnode = \"front\"\ndata_dir = \"{}\"\n[ui]\nenabled = false\n[ops]\nlisten = \"127.0.0.1:{a_ops}\"\n\
             [mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{a_listen}\"]\nbootstrap = [\"/ip4/127.0.0.1/tcp/{}\"]\nannounce = []\nmdns = false\n\
             heartbeat_secs = 0.5\nleader_timeout_secs = 2.0\npriority = 5\n{hq_section}\
             [evidence]\nmin_severity = \"info\"\nbefore_secs = 2.0\nafter_secs = 2.0\n{cameras}\n",
            a.display(),
            to_b.port()
        ),
    )
    .unwrap();
    let b_ops = free_port();
    let b_cfg = dir.join("b.toml");
    std::fs::write(
        &b_cfg,
        format!(
            "store = \"privacy-store\"\nnode = \"back\"\ndata_dir = \"{}\"\n[ui]\nenabled = false\n[ops]\nlisten = \"127.0.0.1:{b_ops}\"\n\
             [mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{b_listen}\"]\nbootstrap = [\"/ip4/127.0.0.1/tcp/{}\"]\nannounce = []\nmdns = false\n\
             heartbeat_secs = 0.5\nleader_timeout_secs = 2.0\n{hq_section}",
            b.display(),
            to_a.port()
        ),
    )
    .unwrap();
    a_hold.release();
    b_hold.release();
    let mut na = spawn(&["run", "--config", &a_cfg.to_string_lossy()], &dir.join("a.log"));
    let mut nb = spawn(&["run", "--config", &b_cfg.to_string_lossy()], &dir.join("b.log"));

    // Run until the peer holds a good number of the camera node's events and HQ has a summary.
    let t = Instant::now();
    loop {
        let b_records = std::net::TcpStream::connect(("127.0.0.1", b_ops))
            .ok()
            .and_then(|_| metric(&prometheus(&http_get(b_ops, "/metrics").1), "lpmesh_log_records"))
            .unwrap_or(0.0);
        let synced = std::fs::read_to_string(a.join("uplink-status.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["summaries_sent"].as_u64().unwrap_or(0) >= 2);
        let evidence = std::net::TcpStream::connect(("127.0.0.1", a_ops))
            .ok()
            .and_then(|_| {
                metric(
                    &prometheus(&http_get(a_ops, "/metrics").1),
                    "lpmesh_evidence_kept_total{part=\"clip\"}",
                )
            })
            .unwrap_or(0.0);
        if b_records >= 15.0 && synced && evidence >= 2.0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "too little traffic to prove anything: {b_records} records at the peer, synced {synced}, {evidence} clips kept"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    interrupt(&mut na, "the camera node");
    interrupt(&mut nb, "the peer");
    interrupt(&mut hq, "HQ");

    // What the camera saw, in the clear, as the peer decrypted it: every one of these strings is in
    // the events, and none may be on the wire.
    let events = ok(&["events", "--data", &b.to_string_lossy(), "--json"]);
    let mut needles: Vec<String> = vec![
        "privacy-store".into(),
        "front".into(),
        "plaza".into(),
        "started_at_ms".into(),
        "confidence".into(),
        "incident".into(),
        "nanodet".into(),
    ];
    for line in events.lines().filter(|l| l.starts_with('{')) {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["kind", "zone", "incident"] {
            if let Some(v) = e[field].as_str() {
                needles.push(v.to_string());
            }
        }
    }
    needles.sort();
    needles.dedup();
    assert!(needles.len() > 10, "too few event strings: {needles:?}");
    let mesh_bytes: Vec<u8> = [to_a.captured(), to_b.captured()].concat();
    let hq_bytes = to_hq.captured();
    assert!(
        mesh_bytes.len() > 20_000 && hq_bytes.len() > 2_000,
        "{} / {}",
        mesh_bytes.len(),
        hq_bytes.len()
    );
    for (what, bytes) in [("the mesh", &mesh_bytes), ("HQ", &hq_bytes)] {
        for n in &needles {
            assert_eq!(find(bytes, n.as_bytes()), 0, "{n:?} in the clear on the link to {what}");
        }
        // JPEG (start of image + a marker), PNG and a BMP header of a camera-sized still.
        for (fmt, sig) in [
            ("JPEG", &[0xFF, 0xD8, 0xFF, 0xE0][..]),
            ("JPEG", &[0xFF, 0xD8, 0xFF, 0xDB][..]),
            ("PNG", &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A][..]),
            ("BMP", &[b'B', b'M', 0x36, 0x40, 0x14, 0x00][..]),
        ] {
            assert_eq!(find(bytes, sig), 0, "a {fmt} signature on the link to {what}");
        }
    }

    // Decrypted, as the peer holds them: every record of its log fits its kind's schema.
    let records = ok(&["events", "--data", &b.to_string_lossy(), "--records"]);
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut with_evidence = 0;
    for line in records.lines().filter(|l| l.starts_with('{')) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let kind = r["kind"].as_str().unwrap().to_string();
        let p = &r["payload"];
        assert!(line.len() < 4096, "a record of {} bytes: {line}", line.len());
        check_schema(&kind, p);
        with_evidence += usize::from(p.get("evidence").is_some());
        *kinds.entry(kind).or_default() += 1;
    }
    assert!(kinds.get("event").copied().unwrap_or(0) >= 15, "{kinds:?}");
    assert!(with_evidence >= 2, "events that say evidence exists: {with_evidence}");
    // Decrypted, as HQ stored them: every summary is figures and names, nothing else.
    let summaries = ok(&["hq", "summaries", "--config", &hq_cfg]);
    let mut n_summaries = 0;
    for line in summaries.lines().filter(|l| l.starts_with('{')) {
        let s: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(line.len() < 64 * 1024, "a summary of {} bytes", line.len());
        no_binary("summary", &s);
        n_summaries += 1;
    }
    // One period of a short run (sent again as it grew: HQ keeps the latest).
    assert!(n_summaries >= 1, "{summaries}");
    // The evidence on the camera node: encrypted, no image or video inside.
    let ev_dir = a.join("evidence");
    let mut parts = 0;
    for f in std::fs::read_dir(&ev_dir).unwrap() {
        let p = f.unwrap().path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_string();
        if ext != "still" && ext != "clip" {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        assert!(!bytes.starts_with(&[0xFF, 0xD8]), "{} starts like a JPEG", p.display());
        for sig in [
            &b"JFIF\0"[..],
            b"Exif\0",
            b"ftypisom",
            b"ftypmp4",
            b"ftypavc1",
            b"moov",
            b"mdat",
        ] {
            assert_eq!(
                find(&bytes, sig),
                0,
                "{} holds {:?}",
                p.display(),
                String::from_utf8_lossy(sig)
            );
        }
        parts += 1;
    }
    assert!(parts >= 4, "stills and clips on disk: {parts}");
    println!(
        "privacy: {} bytes between the nodes and {} to HQ captured; none of {} event strings, no image signature; \
         {} records ({kinds:?}, {with_evidence} with an evidence reference) and {n_summaries} summaries fit their schema; \
         {parts} evidence files, none readable as an image",
        mesh_bytes.len(),
        hq_bytes.len(),
        needles.len(),
        kinds.values().sum::<usize>(),
    );
}

/// No string long enough to carry a picture, nothing that looks encoded, no array but short ones.
fn no_binary(what: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            assert!(s.len() <= 200, "{what}: a string of {} bytes", s.len());
            assert!(
                !s.chars().any(|c| c.is_control()),
                "{what}: control characters in {s:?}"
            );
        }
        serde_json::Value::Array(a) => {
            assert!(a.len() <= 64, "{what}: an array of {}", a.len());
            a.iter().for_each(|x| no_binary(what, x));
        }
        serde_json::Value::Object(m) => {
            assert!(m.len() <= 128, "{what}: an object of {} fields", m.len());
            for (k, x) in m {
                assert!(k.len() <= 64, "{what}: a key of {} bytes", k.len());
                no_binary(what, x);
            }
        }
        _ => {}
    }
}

/// The fields each kind of record may have, and no others.
fn check_schema(kind: &str, p: &serde_json::Value) {
    let allowed: &[&str] = match kind {
        "event" => &[
            "incident",
            "phase",
            "store",
            "node",
            "camera",
            "zone",
            "kind",
            "severity",
            "started_at_ms",
            "at_ms",
            "ended_at_ms",
            "track",
            "bbox",
            "confidence",
            "model",
            "evidence",
            "detail",
        ],
        "action" => &[
            "incident",
            "incident_started_at_ms",
            "action",
            "by",
            "node",
            "at_ms",
            "note",
        ],
        "member" => &["node", "at_ms", "invitation", "revoked", "priority", "name"],
        "user" => &["name", "role", "hash", "at_ms"],
        other => panic!("a {other} record crossed: not expected in this run"),
    };
    let m = p
        .as_object()
        .unwrap_or_else(|| panic!("{kind}: unreadable contents {p}"));
    for k in m.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "{kind}: field {k:?} is not in its schema: {p}"
        );
    }
    if kind == "user" {
        // A password hash (argon2id, redacted by the audit to what it is and its size) is the one
        // long string a record holds.
        let hash = m.get("hash").and_then(|h| h.as_str()).unwrap_or("");
        let bytes: usize = hash
            .trim_start_matches("<argon2id hash, ")
            .trim_end_matches(" bytes>")
            .parse()
            .unwrap_or(usize::MAX);
        assert!(hash.is_empty() || bytes < 200, "{hash}");
    }
    no_binary(kind, p);
    if let Some(b) = m.get("bbox") {
        let b = b.as_array().unwrap();
        assert!(
            b.len() == 4 && b.iter().all(|x| x.as_f64().is_some_and(|x| (0.0..=1.5).contains(&x))),
            "{b:?}"
        );
    }
    if let Some(d) = m.get("detail") {
        for k in d.as_object().unwrap().keys() {
            assert!(
                [
                    "dwell_secs",
                    "people",
                    "line",
                    "direction",
                    "reason",
                    "changed_fraction"
                ]
                .contains(&k.as_str()),
                "detail field {k:?}"
            );
        }
    }
    if let Some(e) = m.get("evidence") {
        let e = e.as_object().unwrap();
        assert_eq!(e.keys().collect::<Vec<_>>(), ["id", "node"], "{e:?}");
        let id = e["id"].as_str().unwrap();
        assert!(id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(e["node"], m["node"]);
    }
}
