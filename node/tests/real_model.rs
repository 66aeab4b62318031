//! The real NanoDet model through the real ONNX Runtime on real frames of vtest.avi.
//!
//! These need what `scripts/setup.sh` installs into the cache (the test command runs it first); when it
//! is missing they fail with a message that says so, rather than pass vacuously.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lpmesh_node::capture::OpenCvCapture;
use lpmesh_node::config::{default_footage_path, default_model_path, NodeConfig};
use lpmesh_node::detect::onnx::{OnnxDetector, OnnxOptions};
use lpmesh_node::detect::{Detection, Detector, InputSpec};
use lpmesh_node::event::{EventKind, Phase};
use lpmesh_node::motion::{Decision, MotionConfig};
use lpmesh_node::pipeline::{run, Analyzer, PreparedFrame, RunOptions};
use lpmesh_node::rules::CameraRules;
use lpmesh_node::source::opencv::OpenCvOptions;
use lpmesh_node::track::TrackedPerson;

fn footage() -> PathBuf {
    let p = default_footage_path();
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    p
}

fn detector(cfg: &NodeConfig) -> OnnxDetector {
    let model = default_model_path();
    assert!(model.exists(), "{} missing: run scripts/setup.sh", model.display());
    let opts = OnnxOptions {
        score_threshold: cfg.decode_threshold(),
        nms_iou: cfg.detector.nms_iou,
        fit: cfg.detector.fit,
    };
    OnnxDetector::load(&model, &cfg.runtime, &opts).expect("load the detector")
}

/// Frames `wanted` (1-based) of vtest.avi, prepared for the detector.
fn frames(wanted: &[u64]) -> Vec<PreparedFrame> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut cap = OpenCvCapture::open(
        &footage().to_string_lossy(),
        OpenCvOptions::default(),
        InputSpec::nanodet_m_416(),
        MotionConfig::default(),
        stop,
    )
    .expect("open vtest.avi");
    let last = *wanted.iter().max().unwrap();
    let mut out = Vec::new();
    while let Some(f) = cap.next_prepared().expect("read") {
        let seq = f.seq;
        if wanted.contains(&seq) {
            out.push(f);
        }
        if seq >= last {
            break;
        }
    }
    assert_eq!(out.len(), wanted.len(), "vtest.avi has fewer frames than expected");
    out
}

fn people(det: &mut OnnxDetector, f: &PreparedFrame, min_score: f32) -> Vec<Detection> {
    let mut out = Vec::new();
    det.detect(&f.tensor, f.width, f.height, &mut out).expect("detect");
    out.retain(|d| d.score >= min_score);
    out
}

#[test]
fn people_are_found_where_people_are_and_nowhere_else() {
    let cfg = NodeConfig::default();
    let mut det = detector(&cfg);
    let fs = frames(&[100, 520]);
    // Frame 100 (checked by eye): six to eight people on the walkway in the upper half, nobody on the
    // lawn below y = 300.
    let f100 = people(&mut det, &fs[0], 0.5);
    let tall = f100.iter().filter(|d| d.bbox.height() > 1.5 * d.bbox.width()).count();
    assert!(tall >= 5, "expected several standing people in frame 100, got {f100:?}");
    assert!(
        f100.iter().all(|d| d.bbox.y1 < 300.0),
        "a box on the empty lawn in frame 100: {f100:?}"
    );
    assert!(
        f100.iter().all(|d| d.bbox.height() > 20.0 && d.bbox.height() < 200.0),
        "{f100:?}"
    );
    // Frame 520: a person walks across the lawn close to the camera (bottom centre, x 500-600), and
    // nobody is in the left third of the picture.
    let f520 = people(&mut det, &fs[1], 0.5);
    assert!(
        f520.iter()
            .any(|d| d.bbox.y2 > 540.0 && d.bbox.x1 > 480.0 && d.bbox.x2 < 620.0 && d.bbox.height() > 120.0),
        "the near walker in frame 520 was missed: {f520:?}"
    );
    assert!(
        f520.iter().all(|d| d.bbox.x2 > 200.0),
        "a box in the empty left strip of frame 520: {f520:?}"
    );
    assert!(f520.iter().all(|d| d.class == 0));
}

