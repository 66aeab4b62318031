//! The capture side of a camera pipeline with OpenCV: decode, resize to the detector's input,
//! normalise, the motion thumbnail and the pixel measures. The full-size frame stays here.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use opencv::core::{Mat, MatTraitConst, MatTraitConstManual, Size};
use opencv::imgproc;

use crate::detect::preprocess::Normalizer;
use crate::detect::InputSpec;
use crate::measure::{PixelMeter, DETAIL_SIZE};
use crate::motion::{Gate, MotionConfig, MotionGate, THUMB_HEIGHT, THUMB_WIDTH};
use crate::pipeline::{Capture, PreparedFrame};
use crate::rules::PixelMeasures;
use crate::source::opencv::{OpenCvOptions, OpenCvSource, SourceKind};
use crate::source::{Frame, FrameSource, SourceError};

/// Resizing, normalising, the motion gate and the pixel measures, with buffers reused frame to frame.
pub struct Preparer {
    spec: InputSpec,
    normalizer: Normalizer,
    resized: Mat,
    gray: Mat,
    thumb: Mat,
    detail: Mat,
    gate: MotionGate,
    meter: Option<PixelMeter>,
}

/// Why [`Preparer::prepare`] could not prepare a frame.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    OpenCv(opencv::Error),
    #[error("resized frame has an unexpected size")]
    Size,
}

/// Why [`OpenCvCapture`] gave no frame.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
}

/// What [`Preparer::prepare`] found besides the tensor.
pub struct Prepared {
    pub gate: Gate,
    pub pixels: Option<PixelMeasures>,
    /// Time spent on the pixel measures (part of the preparation time).
    pub measure: std::time::Duration,
}

impl Preparer {
    pub fn new(spec: InputSpec, motion: MotionConfig, meter: Option<PixelMeter>) -> Self {
        Self {
            normalizer: Normalizer::new(&spec),
            spec,
            resized: Mat::default(),
            gray: Mat::default(),
            thumb: Mat::default(),
            detail: Mat::default(),
            gate: MotionGate::new(motion),
            meter,
        }
    }

    pub fn gate(&self) -> &MotionGate {
        &self.gate
    }

    /// Fills `tensor` from `frame`, decides whether the frame needs inference, and measures it.
    pub fn prepare(&mut self, frame: &Frame, tensor: &mut Vec<f32>) -> Result<Prepared, PrepareError> {
        let cv = PrepareError::OpenCv;
        let rows = frame.height as i32;
        let flat = Mat::new_rows_cols_with_data(rows, frame.width as i32 * 3, &frame.bgr).map_err(cv)?;
        let img = flat.reshape(3, rows).map_err(cv)?;
        let at = self.spec.placement(frame.width, frame.height);
        let size = Size::new(at.width as i32, at.height as i32);
        imgproc::resize(&img, &mut self.resized, size, 0.0, 0.0, imgproc::INTER_LINEAR).map_err(cv)?;
        tensor.resize(self.spec.tensor_len(), 0.0);
        if !self
            .normalizer
            .fill(self.resized.data_bytes().map_err(cv)?, &at, tensor)
        {
            return Err(PrepareError::Size);
        }
        // The small grey images come from the frame as resized for the model (without the grey around
        // it): cheaper than from the frame.
        imgproc::cvt_color_def(&self.resized, &mut self.gray, imgproc::COLOR_BGR2GRAY).map_err(cv)?;
        let thumb_size = Size::new(THUMB_WIDTH as i32, THUMB_HEIGHT as i32);
        imgproc::resize(&self.gray, &mut self.thumb, thumb_size, 0.0, 0.0, imgproc::INTER_AREA).map_err(cv)?;
        let gate = self.gate.decide(self.thumb.data_bytes().map_err(cv)?, frame.pts);
        let t0 = Instant::now();
        let pixels = match self.meter.as_mut() {
            Some(meter) => {
                let d = DETAIL_SIZE as i32;
                imgproc::resize(
                    &self.gray,
                    &mut self.detail,
                    Size::new(d, d),
                    0.0,
                    0.0,
                    imgproc::INTER_AREA,
                )
                .map_err(cv)?;
                Some(meter.measure(
                    self.thumb.data_bytes().map_err(cv)?,
                    self.detail.data_bytes().map_err(cv)?,
                ))
            }
            None => None,
        };
        Ok(Prepared {
            gate,
            pixels,
            measure: t0.elapsed(),
        })
    }
}

/// An OpenCV source and its preparer, as the producing half of [`crate::pipeline::run`].
pub struct OpenCvCapture {
    source: OpenCvSource,
    preparer: Preparer,
    bgr: Vec<u8>,
    /// Analyse at most this many frames per second (the rest are decoded and dropped here).
    detect_interval: Option<f64>,
    next_due: f64,
    /// Where this camera leaves a recent still for the zone editor (only on this node, in memory).
    still: Option<(
        std::sync::Arc<crate::zone_control::ZoneControl>,
        String,
        Option<Instant>,
    )>,
    /// Where this camera keeps its recent frames for evidence (only on this node, in memory).
    ring: Option<RingFeed>,
}

