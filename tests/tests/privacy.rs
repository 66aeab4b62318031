//! No pixels and no plaintext event leave a node: a camera node (the demo footage, real detection)
//! and a second node of its store talk only through a tapping proxy, and both reach HQ only through
//! another; every byte those links carry is kept and searched for event fields, names from the
//! configuration, and image signatures. The run must have moved events and summaries, or the proof
//! would be empty.

use std::time::{Duration, Instant};

use lpmesh_tests::{
    free_port, hq_recipient, http_get, interrupt, metric, ok, prometheus, spawn, FaultProxy, HeldPort, TempDir,
};

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn the_bytes_a_node_sends_to_peers_and_hq_carry_no_event_field_and_no_image() {
    let dir = TempDir::new("privacy");
    let hq_port = free_port();
    let hq_toml = dir.join("hq.toml");
    std::fs::write(
        &hq_toml,
        format!(
            "listen = \"127.0.0.1:{hq_port}\"\ndata_dir = \"{}\"\n",
            dir.join("hq").display()
        ),
    )
    .unwrap();
    let hq_cfg = hq_toml.to_string_lossy().to_string();
    let init = ok(&["hq", "init", "--config", &hq_cfg]);
    let recipient = hq_recipient(&init);
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&["init", "--store", "privacy-store", "--data", &a.to_string_lossy()]);
    lpmesh_tests::enrol(&a, &b);
    let key = ok(&["store-key", "--data", &a.to_string_lossy()]);
    ok(&[
        "hq",
        "register-store",
        "--config",
        &hq_cfg,
        "--store",
        "privacy-store",
        "--key",
        key.trim(),
    ]);
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
             heartbeat_secs = 0.5\nleader_timeout_secs = 2.0\npriority = 5\n{hq_section}{cameras}\n",
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
        if b_records >= 15.0 && synced {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "too little traffic to prove anything: {b_records} records at the peer, synced {synced}"
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
    println!(
        "privacy: {} bytes between the nodes and {} to HQ captured; none of {} event strings, no image signature",
        mesh_bytes.len(),
        hq_bytes.len(),
        needles.len()
    );
}