#[test]
fn the_whole_video_yields_a_bounded_number_of_stable_tracks() {
    let cfg = NodeConfig::default();
    let det = detector(&cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let cap = OpenCvCapture::open(
        &footage().to_string_lossy(),
        OpenCvOptions::default(),
        InputSpec::nanodet_m_416(),
        MotionConfig {
            enabled: false,
            ..MotionConfig::default()
        },
        stop.clone(),
    )
    .expect("open vtest.avi");
    let mut analyzer = Analyzer::new(Box::new(det), cfg.tracker_config());
    let mut rows = 0u64;
    let mut max_in_frame = 0usize;
    let stats = run(cap, &mut analyzer, &RunOptions::default(), &stop, |r| {
        let seen = r.people.iter().filter(|p| p.visible).count();
        rows += seen as u64;
        max_in_frame = max_in_frame.max(seen);
        Ok(true)
    })
    .expect("pipeline");
    assert_eq!(stats.frames, 795);
    assert_eq!(stats.dropped, 0, "a file analysed as fast as possible loses no frame");
    // About thirty different people cross the scene; an id per person plus a few re-identifications
    // after long occlusions is fine, an id every few frames is not.
    assert!((15..=60).contains(&stats.ids_issued), "track ids: {}", stats.ids_issued);
    let mean_len = rows as f64 / stats.ids_issued as f64;
    assert!(
        mean_len >= 30.0,
        "tracks are fragmented: {mean_len:.1} frames per id on average"
    );
    assert!(
        (3..=12).contains(&max_in_frame),
        "at most {max_in_frame} people in one frame"
    );
}

/// A node configured for OpenVINO.
fn openvino(settings: &str) -> NodeConfig {
    let text = format!("store = \"s\"\nnode = \"n\"\n[runtime]\nexecution_providers = [\"openvino\"]\n[runtime.openvino]\n{settings}\n");
    NodeConfig::parse(&text, std::path::Path::new("openvino.toml")).expect("a valid configuration")
}

/// Intel ships the plugin for x86_64 only (`scripts/setup.sh` fetches it there).
#[cfg(target_arch = "x86_64")]
#[test]
fn openvino_runs_the_model_as_the_cpu_does() {
    let plugin = lpmesh_node::config::default_openvino_plugin_path();
    assert!(
        plugin.is_file(),
        "{} missing: run scripts/setup.sh (it runs `python3 models/build.py openvino` on x86_64)",
        plugin.display()
    );
    let f = &frames(&[100])[0];
    let mut cpu = detector(&NodeConfig::default());
    let want = people(&mut cpu, f, 0.35);
    assert!(want.len() >= 3, "the CPU finds the people of frame 100");
    // OpenVINO on this machine's CPU in f32: the same people, the same boxes.
    let mut ov = detector(&openvino("precision = \"f32\""));
    assert_eq!(ov.providers(), ["openvino", "cpu"]);
    let got = people(&mut ov, f, 0.35);
    assert_eq!(
        got.len(),
        want.len(),
        "OpenVINO finds the same people: {got:?} vs {want:?}"
    );
    for (g, w) in got.iter().zip(&want) {
        let d = [
            g.bbox.x1 - w.bbox.x1,
            g.bbox.y1 - w.bbox.y1,
            g.bbox.x2 - w.bbox.x2,
            g.bbox.y2 - w.bbox.y2,
        ];
        assert!(d.iter().all(|d| d.abs() < 1.0), "boxes within a pixel: {g:?} vs {w:?}");
        assert!((g.score - w.score).abs() < 0.01, "scores agree: {g:?} vs {w:?}");
    }
    // OpenVINO's own choice of precision (bf16 on a CPU with AMX) finds the same people, give or take
    // one near the threshold.
    let mut auto = detector(&openvino(""));
    assert_eq!(auto.providers(), ["openvino", "cpu"]);
    assert!(people(&mut auto, f, 0.35).len().abs_diff(want.len()) <= 1);
    // A property the device refuses: the session is built again without OpenVINO.
    let mut refused = detector(&openvino("settings = { LPMESH_NO_SUCH_PROPERTY = \"1\" }"));
    assert_eq!(refused.providers(), ["cpu"]);
    assert_eq!(people(&mut refused, f, 0.35).len(), want.len());
}

#[test]
fn without_openvino_the_cpu_takes_over() {
    let f = &frames(&[100])[0];
    let want = people(&mut detector(&NodeConfig::default()), f, 0.35).len();
    // Each way OpenVINO can be missing, the CPU runs the model instead (and the log says why).
    for (why, settings) in [
        (
            "no plugin there",
            "plugin = \"/nonexistent/libonnxruntime_providers_openvino_plugin.so\"".to_string(),
        ),
        (
            "a library that is no plugin",
            format!(
                "plugin = {:?}",
                lpmesh_node::config::default_onnxruntime_path().display().to_string()
            ),
        ),
        // No GPU plugin is installed, so no GPU device is offered, whatever the machine has.
        ("no such device here", "device = \"GPU\"".to_string()),
    ] {
        let mut fallen = detector(&openvino(&settings));
        assert_eq!(fallen.providers(), ["cpu"], "{why}");
        assert_eq!(people(&mut fallen, f, 0.35).len(), want, "{why}: the CPU still detects");
    }
}

#[test]
fn a_wrong_input_size_is_an_error_not_a_crash() {
    let mut det = detector(&NodeConfig::default());
    let err = det.detect(&[0.0; 10], 768, 576, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("10 values"), "{err}");
}

fn minor_faults() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    u.ru_minflt
}

