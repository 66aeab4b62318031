//! Person detection: the [`Detector`] trait, the model-independent pre/post-processing, and (with the
//! `vision` feature) the ONNX Runtime implementation.
//!
//! The split keeps everything that is arithmetic (normalising pixels, decoding NanoDet's heads, NMS) in
//! pure functions that are tested with hand-made tensors, and leaves only `session.run` behind the trait.

pub mod nanodet;
pub mod nms;
#[cfg(feature = "vision")]
pub mod onnx;
pub mod preprocess;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::geom::BBox;

/// One detected object in pixels of the original frame.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub bbox: BBox,
    pub score: f32,
    pub class: u16,
}

/// Channel order the model expects its input planes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Bgr,
    Rgb,
}

/// What a detector wants as input: a `width` x `height` image (stretched, not letterboxed), as planar
/// float32 NCHW with per-channel `(x - mean) / std` in the model's channel order.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub channel_order: ChannelOrder,
    /// Per channel, in the model's channel order.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputSpec {
    /// NanoDet-m 416 as produced by `models/build.py` (see `models/manifest.toml`).
    pub fn nanodet_m_416() -> Self {
        Self {
            width: 416,
            height: 416,
            channel_order: ChannelOrder::Bgr,
            mean: [103.53, 116.28, 123.675],
            std: [57.375, 57.12, 58.395],
        }
    }

    pub fn tensor_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }
}

/// Time spent inside one `detect` call, split so the benchmark can report the model apart from our code.
#[derive(Clone, Copy, Debug, Default)]
pub struct DetectTimings {
    pub infer: Duration,
    pub postprocess: Duration,
}

/// Any error, kept as the source of ours: its own message and its causes stay readable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("input tensor has {got} values, the model wants {want}")]
    InputSize { got: usize, want: usize },
    #[error("inference failed: {0}")]
    Inference(#[source] BoxError),
    #[error("model output is not what the decoder expects: {0}")]
    Output(#[source] BoxError),
}

/// A person detector. Implementations own their model session; the caller owns the buffers.
pub trait Detector: Send {
    fn input_spec(&self) -> &InputSpec;

    /// Runs the model on `input` (laid out as [`InputSpec`] says) and appends to `out` the people found,
    /// in pixels of a `frame_width` x `frame_height` frame.
    fn detect(
        &mut self,
        input: &[f32],
        frame_width: u32,
        frame_height: u32,
        out: &mut Vec<Detection>,
    ) -> Result<DetectTimings, DetectError>;

    /// Runs only the model, for the benchmark's "model alone" figure.
    fn run_model_only(&mut self, input: &[f32]) -> Result<(), DetectError>;

    /// Names the model and its version, for records and logs.
    fn model_version(&self) -> &str;
}
