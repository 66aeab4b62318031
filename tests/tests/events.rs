//! Loss-prevention events on real footage: vtest.avi with the demo store's zones, through the real
//! binary, twice.

use std::collections::{HashMap, HashSet};

use lpmesh_tests::{footage, lpmesh};
use serde_json::Value;

fn events() -> Vec<Value> {
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo/store.toml");
    let o = lpmesh()
        .args([
            "detect",
            &footage().to_string_lossy(),
            "--config",
            &cfg.to_string_lossy(),
        ])
        .args(["--format", "events", "--clock-start", "2026-11-24T10:00:00Z"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

#[test]
fn the_demo_store_raises_real_events_on_real_footage_and_the_same_every_run() {
    let first = events();
    let count = |kind: &str, phase: &str| {
        first
            .iter()
            .filter(|e| e["kind"] == kind && e["phase"] == phase)
            .count()
    };
    let crossings: Vec<&str> = first
        .iter()
        .filter(|e| e["kind"] == "line_crossing")
        .map(|e| e["detail"]["direction"].as_str().unwrap())
        .collect();
    assert!(
        crossings.contains(&"in") && crossings.contains(&"out"),
        "both directions counted: {crossings:?}"
    );
    assert!(
        crossings.len() >= 10,
        "people cross the walkway all the time: {}",
        crossings.len()
    );
    assert!(count("loitering", "start") >= 1, "someone lingers on the floor");
    assert!(
        count("shelf_interaction", "start") >= 1,
        "people reach into the taped strip"
    );
    assert!(count("after_hours", "start") == 0, "the demo store is always open");
    assert!(
        count("camera_tamper", "start") == 0,
        "the real view is not tampered with"
    );

    // Every field valid; every incident starts before it updates and ends exactly once.
    let kinds: HashSet<&str> = [
        "loitering",
        "shelf_interaction",
        "shelf_sweep",
        "exit_without_checkout",
        "after_hours",
        "restricted_entry",
        "crowding",
        "camera_tamper",
        "camera_offline",
        "line_crossing",
    ]
    .into();
    let clock_start = 1_795_514_400_000i64;
    let mut phases: HashMap<String, Vec<String>> = HashMap::new();
    for e in &first {
        assert_eq!(
            (e["store"].as_str(), e["node"].as_str(), e["camera"].as_str()),
            (Some("demo-store"), Some("node-1"), Some("plaza"))
        );
        assert!(kinds.contains(e["kind"].as_str().unwrap()), "{e}");
        assert!(
            ["info", "low", "medium", "high", "critical"].contains(&e["severity"].as_str().unwrap()),
            "{e}"
        );
        let (started, at) = (e["started_at_ms"].as_i64().unwrap(), e["at_ms"].as_i64().unwrap());
        assert!(
            started >= clock_start - 1000 && started <= at && at <= clock_start + 80_000,
            "{e}"
        );
        if let Some(b) = e.get("bbox").and_then(Value::as_array) {
            assert_eq!(b.len(), 4);
            assert!(
                b.iter().all(|v| (-0.01..=1.01).contains(&v.as_f64().unwrap())),
                "normalised box: {e}"
            );
        }
        let c = e["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c), "{e}");
        assert!(e.get("image").is_none() && e.get("pixels").is_none());
        phases
            .entry(e["incident"].as_str().unwrap().to_string())
            .or_default()
            .push(e["phase"].as_str().unwrap().into());
    }
    for (incident, p) in &phases {
        let ok = p == &["instant"]
            || (p.first().map(String::as_str) == Some("start")
                && p.last().map(String::as_str) == Some("end")
                && p[1..p.len() - 1].iter().all(|x| x == "update"));
        assert!(ok, "incident {incident}: {p:?}");
    }

    let second = events();
    let summary = |ev: &[Value]| {
        let mut m: Vec<(String, String)> = ev
            .iter()
            .map(|e| (e["kind"].to_string(), e["phase"].to_string()))
            .collect();
        m.sort();
        m
    };
    assert_eq!(summary(&first), summary(&second), "counts stable from run to run");
    assert_eq!(first, second, "with a fixed clock start a file gives identical events");
}