/// ort's default CPU provider switches ONNX Runtime's arena off; each inference then got a fresh
/// ~17 MB block from the kernel (4,000 page faults, a third of a demo node's CPU). With the arena the
/// activations are reused from one inference to the next.
#[test]
fn repeated_inferences_reuse_their_memory() {
    // The lpmesh binary's allocator setting: large blocks are mappings given back on free, so a block
    // ONNX Runtime does not keep is faulted in afresh every time.
    lpmesh_node::ops::tune_allocator();
    let cfg = NodeConfig::default();
    assert_eq!(
        cfg.runtime.execution_providers,
        ["cpu"],
        "the default is the named CPU provider"
    );
    let mut det = detector(&cfg);
    let fs = frames(&[100, 101, 102, 103]);
    for f in &fs {
        people(&mut det, f, 0.5);
    }
    let runs = 20;
    let before = minor_faults();
    for i in 0..runs {
        people(&mut det, &fs[i % fs.len()], 0.5);
    }
    let per_run = (minor_faults() - before) / runs as i64;
    assert!(
        per_run < 200,
        "{per_run} page faults per inference: memory is not reused"
    );
}

/// The feet (bottom centre) of a box, as fractions of the frame.
fn feet(p: &TrackedPerson, w: u32, h: u32) -> [f32; 2] {
    [(p.bbox.x1 + p.bbox.x2) / 2.0 / w as f32, p.bbox.y2 / h as f32]
}

fn square(c: [f32; 2], r: f32) -> String {
    let (x1, y1) = ((c[0] - r).max(0.0), (c[1] - r).max(0.0));
    let (x2, y2) = ((c[0] + r).min(1.0), (c[1] + r).min(1.0));
    format!("[[{x1:.4}, {y1:.4}], [{x2:.4}, {y1:.4}], [{x2:.4}, {y2:.4}], [{x1:.4}, {y2:.4}]]")
}

