//! The `lpmesh` binary as a user runs it: real video, real model, and the ways it can go wrong.

use std::process::Output;

use lpmesh_tests::{footage, lpmesh, TempDir};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, expect: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked instead of an error: {err}");
    for e in expect {
        assert!(err.contains(e), "stderr lacks {e:?}: {err}");
    }
}

#[test]
fn detect_writes_mot_records_for_tracked_people() {
    let o = lpmesh()
        .args([
            "detect",
            &footage().to_string_lossy(),
            "--format",
            "mot",
            "--max-frames",
            "40",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .map(|l| {
            l.split(',')
                .map(|v| v.parse::<f64>().unwrap_or_else(|_| panic!("bad MOT line {l:?}")))
                .collect()
        })
        .collect();
    assert!(
        rows.len() > 40,
        "a few people per frame over 40 frames, got {} rows",
        rows.len()
    );
    for r in &rows {
        assert_eq!(r.len(), 10);
        assert!((1.0..=40.0).contains(&r[0]), "frames count from 1: {r:?}");
        assert!(r[1] >= 1.0, "ids from 1");
        assert!(r[4] > 0.0 && r[5] > 0.0 && r[6] >= 0.3 && r[6] <= 1.0);
        assert_eq!(&r[7..], &[-1.0, -1.0, -1.0]);
    }
    // No id appears twice in one frame.
    let mut seen = std::collections::HashSet::new();
    assert!(rows.iter().all(|r| seen.insert((r[0] as u64, r[1] as u64))));
    assert!(stderr(&o).contains("40 frames"), "summary on stderr: {}", stderr(&o));
}

#[test]
fn detect_jsonl_records_carry_pixels_and_normalised_boxes() {
    let o = lpmesh()
        .args(["detect", &footage().to_string_lossy(), "--max-frames", "10"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().expect("records")).unwrap();
    for key in ["frame", "time_s", "id", "bbox", "bbox_norm", "score"] {
        assert!(first.get(key).is_some(), "missing {key}: {first}");
    }
    let norm: Vec<f64> = serde_json::from_value(first["bbox_norm"].clone()).unwrap();
    assert!(norm.iter().all(|v| (0.0..=1.0).contains(v)), "{norm:?}");
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let o = lpmesh()
        .args([
            "detect",
            &footage().to_string_lossy(),
            "--model",
            "/nonexistent/model.onnx",
        ])
        .output()
        .unwrap();
    assert_clean_failure(
        &o,
        &["model file not found", "/nonexistent/model.onnx", "scripts/setup.sh"],
    );
}

#[test]
fn a_missing_onnx_runtime_is_a_clear_error() {
    let dir = TempDir::new("no-ort");
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "store = \"s\"\nnode = \"n\"\n[runtime]\nonnxruntime = \"/nonexistent/libonnxruntime.so\"\n",
    )
    .unwrap();
    let o = lpmesh()
        .args([
            "detect",
            &footage().to_string_lossy(),
            "--config",
            &cfg.to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert_clean_failure(
        &o,
        &[
            "ONNX Runtime library not found",
            "/nonexistent/libonnxruntime.so",
            "scripts/setup.sh",
        ],
    );
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_a_clear_error() {
    let dir = TempDir::new("bad-ort");
    let lib = dir.join("libonnxruntime.so");
    std::fs::write(&lib, b"not a shared library").unwrap();
    let o = lpmesh()
        .env("ORT_DYLIB_PATH", &lib)
        .env("LPMESH_CACHE", dir.join("empty-cache"))
        .args(["detect", &footage().to_string_lossy(), "--model", "/nonexistent.onnx"])
        .output()
        .unwrap();
    assert_clean_failure(&o, &["cannot load ONNX Runtime", "libonnxruntime.so"]);
}

#[test]
fn an_unreadable_video_is_a_clear_error() {
    let o = lpmesh().args(["detect", "/nonexistent/video.avi"]).output().unwrap();
    assert_clean_failure(&o, &["cannot open video source /nonexistent/video.avi", "no such file"]);

    let dir = TempDir::new("garbage-video");
    let bad = dir.join("garbage.avi");
    std::fs::write(&bad, vec![0x5au8; 64 * 1024]).unwrap();
    let o = lpmesh().args(["detect", &bad.to_string_lossy()]).output().unwrap();
    assert_clean_failure(&o, &["cannot open video source", "garbage.avi"]);
}

#[test]
fn validate_reports_file_line_and_field() {
    let dir = TempDir::new("validate");
    let cfg = dir.join("node.toml");
    let text = "store = \"s\"\n[detector]\nscore_threshold = 2.0\n\n[tracker]\nmin_hits = 0\n\n[[camera]]\nname = \"c\"\nsource = \"x\"\n[[camera.zone]]\nname = \"z\"\nkind = \"shelf\"\npolygon = [[0, 0], [2, 0]]\n";
    std::fs::write(&cfg, text).unwrap();
    let o = lpmesh().args(["validate", &cfg.to_string_lossy()]).output().unwrap();
    assert_clean_failure(
        &o,
        &[
            "5 problems",
            "node.toml: node: required",
            "node.toml:3: detector.score_threshold",
            "node.toml:6: tracker.min_hits",
            "node.toml:14: camera[0].zone[0].polygon: a polygon needs at least 3 points",
            "node.toml:14: camera[0].zone[0].polygon[1]: coordinates",
        ],
    );

    std::fs::write(&cfg, "store = \"s\"\nnode = \"n\"\n[detector]\nscore_threshold = 0.6\n").unwrap();
    let o = lpmesh().args(["validate", &cfg.to_string_lossy()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_example_configurations_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, what) in [
        ("config/store.example.toml", "valid store node configuration"),
        ("config/demo/store.toml", "valid store node configuration"),
        ("config/hq.example.toml", "valid HQ configuration"),
    ] {
        let o = lpmesh()
            .args(["validate", &root.join(file).to_string_lossy()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains(what), "{file}");
    }
}

#[test]
fn validate_checks_an_hq_configuration_as_one() {
    let dir = TempDir::new("validate-hq");
    let cfg = dir.join("hq.toml");
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:8443\"\ndashbord_listen = \"127.0.0.1:8444\"\n",
    )
    .unwrap();
    let o = lpmesh().args(["validate", &cfg.to_string_lossy()]).output().unwrap();
    assert_clean_failure(&o, &["hq.toml:", "line 2", "dashbord_listen"]);
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:8443\"\ndashboard_listen = \"127.0.0.1:8443\"\n",
    )
    .unwrap();
    let o = lpmesh().args(["validate", &cfg.to_string_lossy()]).output().unwrap();
    assert_clean_failure(&o, &["hq.toml", "dashboard_listen", "own listener"]);
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:8443\"\nmetrics_token_file = \"/nonexistent/token\"\n",
    )
    .unwrap();
    let o = lpmesh().args(["validate", &cfg.to_string_lossy()]).output().unwrap();
    assert_clean_failure(&o, &["/nonexistent/token"]);
}

/// HQ's users and the registry through the CLI, as HQ's administrator manages them (the embedded
/// store: files a running HQ reads at each request).
#[test]
fn hq_users_and_store_registrations_are_managed_from_the_command_line() {
    let dir = TempDir::new("hq-users");
    let cfg = dir.join("hq.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndashboard_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.join("hq").display()
        ),
    )
    .unwrap();
    let c = cfg.to_string_lossy().to_string();
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = lpmesh()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let add = [
        "hq",
        "user",
        "add",
        "--config",
        &c,
        "--name",
        "ana",
        "--role",
        "admin",
        "--password-stdin",
    ];
    let o = run(&add, "too short\n");
    assert_clean_failure(&o, &["at least 12 characters"]);
    let o = run(&add, "a long admin password\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let viewer = [
        "hq",
        "user",
        "add",
        "--config",
        &c,
        "--name",
        "vic",
        "--role",
        "viewer",
        "--password-stdin",
    ];
    assert_clean_failure(&run(&viewer, "a long viewer password\n"), &["at least one store"]);
    let mut scoped = viewer.to_vec();
    scoped.extend(["--stores", "shop-1,shop-2"]);
    assert!(run(&scoped, "a long viewer password\n").status.success());
    let o = run(&["hq", "user", "list", "--config", &c], "");
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(list.contains("ana") && list.contains("every store"), "{list}");
    assert!(list.contains("vic") && list.contains("shop-1,shop-2"), "{list}");
    assert!(!list.contains("argon2"), "no hash printed: {list}");
    assert!(run(&["hq", "user", "remove", "--config", &c, "--name", "vic"], "")
        .status
        .success());
    assert_clean_failure(
        &run(&["hq", "user", "remove", "--config", &c, "--name", "vic"], ""),
        &["no HQ user named vic"],
    );

    let key = {
        let k = libp2p_identity::Keypair::generate_ed25519();
        lpmesh_hq::envelope::store_key_to_string(&k.public()).unwrap()
    };
    let o = run(
        &[
            "hq",
            "register-store",
            "--config",
            &c,
            "--store",
            "shop-1",
            "--key",
            &key,
        ],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["hq", "unregister-store", "--config", &c, "--store", "shop-1"], "");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("its summaries stay"));
    assert_clean_failure(
        &run(&["hq", "unregister-store", "--config", &c, "--store", "shop-1"], ""),
        &["no registered store named shop-1"],
    );
}

#[test]
fn bench_pipeline_prints_the_figures_as_json() {
    let o = lpmesh()
        .args([
            "bench",
            "pipeline",
            "--video",
            &footage().to_string_lossy(),
            "--frames",
            "20",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    for key in ["model_fps", "pipeline_fps", "ratio"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    for stage in ["decode", "preprocess", "infer", "postprocess", "track"] {
        assert!(
            v["stages_ms"][stage].as_f64().is_some_and(|x| x >= 0.0),
            "stages_ms.{stage}: {v}"
        );
    }
    assert!(v["stages_ms"]["infer"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_mb"].as_f64().is_some_and(|x| x > 10.0), "{v}");
    assert_eq!(v["frames"], 20);
}

#[test]
fn an_execution_provider_that_is_not_available_is_skipped_with_a_warning() {
    let dir = TempDir::new("providers");
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "store = \"s\"\nnode = \"n\"\n[runtime]\nexecution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\n",
    )
    .unwrap();
    let o = lpmesh()
        .args([
            "detect",
            &footage().to_string_lossy(),
            "--config",
            &cfg.to_string_lossy(),
            "--max-frames",
            "3",
        ])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("not available") && err.contains("cuda") && err.contains("tensorrt"),
        "{err}"
    );
    assert!(!o.stdout.is_empty(), "it still detects, on the CPU");
}

#[test]
fn detect_fps_analyses_only_that_many_frames_per_second() {
    let dir = TempDir::new("detect-fps");
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "store = \"s\"\nnode = \"n\"\n[[camera]]\nname = \"c\"\nsource = \"x\"\ndetect_fps = 5\n",
    )
    .unwrap();
    let o = lpmesh()
        .args([
            "detect",
            &footage().to_string_lossy(),
            "--config",
            &cfg.to_string_lossy(),
        ])
        .args(["--format", "mot", "--max-frames", "20"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut frames: Vec<u64> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    frames.dedup();
    // vtest.avi is 10 fps: every other frame, 20 analysed frames spanning ~40 source frames.
    assert!(frames.windows(2).all(|w| w[1] - w[0] == 2), "{frames:?}");
    assert!(*frames.last().unwrap() >= 35, "{frames:?}");
}

#[test]
fn bench_mesh_reports_throughput_latency_and_catch_up() {
    let o = lpmesh()
        .args(["bench", "mesh", "--nodes", "3", "--records", "2000", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    for key in [
        "append_records_per_s",
        "append_single_records_per_s",
        "propagation_p50_ms",
        "propagation_p99_ms",
        "catch_up_s",
        "catch_up_records_per_s",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()), "{key}: {v}");
    }
    assert_eq!(v["catch_up_records"], 2000);
    // Where a record's time goes, step by step.
    for part in [
        "encrypt_us",
        "sign_us",
        "decode_us",
        "verify_us",
        "verify_batch_us",
        "store_us",
        "decrypt_us",
    ] {
        assert!(
            v["parts"][part].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()),
            "{part}: {v}"
        );
    }
    // The machine it ran on comes with the figures.
    assert!(v["machine"]["cores"].as_u64().is_some_and(|c| c >= 1), "{v}");
    assert!(v["machine"]["on_tmpfs"].is_boolean(), "{v}");
    // Taken from one peer at a time, not once from each: at most a few batches arrive twice.
    let received = v["catch_up_received"].as_u64().expect("catch_up_received");
    assert!((2000..4000).contains(&received), "{v}");
    assert_eq!(v["propagation_samples"], 200);
}

#[test]
fn bench_hq_ingests_into_a_real_postgresql() {
    let o = lpmesh()
        .args(["bench", "hq", "--stores", "20", "--periods", "3", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["summaries"], 60);
    assert_eq!(v["database"], "postgresql");
    // Its own cluster runs as production does: every acknowledged summary fsynced.
    assert_eq!(v["fsync"], true, "{v}");
    for key in ["summaries_per_s", "p50_ms", "p99_ms", "chain_10k_share"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()), "{key}: {v}");
    }
    assert_eq!(
        (v["fresh_connections"].clone(), v["connections"].clone()),
        (false.into(), 32.into())
    );
    // Every upload on a connection of its own, as stores' hourly uploads come.
    let o = lpmesh()
        .args([
            "bench",
            "hq",
            "--stores",
            "10",
            "--periods",
            "2",
            "--fresh-connections",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(
        (v["summaries"].clone(), v["connections"].clone()),
        (20.into(), 20.into()),
        "{v}"
    );
    assert_eq!(v["fresh_connections"], true, "{v}");
    assert!(v["summaries_per_s"].as_f64().is_some_and(|x| x > 0.0), "{v}");
}

#[test]
fn bench_alerts_measures_mqtt_and_the_ui_stream() {
    let o = lpmesh()
        .args(["bench", "alerts", "--incidents", "20", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["mqtt_received"], 20, "{v}");
    assert_eq!(v["stream_received"], 20, "{v}");
    for key in ["mqtt_p50_ms", "mqtt_p99_ms", "stream_p50_ms", "stream_p99_ms"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()), "{key}: {v}");
    }
}

#[test]
fn bench_alerts_from_the_frame_times_a_real_camera() {
    let o = lpmesh()
        .args(["bench", "alerts", "--from-frame", "--seconds", "20", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["from"], "frame", "{v}");
    assert!(
        v["camera"]["source"].as_str().is_some_and(|s| s.ends_with("vtest.avi")),
        "{v}"
    );
    // The demo footage has people crossing the walkway line within its first 20 s.
    assert!(
        v["camera"]["kinds"]["line_crossing"].as_u64().is_some_and(|n| n > 0),
        "{v}"
    );
    let n = v["incidents"].as_u64().unwrap();
    assert_eq!(v["mqtt_received"], n, "every incident reaches MQTT: {v}");
    assert_eq!(v["stream_received"], n, "every incident reaches A's UI stream: {v}");
    for key in ["mqtt_p50_ms", "mqtt_p99_ms", "stream_p50_ms", "stream_p99_ms"] {
        // Inference alone takes milliseconds: a figure from the frame cannot be below it.
        assert!(v[key].as_f64().is_some_and(|x| x > 1.0 && x.is_finite()), "{key}: {v}");
    }
}

#[test]
fn logs_can_be_json_lines_for_collectors() {
    let o = lpmesh()
        .args([
            "--log-format",
            "json",
            "--log-level",
            "info",
            "bench",
            "mesh",
            "--nodes",
            "2",
            "--records",
            "100",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "info logs expected");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{lines:?}"
    );
}

#[test]
fn eval_mot_scores_tracks_against_ground_truth_and_names_bad_lines() {
    let dir = lpmesh_tests::TempDir::new("eval-mot");
    // Two people over 4 frames; the tracker swaps one identity in frame 3 and invents a ghost.
    let gt = "1,1,10,10,20,40,1,-1,-1,-1\n1,2,100,10,20,40,1,-1,-1,-1\n\
              2,1,12,10,20,40,1,-1,-1,-1\n2,2,102,10,20,40,1,-1,-1,-1\n\
              3,1,14,10,20,40,1,-1,-1,-1\n3,2,104,10,20,40,1,-1,-1,-1\n\
              4,1,16,10,20,40,1,-1,-1,-1\n4,2,106,10,20,40,0,-1,-1,-1\n";
    let tracks = "1,7,10,10,20,40,0.9,-1,-1,-1\n1,8,100,10,20,40,0.9,-1,-1,-1\n\
                  2,7,12,10,20,40,0.9,-1,-1,-1\n2,8,102,10,20,40,0.9,-1,-1,-1\n\
                  3,7,14,10,20,40,0.9,-1,-1,-1\n3,9,104,10,20,40,0.9,-1,-1,-1\n\
                  4,7,16,10,20,40,0.9,-1,-1,-1\n4,5,300,300,20,40,0.9,-1,-1,-1\n";
    let (g, t) = (dir.join("gt.txt"), dir.join("tracks.txt"));
    std::fs::write(&g, gt).unwrap();
    std::fs::write(&t, tracks).unwrap();
    let out = lpmesh_tests::ok(&[
        "eval",
        "mot",
        "--gt",
        &g.to_string_lossy(),
        "--tracks",
        &t.to_string_lossy(),
        "--json",
    ]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 7 scored boxes (one row has conf 0), 7 matched, one switch (2: 8 -> 9), one ghost (frame 4's
    // box of 2 is not scored, so the tracker's box there is a false positive too).
    assert_eq!(s["gt_boxes"], 7);
    assert_eq!(s["id_switches"], 1);
    assert_eq!(s["misses"], 0);
    assert_eq!(s["false_positives"], 1);
    let mota = s["mota"].as_f64().unwrap();
    assert!((mota - (1.0 - 2.0 / 7.0)).abs() < 1e-9, "{mota}");
    // Identities: 1 -> 7 (4 frames), 2 -> 8 (2 frames): IDF1 = 2 * 6 / (7 + 8).
    assert!((s["idf1"].as_f64().unwrap() - 12.0 / 15.0).abs() < 1e-9, "{s}");
    let human = lpmesh_tests::ok(&[
        "eval",
        "mot",
        "--gt",
        &g.to_string_lossy(),
        "--tracks",
        &t.to_string_lossy(),
        "--frames",
        "1-2",
    ]);
    assert!(
        human.contains("MOTA 100.0 %") && human.contains("id switches 0"),
        "{human}"
    );
    std::fs::write(&t, "1,7,10,10,20,40\n2,x,1,1,1,1\n").unwrap();
    let bad = lpmesh()
        .args([
            "eval",
            "mot",
            "--gt",
            &g.to_string_lossy(),
            "--tracks",
            &t.to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("tracks.txt") && err.contains("line 2") && err.contains("id"),
        "{err}"
    );
}

/// `lpmesh init --manager` makes the store's first manager with it (queued for the whole store); a
/// password it would refuse leaves no half-made store behind.
#[test]
fn init_creates_the_first_manager_and_a_weak_password_creates_nothing() {
    use std::io::Write;
    let dir = TempDir::new("init-manager");
    let init = |data: &std::path::Path, password: &str| {
        let mut child = lpmesh()
            .args(["init", "--store", "shop-m", "--data", &data.to_string_lossy()])
            .args(["--manager", "alex", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let weak = dir.join("weak");
    let out = init(&weak, "short");
    assert_clean_failure(&out, &["8 characters"]);
    assert!(
        !weak.join("store.secrets").exists(),
        "a refused manager left a store behind"
    );

    let data = dir.join("ok");
    let out = init(&data, "store manager pass");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("manager alex"));
    let users = lpmesh_node::ui::auth::Users::new(&data);
    assert_eq!(
        users.check("alex", "store manager pass"),
        Some(lpmesh_node::ui::auth::Role::Manager)
    );
    let queued = users.take_outbox();
    assert_eq!(queued.len(), 1, "published to the store when the node first runs");
    assert_eq!(queued[0].name, "alex");
}
