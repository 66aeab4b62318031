//! A node whose data directory fills up (a small tmpfs, mounted by the test: it runs as root, as CI
//! does): detection and alerts go on, `/metrics` says the log is failing, the events of that time
//! are held and written once space is freed, and no record the node reported durable is lost.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lpmesh_tests::{free_port, http_get, interrupt, lpmesh, lpmesh_path, metric, prometheus, TempDir};

struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn scrape(port: u16) -> Vec<(String, f64)> {
    prometheus(&http_get(port, "/metrics").1)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alert_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("ALERT "))
        .count()
}

#[test]
fn a_full_disk_keeps_detection_and_alerts_going_and_loses_nothing() {
    let dir = TempDir::new("disk-full");
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a 32 MiB tmpfs needs root (CI runs as root)");
    let _mount = Mount(mnt.clone());
    let data = mnt.join("node");
    let out = lpmesh()
        .args(["init", "--store", "shop-1", "--data", &data.to_string_lossy()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo/node-1.toml")).unwrap();
    let (ops, mesh) = (free_port(), free_port());
    let mut cfg: String = demo
        .lines()
        .map(|l| {
            if l.starts_with("data_dir") {
                format!("data_dir = \"{}\"", data.display())
            } else if l.starts_with("store") {
                "store = \"shop-1\"".into()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    cfg.push_str(&format!(
        "\n[ui]\nenabled = false\n[ops]\nlisten = \"127.0.0.1:{ops}\"\n[mesh]\nlisten = [\"/ip4/127.0.0.1/tcp/{mesh}\"]\nmdns = false\n\
         [[alerts.route]]\nname = \"guards\"\ntype = \"console\"\nmin_severity = \"low\"\ncooldown_secs = 0\n"
    ));
    let config = dir.join("node.toml");
    std::fs::write(&config, cfg).unwrap();
    let (out_log, err_log) = (dir.join("node.out"), dir.join("node.err"));
    let mut node = Command::new(lpmesh_path())
        .args(["run", "--config", &config.to_string_lossy()])
        .env("LPMESH_LOG", "info")
        .stdout(Stdio::from(std::fs::File::create(&out_log).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_log).unwrap()))
        .spawn()
        .unwrap();
    let appended = |m: &[(String, f64)]| metric(m, "lpmesh_records_appended_total").unwrap_or(0.0);
    let detected = |m: &[(String, f64)]| metric(m, "lpmesh_camera_frames_total{camera=\"plaza\"}").unwrap_or(0.0);
    wait_for("the node appends events", Duration::from_secs(90), || {
        http_get_ok(ops) && appended(&scrape(ops)) >= 5.0
    });

    // Fill the disk to the last byte.
    let ballast = mnt.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let before_full = scrape(ops);
    let alerts_before = alert_lines(&out_log);
    wait_for("the node reports the failing log", Duration::from_secs(60), || {
        metric(&scrape(ops), "lpmesh_log_failed") == Some(1.0)
    });
    let full = scrape(ops);
    assert_eq!(metric(&full, "lpmesh_disk_nearly_full"), Some(1.0));
    // While full: frames are still detected and alerts still go out.
    wait_for(
        "detection and alerts go on while the disk is full",
        Duration::from_secs(60),
        || detected(&scrape(ops)) > detected(&full) + 50.0 && alert_lines(&out_log) > alerts_before,
    );
    assert!(
        node.try_wait().unwrap().is_none(),
        "the node must not stop on a full disk"
    );
    let appended_while_full = appended(&scrape(ops));

    // Space again: the log reopens, the held events are written, and appends go on.
    std::fs::remove_file(&ballast).unwrap();
    wait_for("the log is writable again", Duration::from_secs(30), || {
        let m = scrape(ops);
        metric(&m, "lpmesh_log_failed") == Some(0.0) && appended(&m) > appended_while_full
    });
    let after = scrape(ops);
    assert!(metric(&after, "lpmesh_log_reopened_total").unwrap_or(0.0) >= 1.0);
    let durable = appended(&after);
    assert!(durable > appended(&before_full));
    interrupt(&mut node, "the node");

    // Every record the node reported durable is in the database it left.
    let out = lpmesh()
        .args(["events", "--data", &data.to_string_lossy(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .count();
    println!(
        "appended {durable} records (held while full: {}), {events} events in the log after the stop",
        durable - appended_while_full
    );
    assert!(
        events as f64 >= durable,
        "{events} events in the log, {durable} reported durable"
    );
}

fn http_get_ok(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
