//! `lpmesh bench pipeline`: the model alone versus the whole pipeline, on the same frames, in one run.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::camera::{load_detector, open_camera, CameraError};
use crate::capture::OpenCvCapture;
use crate::config::NodeConfig;
use crate::detect::Detector;
use crate::motion::MotionConfig;
use crate::pipeline::{peak_rss_mb, run, RunOptions, StagesMs};
use crate::source::opencv::OpenCvOptions;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub video: String,
    pub model: String,
    pub providers: Vec<String>,
    pub threads: usize,
    pub frames: u64,
    /// `session.run` alone on pre-made inputs.
    pub model_fps: f64,
    /// Decode, preprocess, infer, postprocess, NMS and track, with the motion gate off.
    pub pipeline_fps: f64,
    pub ratio: f64,
    /// Mean milliseconds per frame of each stage (decode and preprocess run on the capture thread,
    /// overlapping inference).
    pub stages_ms: StagesMs,
    /// Frames the motion gate would have skipped on the same frames, had it been on.
    pub motion_would_skip: u64,
    pub mean_people_per_frame: f64,
    /// Loss-prevention events raised (with a configuration that has a camera and zones).
    pub events: u64,
    pub track_ids: u64,
    pub peak_rss_mb: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] crate::detect::onnx::ModelError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Camera(#[from] CameraError),
    #[error(transparent)]
    Prepare(crate::capture::CaptureError),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("the video has no frames")]
    Empty,
}

/// Pre-made inputs for the model-alone figure: this many distinct frames, cycled.
const PREMADE: usize = 16;
const WARMUP_RUNS: usize = 10;

pub fn bench_pipeline(video: &Path, cfg: &NodeConfig, frames: u64, model: &Path) -> Result<BenchReport, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut detector = load_detector(cfg, model)?;
    let spec = detector.input_spec().clone();
    let providers = detector.providers().to_vec();
    let video_s = video.to_string_lossy().into_owned();

    // (a) The model alone, on inputs prepared beforehand.
    let mut cap = OpenCvCapture::open(
        &video_s,
        OpenCvOptions::default(),
        spec.clone(),
        MotionConfig::default(),
        stop.clone(),
    )?;
    let mut inputs = Vec::new();
    while inputs.len() < PREMADE {
        match cap.next_prepared().map_err(BenchError::Prepare)? {
            Some(f) => inputs.push(f.tensor),
            None => break,
        }
    }
    if inputs.is_empty() {
        return Err(BenchError::Empty);
    }
    for i in 0..WARMUP_RUNS {
        detector.run_model_only(&inputs[i % inputs.len()])?;
    }
    let t = Instant::now();
    for i in 0..frames as usize {
        detector.run_model_only(&inputs[i % inputs.len()])?;
    }
    let model_fps = frames as f64 / t.elapsed().as_secs_f64();
    drop(inputs);

    // (b) The whole pipeline on the same video from its first frame, gate measured but not applied.
    // The gate is measured but not applied; with the configuration's first camera, its pixel measures
    // and rules run too.
    let mut cfg = cfg.clone();
    cfg.motion.enabled = false;
    let cam = cfg.cameras.first().cloned();
    let (capture, mut analyzer) = open_camera(
        &cfg,
        cam.as_ref(),
        &video_s,
        OpenCvOptions::default(),
        Box::new(detector),
        chrono::Utc::now().timestamp_millis(),
        stop.clone(),
    )?;
    let mut people = 0u64;
    let opts = RunOptions {
        max_frames: Some(frames),
        live: false,
    };
    let stats = run(capture, &mut analyzer, &opts, &stop, |r| {
        people += r.people.iter().filter(|p| p.visible).count() as u64;
        Ok(true)
    })?;
    let pipeline_fps = stats.fps();
    Ok(BenchReport {
        video: video_s,
        model: model.display().to_string(),
        providers,
        threads: cfg.runtime.threads(),
        frames: stats.frames,
        model_fps,
        pipeline_fps,
        ratio: if model_fps > 0.0 { pipeline_fps / model_fps } else { 0.0 },
        stages_ms: stats.stages_ms(),
        motion_would_skip: stats.still,
        mean_people_per_frame: people as f64 / stats.frames.max(1) as f64,
        events: stats.events,
        track_ids: stats.ids_issued,
        peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
    })
}
