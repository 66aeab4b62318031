//! The real NanoDet model through the real ONNX Runtime on real frames of vtest.avi.
//!
//! These need what `scripts/setup.sh` installs into the cache (the test command runs it first); when it
//! is missing they fail with a message that says so, rather than pass vacuously.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lpmesh_node::capture::OpenCvCapture;
use lpmesh_node::config::{default_footage_path, default_model_path, NodeConfig};
use lpmesh_node::detect::onnx::{OnnxDetector, OnnxOptions};
use lpmesh_node::detect::{Detection, Detector, InputSpec};
use lpmesh_node::motion::MotionConfig;
use lpmesh_node::pipeline::{run, Analyzer, PreparedFrame, RunOptions};
use lpmesh_node::source::opencv::OpenCvOptions;

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
