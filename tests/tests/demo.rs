//! `lpmesh demo` as the README's first command runs it: three node processes, HQ, UIs, alerts and the
//! uplink on real footage; with HQ away for a while and the leader killed, and a report at the end.

use std::process::Command;

use lpmesh_tests::{lpmesh_path, TempDir};

#[test]
fn the_demo_survives_an_hq_outage_and_the_loss_of_its_leader() {
    let dir = TempDir::new("demo");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(lpmesh_path())
        .current_dir(root)
        .args(["demo", "--dir", &dir.join("run").to_string_lossy()])
        .args(["--duration", "55", "--uplink-down", "10", "--kill-node-after", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("logs          identical on every surviving node"),
        "{stdout}"
    );
    assert!(stdout.contains("(current hour present)"), "{stdout}");
    assert!(
        stdout.contains("(equal to the log)"),
        "HQ's footfall is the log's: {stdout}"
    );
    assert!(stdout.contains("HQ is back: the outbox drains"), "{stdout}");
    assert!(stdout.contains("(the uplink leader) went away"), "{stdout}");
    // The leader changed at least once after the kill.
    let changes: u32 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("leader"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(changes >= 1, "{stdout}");
    // Events of several kinds, from real detections on the footage.
    let kinds = stdout
        .lines()
        .skip_while(|l| !l.contains("  events  "))
        .skip(1)
        .take_while(|l| l.starts_with("                "))
        .count();
    assert!(kinds >= 3, "{stdout}");
    eprintln!("{stdout}");
}
