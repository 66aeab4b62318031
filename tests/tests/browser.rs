//! The tablet UI in a real browser (Debian's Chromium, headless, driven by Playwright from
//! `tests/browser/ui.mjs`) against two real `lpmesh run` nodes: log in on node A; an incident raised by
//! node B's camera appears on A's page without a reload; acknowledge it on A; node B's page shows it
//! acknowledged. Both nodes serve HTTPS with certificates from the store's own CA, which the browser
//! trusts the way a tablet does once it installed it (its own NSS trust store, via `certutil`); any
//! certificate warning would stop the page from loading. Screenshots are kept in `target/ui-artefacts/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lpmesh_tests::{free_port, lpmesh, lpmesh_path, TempDir};

fn ok(args: &[&str], stdin: Option<&str>) -> String {
    let mut c = lpmesh();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lpmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

fn run(config: &Path, log: &Path) -> Node {
    Node(
        Command::new(lpmesh_path())
            .args(["run", "--config", &config.to_string_lossy()])
            .env("LPMESH_LOG", "info")
            .stdout(Stdio::from(std::fs::File::create(log.with_extension("out")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap(),
    )
}

fn wait_for_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn an_incident_on_node_b_reaches_node_a_and_its_acknowledgement_comes_back() {
    let script = repo().join("tests/browser/ui.mjs");
    assert!(
        repo().join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core missing: run scripts/setup.sh"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium missing: run scripts/setup.sh"
    );
    let dir = TempDir::new("browser");
    let (n1, n2) = (dir.join("n1"), dir.join("n2"));
    ok(&["init", "--store", "shop-ui", "--data", &n1.to_string_lossy()], None);
    lpmesh_tests::enrol(&n1, &n2);
    // One account for the store, added on node A only: B learns it through the store's log.
    ok(
        &[
            "user",
            "add",
            "--data",
            &n1.to_string_lossy(),
            "--role",
            "manager",
            "--password-stdin",
            "alex",
        ],
        Some("store manager pass\n"),
    );
    ok(
        &[
            "user",
            "add",
            "--data",
            &n1.to_string_lossy(),
            "--role",
            "security",
            "--password-stdin",
            "sam",
        ],
        Some("floor guard pass\n"),
    );
    let (m1, m2, u1, u2) = (free_port(), free_port(), free_port(), free_port());
    let c1 = dir.join("n1.toml");
    std::fs::write(
        &c1,
        format!(
            "store = \"shop-ui\"\nnode = \"front\"\ndata_dir = \"{}\"\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{m1}\"]\nmdns = false\n[ui]\nlisten = \"127.0.0.1:{u1}\"\n",
            n1.display()
        ),
    )
    .unwrap();
    // Node B's camera: the whole view is a stockroom, so the first person seen is an incident.
    let c2 = dir.join("n2.toml");
    std::fs::write(
        &c2,
        format!(
            "store = \"shop-ui\"\nnode = \"back\"\ndata_dir = \"{}\"\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{m2}\"]\nbootstrap = [\"/ip4/127.0.0.1/tcp/{m1}\"]\nmdns = false\n[ui]\nlisten = \"127.0.0.1:{u2}\"\n[[camera]]\nname = \"stockroom-door\"\nsource = \"cache:data/vtest.avi\"\n[[camera.zone]]\nname = \"stockroom\"\nkind = \"restricted\"\npolygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n",
            n2.display()
        ),
    )
    .unwrap();
    let _a = run(&c1, &dir.join("n1.log"));
    wait_for_port(u1);
    let mut b = Some(run(&c2, &dir.join("n2.log")));
    wait_for_port(u2);
    let out_dir = repo().join("target/ui-artefacts");
    std::fs::create_dir_all(&out_dir).unwrap();
    // The tablet trusts the store once: its CA in the browser's trust store, nothing else.
    let ca = dir.join("store-ca.pem");
    ok(
        &[
            "store-ca",
            "--data",
            &n1.to_string_lossy(),
            "--out",
            &ca.to_string_lossy(),
        ],
        None,
    );
    let home = dir.join("tablet-home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "lpmesh store shop-ui",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        let st = Command::new("certutil")
            .args(&args)
            .status()
            .expect("certutil (libnss3-tools): run scripts/setup.sh");
        assert!(st.success(), "certutil {args:?}");
    }
    let signal = dir.join("remove-now");
    let stop_b = dir.join("stop-b-now");
    let child = Command::new("node")
        .arg(&script)
        .env("REMOVE_SIGNAL", &signal)
        .env("STOP_B_SIGNAL", &stop_b)
        .env("GUARD", "sam")
        .env("GUARD_PASS", "floor guard pass")
        .env("HOME", &home)
        .env("URL_A", format!("https://localhost:{u1}"))
        .env("URL_B", format!("https://127.0.0.1:{u2}"))
        .env("USER", "alex")
        .env("PASS", "store manager pass")
        .env("OUT", &out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (Node.js) runs the browser script");
    // When the script says so, the user is removed on node B (A's page is open and logged in).
    let mut child = child;
    let t = Instant::now();
    while !signal.exists() && child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if signal.exists() {
        ok(&["user", "remove", "--data", &n2.to_string_lossy(), "alex"], None);
    }
    // Then, when the script says so, node B stops (its evidence with it).
    while !stop_b.exists() && child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(400) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if stop_b.exists() {
        drop(b.take());
        std::fs::write(stop_b.with_extension("done"), "").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
    assert!(
        out.status.success() && v["ok"] == true,
        "browser run failed: {stdout}\n{}\nnode A log:\n{}\nnode B log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("n1.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("n2.log")).unwrap_or_default()
    );
    assert_eq!(v["same_document"], true, "the incident arrived without a reload");
    assert!(
        v["mesh_rows"].as_u64().unwrap() >= 2,
        "both nodes on the mesh page: {v}"
    );
    // B's evidence on A's page, from B: the still, a clip that plays; the manager downloads it and
    // the download is in the incident's history on A (recorded by B, through the log); the guard
    // sees the same evidence with no download; B stopped, A's page says it is unavailable.
    // Before the reload: shown, or (the page opened before B was heard from) a reload offered.
    assert!(
        ["shown", "reload"].contains(&v["evidence_before_reload"].as_str().unwrap_or("")),
        "{v}"
    );
    let ev = &v["evidence"];
    assert_eq!(ev["state"], "shown", "{v}");
    assert_eq!(ev["still_from"], format!("https://127.0.0.1:{u2}"), "{v}");
    assert!(ev["still_width"].as_u64().unwrap() >= 320, "{v}");
    assert!(ev["clip"]["duration"].as_f64().unwrap() >= 2.0, "{v}");
    assert!(ev["clip"]["played"].as_f64().unwrap() > 0.3, "{v}");
    assert!(ev["clip"]["width"].as_u64().unwrap() >= 320, "{v}");
    assert_eq!(ev["download_visible"], true, "{v}");
    assert!(v["download"]["bytes"].as_u64().unwrap() > 10_000, "{v}");
    assert!(v["download"]["name"].as_str().unwrap().ends_with(".mp4"), "{v}");
    assert!(v["download"]["in_history"].as_str().unwrap().contains("by alex"), "{v}");
    assert_eq!(v["guard_evidence"]["state"], "shown", "{v}");
    assert_eq!(v["guard_evidence"]["download_visible"], false, "{v}");
    assert_eq!(v["after_b_stopped"]["state"], "unavailable", "{v}");
    assert!(v["after_b_stopped"]["note"].as_str().unwrap().contains("back"), "{v}");
    for shot in [
        "2-node-a-incident-arrived.png",
        "4-node-b-shows-acknowledged.png",
        "3b-manager-evidence.png",
    ] {
        assert!(out_dir.join(shot).metadata().unwrap().len() > 1000, "{shot}");
    }
    // The live feed a guard reads: medium and above, no row repeating another's kind, camera and
    // zone (they fold into one with a count), one column on a phone with nothing off the screen.
    assert!(v["feed"]["rows"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["feed"]["below_medium"], 0, "{v}");
    assert_eq!(v["feed"]["duplicate_rows"], 0, "{v}");
    assert_eq!(v["phone"]["feed_layout"], "grid", "{v}");
    assert!(v["phone"]["page_width"].as_u64().unwrap() <= 390, "{v}");
    assert!(out_dir.join("8-phone-feed.png").metadata().unwrap().len() > 1000);
    // The zone drawn in the browser is in B's configuration file, which still validates.
    assert_eq!(v["zone_saved"], true);
    let saved = std::fs::read_to_string(&c2).unwrap();
    assert!(
        saved.contains("name = \"till-queue\"") && saved.contains("kind = \"checkout\""),
        "{saved}"
    );
    ok(&["validate", &c2.to_string_lossy()], None);
    // Removed on B, logged out on A within seconds; the login page shows the store's certificate.
    let out_ms = v["logged_out_on_a_after_ms"]
        .as_u64()
        .expect("A's page went back to the login");
    assert!(out_ms < 10_000, "logged out after {out_ms} ms");
    let fp = ok(&["store-ca", "--data", &n1.to_string_lossy()], None);
    assert_eq!(
        ok(&["store-ca", "--data", &n2.to_string_lossy()], None),
        fp,
        "the joiner received the store's CA"
    );
    assert_eq!(
        v["trust_shown"].as_str().unwrap_or_default(),
        fp.trim().trim_start_matches("SHA-256 ")
    );
    eprintln!("browser: {v}");
}