#[test]
fn a_person_missed_for_a_second_keeps_their_journey_and_their_dwell() {
    // 25 s of real footage. The first pass, without rules, finds a person who walks a long way; the
    // zones are then drawn on that person's own path: a shelf early on, an exit late, and the whole path
    // as a zone where staying longer than either half of the walk counts as loitering.
    let cfg = NodeConfig::default();
    let mut all = frames(&(1..=250).collect::<Vec<_>>());
    for f in &mut all {
        f.decision = Decision::Infer;
    }
    let mut analyzer = Analyzer::new(Box::new(detector(&cfg)), cfg.tracker_config());
    let mut paths: BTreeMap<u64, Vec<(usize, [f32; 2])>> = BTreeMap::new();
    for (i, f) in all.iter().enumerate() {
        let r = analyzer.process(f).expect("analyse");
        for p in r.people.iter().filter(|p| p.visible) {
            paths.entry(p.id).or_default().push((i, feet(p, r.width, r.height)));
        }
    }
    let span = |path: &[(usize, [f32; 2])]| {
        let xs = path.iter().map(|(_, f)| f[0]);
        xs.clone().fold(f32::MIN, f32::max) - xs.fold(f32::MAX, f32::min)
    };
    let (&id, path) = paths
        .iter()
        .filter(|(_, p)| p.len() >= 80 && span(p) >= 0.25)
        .max_by_key(|(_, p)| p.len())
        .expect("a person walking across the plaza for 8 s or more");
    let (first, last) = (path[0].0, path[path.len() - 1].0);
    let at = |frac: f64| path[((path.len() - 1) as f64 * frac) as usize];
    // One second (10 frames) in the middle of the walk is removed from the footage.
    let gap_start = at(0.5).0;
    let gap = gap_start..gap_start + 10;
    let before = (gap.start - first) as f64 / 10.0;
    let after = (last - gap.end) as f64 / 10.0;
    let loiter_secs = before.max(after) + 1.0;
    let (shelf, exit) = (at(0.15).1, at(0.9).1);
    let pts: Vec<[f32; 2]> = path.iter().map(|(_, f)| *f).collect();
    let lo = |k: usize| (pts.iter().map(|p| p[k]).fold(f32::MAX, f32::min) - 0.05).max(0.0);
    let hi = |k: usize| (pts.iter().map(|p| p[k]).fold(f32::MIN, f32::max) + 0.05).min(1.0);
    let (ax1, ay1, ax2, ay2) = (lo(0), lo(1), hi(0), hi(1));
    let toml = format!(
        "store = \"s\"\nnode = \"n\"\n[[camera]]\nname = \"plaza\"\nsource = \"cache:data/vtest.avi\"\n\
         [[camera.zone]]\nname = \"shelf\"\nkind = \"shelf\"\npolygon = {}\n\
         [[camera.zone]]\nname = \"exit\"\nkind = \"exit\"\npolygon = {}\n\
         [[camera.zone]]\nname = \"aisle\"\nkind = \"general\"\n\
         polygon = [[{ax1:.4}, {ay1:.4}], [{ax2:.4}, {ay1:.4}], [{ax2:.4}, {ay2:.4}], [{ax1:.4}, {ay2:.4}]]\n\
         [[camera.rule]]\nkind = \"loitering\"\nzone = \"aisle\"\nsecs = {loiter_secs:.1}\n",
        square(shelf, 0.04),
        square(exit, 0.04),
    );
    let rules_cfg = NodeConfig::parse(&toml, std::path::Path::new("gap.toml")).expect("config");
    let spec = rules_cfg
        .camera_spec(&rules_cfg.cameras[0], "nanodet-m-416")
        .expect("camera spec");
    eprintln!(
        "person {id}: frames {first}..={last}, gap {gap:?}, {before:.1} s before and {after:.1} s after, \
         loitering after {loiter_secs:.1} s\n{toml}"
    );

    // The second pass sees the footage without that second (stream time jumps by a second, as when
    // everyone in view is hidden), with the rules.
    let mut analyzer = Analyzer::new(Box::new(detector(&cfg)), cfg.tracker_config())
        .with_rules(CameraRules::new(spec), 1_781_092_800_000);
    let mut events = Vec::new();
    let (mut id_before, mut id_after) = (None, None);
    for (i, f) in all.iter().enumerate().filter(|(i, _)| !gap.contains(i)) {
        let r = analyzer.process(f).expect("analyse");
        events.extend(r.events.iter().cloned());
        let near = |target: [f32; 2]| {
            r.people
                .iter()
                .filter(|p| p.visible)
                .map(|p| (p.id, feet(p, r.width, r.height)))
                .filter(|(_, f)| (f[0] - target[0]).hypot(f[1] - target[1]) < 0.03)
                .map(|(id, _)| id)
                .next()
        };
        let original = path.iter().find(|(j, _)| *j == i).map(|(_, f)| *f);
        if let (Some(target), true) = (original, i < gap.start) {
            id_before = near(target).or(id_before);
        }
        if let (Some(target), None, true) = (original, id_after, i >= gap.end) {
            id_after = near(target);
        }
    }
    let id_before = id_before.expect("the person is tracked before the gap");
    assert_eq!(id_after, Some(id_before), "the same id after a second unseen");
    let kinds = |kind: EventKind| {
        events
            .iter()
            .filter(|e| e.kind == kind && e.track == Some(id_before))
            .collect::<Vec<_>>()
    };
    let exits = kinds(EventKind::ExitWithoutCheckout);
    assert_eq!(
        exits.len(),
        1,
        "shelf before the gap, exit after it: one journey {events:#?}"
    );
    let loiter = kinds(EventKind::Loitering);
    let start = loiter
        .iter()
        .find(|e| e.phase == Phase::Start)
        .unwrap_or_else(|| panic!("dwell carried across the gap: {events:#?}"));
    assert_eq!(start.zone.as_deref(), Some("aisle"));
    // The dwell began before the gap, so only a stay spanning it could reach the limit.
    let gap_ms = 1_781_092_800_000 + (gap.start as f64 * 100.0) as i64;
    assert!(start.started_at_ms < gap_ms, "{start:#?}");
    // The dwell travels as an f32: 13.2 s comes back as 13.1999998.
    let dwell = start.detail.dwell_secs.unwrap() as f64;
    assert!(dwell >= loiter_secs - 1e-3, "dwell {dwell} s, limit {loiter_secs} s");
}

