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

/// How a frame is fitted into the model's input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scaled by one factor, centred, the rest of the input a neutral grey (the model's mean colour):
    /// people keep their proportions, as in the photographs the detector learnt from.
    #[default]
    Letterbox,
    /// Scaled to fill the input, each axis by its own factor: a 4:3 camera's people come out 25 %
    /// thinner, a 16:9 camera's 44 %.
    Stretch,
}

/// What a detector wants as input: a `width` x `height` image with the frame fitted into it as `fit`
/// says, as planar float32 NCHW with per-channel `(x - mean) / std` in the model's channel order.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
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
            fit: Fit::default(),
            channel_order: ChannelOrder::Bgr,
            mean: [103.53, 116.28, 123.675],
            std: [57.375, 57.12, 58.395],
        }
    }

    pub fn tensor_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    /// Where a `frame_w` x `frame_h` frame lies in this input.
    pub fn placement(&self, frame_w: u32, frame_h: u32) -> Placement {
        let (iw, ih) = (self.width.max(1), self.height.max(1));
        let (fw, fh) = (frame_w.max(1), frame_h.max(1));
        let (w, h) = match self.fit {
            Fit::Stretch => (iw, ih),
            Fit::Letterbox => {
                let k = (iw as f64 / fw as f64).min(ih as f64 / fh as f64);
                let side = |v: u32, max: u32| ((v as f64 * k).round() as u32).clamp(1, max);
                (side(fw, iw), side(fh, ih))
            }
        };
        Placement {
            x: (iw - w) / 2,
            y: (ih - h) / 2,
            width: w,
            height: h,
            scale_x: w as f32 / fw as f32,
            scale_y: h as f32 / fh as f32,
        }
    }
}

/// Where a frame lies in the model's input: scaled by `scale_x`, `scale_y` into the `width` x `height`
/// rectangle whose top-left corner is (`x`, `y`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub scale_x: f32,
    pub scale_y: f32,
}

impl Placement {
    /// A box in frame pixels, in input pixels.
    pub fn to_input(&self, b: &BBox) -> BBox {
        let (ox, oy) = (self.x as f32, self.y as f32);
        BBox::new(
            b.x1 * self.scale_x + ox,
            b.y1 * self.scale_y + oy,
            b.x2 * self.scale_x + ox,
            b.y2 * self.scale_y + oy,
        )
    }

    /// A box in input pixels, cut to the frame's part of the input, in frame pixels.
    pub fn to_frame(&self, b: &BBox) -> BBox {
        let (ox, oy) = (self.x as f32, self.y as f32);
        let x = |v: f32| (v.clamp(ox, ox + self.width as f32) - ox) / self.scale_x;
        let y = |v: f32| (v.clamp(oy, oy + self.height as f32) - oy) / self.scale_y;
        BBox::new(x(b.x1), y(b.y1), x(b.x2), y(b.y2))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fit: Fit) -> InputSpec {
        InputSpec {
            fit,
            ..InputSpec::nanodet_m_416()
        }
    }

    #[test]
    fn a_letterboxed_frame_keeps_its_proportions_centred() {
        // 768 x 576 (4:3): scaled by 416/768 to 416 x 312, 52 rows of grey above and below.
        let p = spec(Fit::Letterbox).placement(768, 576);
        assert_eq!((p.x, p.y, p.width, p.height), (0, 52, 416, 312));
        assert_eq!(p.scale_x, p.scale_y);
        // 1920 x 1080 (16:9) -> 416 x 234; a portrait 1080 x 1920 -> 234 x 416.
        let p = spec(Fit::Letterbox).placement(1920, 1080);
        assert_eq!((p.x, p.y, p.width, p.height), (0, 91, 416, 234));
        let p = spec(Fit::Letterbox).placement(1080, 1920);
        assert_eq!((p.x, p.y, p.width, p.height), (91, 0, 234, 416));
        // A frame smaller than the input is scaled up; a degenerate one still gives a usable placement.
        assert_eq!(spec(Fit::Letterbox).placement(208, 208).scale_x, 2.0);
        let p = spec(Fit::Letterbox).placement(0, 0);
        assert!(p.width >= 1 && p.height >= 1 && p.scale_x > 0.0);
    }

    #[test]
    fn a_stretched_frame_fills_the_input() {
        let p = spec(Fit::Stretch).placement(768, 576);
        assert_eq!((p.x, p.y, p.width, p.height), (0, 0, 416, 416));
        assert!((p.scale_y - 416.0 / 576.0).abs() < 1e-6);
    }

    #[test]
    fn boxes_go_to_the_input_and_back_and_are_cut_to_the_frame() {
        for fit in [Fit::Letterbox, Fit::Stretch] {
            let p = spec(fit).placement(768, 576);
            let b = BBox::new(100.0, 200.0, 160.0, 380.0);
            let back = p.to_frame(&p.to_input(&b));
            for (a, z) in [(b.x1, back.x1), (b.y1, back.y1), (b.x2, back.x2), (b.y2, back.y2)] {
                assert!((a - z).abs() < 1e-3, "{fit:?}: {b:?} came back as {back:?}");
            }
        }
        // A box reaching into the grey band ends at the frame's edge.
        let p = spec(Fit::Letterbox).placement(768, 576);
        let b = p.to_frame(&BBox::new(-5.0, 10.0, 30.0, 100.0));
        assert_eq!((b.x1, b.y1), (0.0, 0.0));
        assert!((b.y2 - 48.0 * 768.0 / 416.0).abs() < 1e-3);
    }
}
