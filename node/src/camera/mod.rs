//! Putting one camera together from the configuration: source, preparer with pixel measures,
//! detector, tracker and rules.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::capture::OpenCvCapture;
use crate::config::{cache_dir, CameraConfig, NodeConfig};
use crate::detect::onnx::{ModelError, OnnxDetector, OnnxOptions};
use crate::detect::Detector;
use crate::measure::{LearnGate, PixelMeter};
use crate::pipeline::Analyzer;
use crate::rules::{CameraRules, ZoneKind};
use crate::source::opencv::OpenCvOptions;
use crate::source::SourceError;

pub mod supervisor;

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("camera {camera}: {source}")]
    Config {
        camera: String,
        #[source]
        source: crate::rules::SpecError,
    },
    #[error(transparent)]
    Pipeline(Box<crate::pipeline::PipelineError>),
}

/// A source as written in the configuration: `cache:PATH` is a path inside the lpmesh cache (the demo
/// footage that `scripts/setup.sh` installs); anything else is used as it is.
pub fn resolve_source(source: &str) -> String {
    match source.strip_prefix("cache:") {
        Some(rest) => cache_dir().join(rest).to_string_lossy().into_owned(),
        None => source.to_string(),
    }
}

/// The detector for this node: decodes down to the lowest threshold any camera or the tracker uses.
pub fn load_detector(cfg: &NodeConfig, model: &std::path::Path) -> Result<OnnxDetector, ModelError> {
    let lowest_camera = cfg
        .cameras
        .iter()
        .filter_map(|c| c.score_threshold)
        .fold(f32::INFINITY, f32::min);
    let opts = OnnxOptions {
        score_threshold: cfg.decode_threshold().min(lowest_camera),
        nms_iou: cfg.detector.nms_iou,
        fit: cfg.detector.fit,
    };
    OnnxDetector::load(model, &cfg.runtime, &opts)
}

/// Opens `input` and builds the analysis for it. With `cam`, its zones, lines and rules apply and
/// events are produced, with stream time 0 at `clock_start_ms` (Unix ms).
pub fn open_camera(
    cfg: &NodeConfig,
    cam: Option<&CameraConfig>,
    input: &str,
    opts: OpenCvOptions,
    detector: Box<dyn Detector>,
    clock_start_ms: i64,
    stop: Arc<AtomicBool>,
) -> Result<(OpenCvCapture, Analyzer), CameraError> {
    let mut capture = OpenCvCapture::open(input, opts, detector.input_spec().clone(), cfg.motion.clone(), stop)?;
    let mut tracker = cfg.tracker_config();
    let Some(cam) = cam else {
        return Ok((capture, Analyzer::new(detector, tracker)));
    };
    if let Some(t) = cam.score_threshold {
        tracker.high_score = t;
    }
    let spec = cfg
        .camera_spec(cam, detector.model_version())
        .map_err(|source| CameraError::Config {
            camera: cam.name.clone(),
            source,
        })?;
    let r = &cfg.rules;
    let gate = LearnGate {
        dark_brightness: r.tamper_dark_brightness,
        min_contrast: r.tamper_min_contrast,
        blur_ratio: r.tamper_blur_ratio,
        min_similarity: r.tamper_min_similarity,
    };
    let zones: Vec<_> = spec
        .zones
        .iter()
        .map(|z| (z.polygon.clone(), z.kind == ZoneKind::Shelf))
        .collect();
    capture = capture
        .with_meter(PixelMeter::new(&zones, gate))
        .with_detect_fps(cam.detect_fps);
    let analyzer = Analyzer::new(detector, tracker).with_rules(CameraRules::new(spec), clock_start_ms);
    Ok((capture, analyzer))
}