#[test]
fn a_camera_that_changes_its_frame_size_ends_its_tracks_and_starts_new_ones() {
    // 8 s of real footage; from the 5th second on the camera (reconfigured) delivers pictures at half the
    // size. The detector's tensor holds the same view of the scene at either size; its boxes come back in
    // the coordinates of the picture it was given.
    let cfg = NodeConfig::default();
    let mut all = frames(&(1..=80).collect::<Vec<_>>());
    let switch = 50;
    for (i, f) in all.iter_mut().enumerate() {
        f.decision = Decision::Infer;
        if i >= switch {
            (f.width, f.height) = (f.width / 2, f.height / 2);
        }
    }
    let (w2, h2) = (all[switch].width as f32, all[switch].height as f32);
    let toml = "store = \"s\"\nnode = \"n\"\n[[camera]]\nname = \"plaza\"\nsource = \"cache:data/vtest.avi\"\n\
                [[camera.zone]]\nname = \"all\"\nkind = \"restricted\"\n\
                polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]\n";
    let rules_cfg = NodeConfig::parse(toml, std::path::Path::new("resize.toml")).expect("config");
    let spec = rules_cfg
        .camera_spec(&rules_cfg.cameras[0], "nanodet-m-416")
        .expect("camera spec");
    let clock = 1_781_092_800_000;
    let mut analyzer =
        Analyzer::new(Box::new(detector(&cfg)), cfg.tracker_config()).with_rules(CameraRules::new(spec), clock);
    let (mut old_ids, mut new_ids) = (BTreeSet::new(), BTreeSet::new());
    let mut events = Vec::new();
    for (i, f) in all.iter().enumerate() {
        let r = analyzer.process(f).expect("analyse");
        events.extend(r.events.iter().cloned().map(|e| (i, e)));
        if i < switch {
            old_ids.extend(r.people.iter().map(|p| p.id));
            continue;
        }
        if i == switch {
            let ended: BTreeSet<u64> = r.ended.iter().map(|p| p.id).collect();
            assert!(
                ended.len() >= 3 && ended.is_subset(&old_ids),
                "the people in view when the size changed end: {ended:?}"
            );
            assert!(r.people.is_empty(), "nothing carried into the new size: {:?}", r.people);
            assert_eq!(r.counts.resized, 1);
        }
        for p in r.people {
            assert!(!old_ids.contains(&p.id), "an old id at the new size: {p:?}");
            let b = p.bbox;
            assert!(
                b.x1 >= -0.5 && b.y1 >= -0.5 && b.x2 <= w2 + 0.5 && b.y2 <= h2 + 0.5,
                "a box outside the {w2}x{h2} picture: {p:?}"
            );
            new_ids.insert(p.id);
        }
    }
    assert!(new_ids.len() >= 3, "new tracks at the new size: {new_ids:?}");
    // Every incident of an old track ended at the change; every box in an event is inside its picture.
    let switch_ms = clock + (switch as f64 * 100.0) as i64;
    for (_, e) in &events {
        if let Some(b) = e.bbox {
            assert!(b.iter().all(|v| (-0.001..=1.001).contains(v)), "{e:#?}");
        }
    }
    for id in &old_ids {
        let of = |phase: Phase| {
            events
                .iter()
                .filter(|(_, e)| e.track == Some(*id) && e.kind == EventKind::RestrictedEntry && e.phase == phase)
                .count()
        };
        assert_eq!(of(Phase::Start), of(Phase::End), "track {id}: {events:#?}");
    }
    let ended_at_switch = events
        .iter()
        .filter(|(_, e)| e.phase == Phase::End && e.at_ms == switch_ms)
        .count();
    assert!(
        ended_at_switch >= 3,
        "{ended_at_switch} incidents ended at the size change"
    );
}
