//! The capture side of a camera pipeline with OpenCV: decode, resize to the detector's input,
//! normalise, and compute the motion thumbnail. The full-size frame stays here.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use opencv::core::{Mat, MatTraitConst, MatTraitConstManual, Size};
use opencv::imgproc;

use crate::detect::preprocess::Normalizer;
use crate::detect::InputSpec;
use crate::motion::{Gate, MotionConfig, MotionGate, THUMB_HEIGHT, THUMB_WIDTH};
use crate::pipeline::{Capture, PreparedFrame};
use crate::source::opencv::{OpenCvOptions, OpenCvSource, SourceKind};
use crate::source::{Frame, FrameSource, SourceError};

/// Resizing, normalising and the motion measure, with buffers reused from frame to frame.
pub struct Preparer {
    spec: InputSpec,
    normalizer: Normalizer,
    resized: Mat,
    small: Mat,
    gray: Mat,
    gate: MotionGate,
}

impl Preparer {
    pub fn new(spec: InputSpec, motion: MotionConfig) -> Self {
        Self {
            normalizer: Normalizer::new(&spec),
            spec,
            resized: Mat::default(),
            small: Mat::default(),
            gray: Mat::default(),
            gate: MotionGate::new(motion),
        }
    }

    pub fn gate(&self) -> &MotionGate {
        &self.gate
    }

    /// Fills `tensor` from `frame` and decides whether the frame needs inference.
    pub fn prepare(&mut self, frame: &Frame, tensor: &mut Vec<f32>) -> Result<Gate, String> {
        let cv = |e: opencv::Error| e.message;
        let rows = frame.height as i32;
        let flat =
            Mat::new_rows_cols_with_data(rows, frame.width as i32 * 3, &frame.bgr).map_err(cv)?;
        let img = flat.reshape(3, rows).map_err(cv)?;
        let size = Size::new(self.spec.width as i32, self.spec.height as i32);
        imgproc::resize(
            &img,
            &mut self.resized,
            size,
            0.0,
            0.0,
            imgproc::INTER_LINEAR,
        )
        .map_err(cv)?;
        tensor.resize(self.spec.tensor_len(), 0.0);
        if !self
            .normalizer
            .fill(self.resized.data_bytes().map_err(cv)?, tensor)
        {
            return Err("resized frame has an unexpected size".into());
        }
        // The thumbnail comes from the already small model input: cheaper than from the full frame.
        let thumb = Size::new(THUMB_WIDTH as i32, THUMB_HEIGHT as i32);
        imgproc::resize(
            &self.resized,
            &mut self.small,
            thumb,
            0.0,
            0.0,
            imgproc::INTER_AREA,
        )
        .map_err(cv)?;
        imgproc::cvt_color_def(&self.small, &mut self.gray, imgproc::COLOR_BGR2GRAY).map_err(cv)?;
        let thumb = self.gray.data_bytes().map_err(cv)?;
        Ok(self.gate.decide(thumb, frame.pts))
    }
}

/// An OpenCV source and its preparer, as the producing half of [`crate::pipeline::run`].
pub struct OpenCvCapture {
    source: OpenCvSource,
    preparer: Preparer,
    bgr: Vec<u8>,
}

impl OpenCvCapture {
    pub fn open(
        input: &str,
        opts: OpenCvOptions,
        spec: InputSpec,
        motion: MotionConfig,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        let source = OpenCvSource::open(SourceKind::parse(input), opts, stop)?;
        Ok(Self {
            source,
            preparer: Preparer::new(spec, motion),
            bgr: Vec::new(),
        })
    }

    pub fn source(&self) -> &OpenCvSource {
        &self.source
    }

    /// Reads and prepares one frame outside a pipeline (the benchmark's pre-made inputs).
    pub fn next_prepared(&mut self) -> Result<Option<PreparedFrame>, String> {
        self.next(Vec::new())
    }
}

impl Capture for OpenCvCapture {
    fn next(&mut self, mut tensor: Vec<f32>) -> Result<Option<PreparedFrame>, String> {
        let t0 = Instant::now();
        let frame = match self.source.next_frame(std::mem::take(&mut self.bgr)) {
            Ok(Some(f)) => f,
            Ok(None) | Err(SourceError::Stopped) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let t1 = Instant::now();
        let gate = self.preparer.prepare(&frame, &mut tensor)?;
        let preprocess = t1.elapsed();
        let Frame {
            seq,
            pts,
            width,
            height,
            bgr,
        } = frame;
        self.bgr = bgr;
        Ok(Some(PreparedFrame {
            seq,
            pts,
            width,
            height,
            tensor,
            decision: gate.decision,
            still: gate.still,
            decode: t1 - t0,
            preprocess,
        }))
    }
}