struct RingFeed {
    ring: Arc<crate::evidence::ring::Ring>,
    interval: f64,
    max_width: u32,
    next_due: f64,
    failed: bool,
    /// Heads are hidden in the zone editor's still too (from the people the ring knows of).
    hide_faces: bool,
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
            preparer: Preparer::new(spec, motion, None),
            bgr: Vec::new(),
            detect_interval: None,
            next_due: 0.0,
            still: None,
            ring: None,
        })
    }

    /// Measures pixels for the rules (tamper, shelf change).
    pub fn with_meter(mut self, meter: PixelMeter) -> Self {
        self.preparer.meter = Some(meter);
        self
    }

    /// Analyses at most `fps` frames per second.
    pub fn with_detect_fps(mut self, fps: f64) -> Self {
        // A little slack so a 10 fps file is not decimated by rounding at detect_fps = 10.
        self.detect_interval = (fps > 0.0).then(|| 0.98 / fps);
        self
    }

    pub fn source(&self) -> &OpenCvSource {
        &self.source
    }

    /// Reads and prepares one frame outside a pipeline (the benchmark's pre-made inputs, tests).
    pub fn next_prepared(&mut self) -> Result<Option<PreparedFrame>, CaptureError> {
        self.next(Vec::new())
    }
}

impl OpenCvCapture {
    /// Keeps a still of this camera for the zone editor, refreshed every few seconds.
    pub fn with_still(mut self, zones: std::sync::Arc<crate::zone_control::ZoneControl>, camera: &str) -> Self {
        self.still = Some((zones, camera.to_string(), None));
        self
    }

    /// Keeps this camera's recent frames (at most `fps` a second, at most `max_width` wide) in `ring`;
    /// with `hide_faces`, the zone editor's still hides people's heads as evidence does.
    pub fn with_ring(
        mut self,
        ring: Arc<crate::evidence::ring::Ring>,
        fps: f64,
        max_width: u32,
        hide_faces: bool,
    ) -> Self {
        self.ring = Some(RingFeed {
            ring,
            interval: 0.98 / fps.max(0.1),
            max_width,
            next_due: 0.0,
            failed: false,
            hide_faces,
        });
        self
    }

    fn keep_in_ring(&mut self, frame: &Frame) {
        let Some(feed) = &mut self.ring else {
            return;
        };
        // A stream that started again begins its own schedule.
        if frame.pts < feed.next_due - 2.0 * feed.interval {
            feed.next_due = 0.0;
        }
        if frame.pts < feed.next_due {
            return;
        }
        feed.next_due = frame.pts + feed.interval;
        match crate::evidence::clip::ring_jpeg(&frame.bgr, frame.width, frame.height, feed.max_width) {
            Ok((jpeg, width, height)) => feed.ring.push_frame(crate::evidence::ring::RingFrame {
                pts: frame.pts,
                at_ms: chrono::Utc::now().timestamp_millis(),
                width,
                height,
                jpeg: jpeg.into(),
            }),
            Err(e) if !feed.failed => {
                feed.failed = true;
                tracing::error!(error = %e, "cannot keep frames for evidence");
            }
            Err(_) => {}
        }
    }

    fn keep_still(&mut self, frame: &Frame) {
        let due = match &self.still {
            Some((_, _, last)) => {
                !last.is_some_and(|t| t.elapsed().as_secs_f64() < crate::zone_control::STILL_EVERY_SECS)
            }
            None => false,
        };
        if !due {
            return;
        }
        // Where people are now, to hide their heads; with nobody analysed near this frame yet, the
        // still waits for a later frame rather than showing a face.
        let people = match &self.ring {
            Some(f) if f.hide_faces => match f.ring.people_near(frame.pts, crate::evidence::clip::NEAR_SECS) {
                Some(p) => Some(p),
                None => return,
            },
            _ => None,
        };
        let Some((zones, camera, last)) = &mut self.still else {
            return;
        };
        *last = Some(Instant::now());
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(mut s) = crate::zone_control::Still::downscale(&frame.bgr, frame.width, frame.height, now) {
            if let Some(p) = &people {
                if crate::evidence::clip::hide_heads_bgr(&mut s.bgr, s.width, s.height, p).is_err() {
                    return;
                }
            }
            zones.set_still(camera, s);
        }
    }
}

impl Capture for OpenCvCapture {
    type Error = CaptureError;

    fn next(&mut self, mut tensor: Vec<f32>) -> Result<Option<PreparedFrame>, CaptureError> {
        loop {
            let t0 = Instant::now();
            let frame = match self.source.next_frame(std::mem::take(&mut self.bgr)) {
                Ok(Some(f)) => {
                    self.keep_still(&f);
                    self.keep_in_ring(&f);
                    f
                }
                Ok(None) | Err(SourceError::Stopped) => return Ok(None),
                Err(SourceError::Unavailable { .. }) => {
                    return Ok(Some(PreparedFrame::offline(self.source.clock(), tensor)))
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(interval) = self.detect_interval {
                if frame.pts < self.next_due {
                    self.bgr = frame.bgr;
                    continue;
                }
                self.next_due = frame.pts + interval;
            }
            let t1 = Instant::now();
            let prepared = self.preparer.prepare(&frame, &mut tensor)?;
            let preprocess = t1.elapsed().saturating_sub(prepared.measure);
            let Frame {
                seq,
                pts,
                width,
                height,
                bgr,
            } = frame;
            self.bgr = bgr;
            return Ok(Some(PreparedFrame {
                seq,
                pts,
                width,
                height,
                tensor,
                decision: prepared.gate.decision,
                still: prepared.gate.still,
                online: true,
                pixels: prepared.pixels,
                decode: t1 - t0,
                preprocess,
                measure: prepared.measure,
            }));
        }
    }
}
