//! Decoding NanoDet's generalised-focal-loss heads into boxes.
//!
//! Per stride `s` the model gives, for each cell of a `g x g` grid (row-major), class scores (already
//! sigmoid) and, for each of the four sides (left, top, right, bottom), `reg_max + 1` logits whose softmax
//! expectation is that side's distance from the cell centre in units of `s`.

use super::{Detection, Placement};
use crate::geom::BBox;

/// One output level of the model, as flat slices of its two heads.
#[derive(Clone, Copy, Debug)]
pub struct Level<'a> {
    pub stride: u32,
    /// `cells * num_classes`
    pub scores: &'a [f32],
    /// `cells * 4 * (reg_max + 1)`
    pub boxes: &'a [f32],
}

#[derive(Clone, Debug)]
pub struct NanoDetDecoder {
    pub input_width: u32,
    pub input_height: u32,
    pub num_classes: usize,
    pub reg_max: usize,
    /// Classes to keep (COCO person = 0); the others are never decoded.
    pub classes: Vec<u16>,
    pub score_threshold: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("stride {stride}: {what} has {got} values, expected {want}")]
    Shape {
        stride: u32,
        what: &'static str,
        got: usize,
        want: usize,
    },
}

impl NanoDetDecoder {
    pub fn nanodet_m_416(score_threshold: f32) -> Self {
        Self {
            input_width: 416,
            input_height: 416,
            num_classes: 80,
            reg_max: 10,
            classes: vec![0],
            score_threshold,
        }
    }

    /// Appends every cell above the threshold, in pixels of the frame placed in the model's input `at`.
    /// No NMS here.
    pub fn decode(&self, levels: &[Level<'_>], at: &Placement, out: &mut Vec<Detection>) -> Result<(), DecodeError> {
        let bins = self.reg_max + 1;
        for level in levels {
            let gw = self.input_width.div_ceil(level.stride) as usize;
            let gh = self.input_height.div_ceil(level.stride) as usize;
            let cells = gw * gh;
            if level.scores.len() != cells * self.num_classes {
                return Err(DecodeError::Shape {
                    stride: level.stride,
                    what: "class scores",
                    got: level.scores.len(),
                    want: cells * self.num_classes,
                });
            }
            if level.boxes.len() != cells * 4 * bins {
                return Err(DecodeError::Shape {
                    stride: level.stride,
                    what: "box regression",
                    got: level.boxes.len(),
                    want: cells * 4 * bins,
                });
            }
            let s = level.stride as f32;
            for cell in 0..cells {
                let scores = &level.scores[cell * self.num_classes..(cell + 1) * self.num_classes];
                for &class in &self.classes {
                    let score = scores.get(class as usize).copied().unwrap_or(0.0);
                    if score < self.score_threshold || score.is_nan() {
                        continue;
                    }
                    let reg = &level.boxes[cell * 4 * bins..(cell + 1) * 4 * bins];
                    let mut d = [0.0f32; 4];
                    for (side, dist) in d.iter_mut().enumerate() {
                        *dist = expected_bin(&reg[side * bins..(side + 1) * bins]) * s;
                    }
                    let cx = ((cell % gw) as f32 + 0.5) * s;
                    let cy = ((cell / gw) as f32 + 0.5) * s;
                    let b = at.to_frame(&BBox::new(cx - d[0], cy - d[1], cx + d[2], cy + d[3]));
                    if b.area() > 0.0 {
                        out.push(Detection { bbox: b, score, class });
                    }
                }
            }
        }
        Ok(())
    }
}

/// `sum_i softmax(logits)_i * i`, computed stably.
fn expected_bin(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    let mut weighted = 0.0;
    for (i, &l) in logits.iter().enumerate() {
        let e = (l - max).exp();
        sum += e;
        weighted += e * i as f32;
    }
    if sum > 0.0 {
        weighted / sum
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Fit, InputSpec};

    const BINS: usize = 11;

    /// Logits that put (almost) all the mass on one bin, so the expected distance is that bin.
    fn peaked(bin: usize) -> [f32; BINS] {
        let mut l = [-30.0f32; BINS];
        l[bin] = 30.0;
        l
    }

    struct Tensors {
        scores: Vec<f32>,
        boxes: Vec<f32>,
    }

    fn empty_level(stride: u32) -> Tensors {
        let g = 416usize.div_ceil(stride as usize);
        Tensors {
            scores: vec![0.0; g * g * 80],
            boxes: vec![0.0; g * g * 4 * BINS],
        }
    }

    fn set_cell(t: &mut Tensors, stride: u32, x: usize, y: usize, class: usize, score: f32, sides: [usize; 4]) {
        let g = 416usize.div_ceil(stride as usize);
        let cell = y * g + x;
        t.scores[cell * 80 + class] = score;
        for (side, &bin) in sides.iter().enumerate() {
            let at = cell * 4 * BINS + side * BINS;
            t.boxes[at..at + BINS].copy_from_slice(&peaked(bin));
        }
    }

    #[test]
    fn a_known_person_box_is_decoded_in_frame_pixels() {
        let mut l8 = empty_level(8);
        let l16 = empty_level(16);
        let mut l32 = empty_level(32);
        // Stride 8, cell (10, 20): centre (84, 164); sides 2,3,4,5 bins -> 16,24,32,40 px.
        set_cell(&mut l8, 8, 10, 20, 0, 0.9, [2, 3, 4, 5]);
        // Stride 32, cell (3, 1): centre (112, 48); sides 1,1,1,1 -> 32 px each; a non-person: ignored.
        set_cell(&mut l32, 32, 3, 1, 2, 0.95, [1, 1, 1, 1]);
        // A person below the threshold: ignored.
        set_cell(&mut l32, 32, 5, 5, 0, 0.2, [1, 1, 1, 1]);
        let levels = [
            Level {
                stride: 8,
                scores: &l8.scores,
                boxes: &l8.boxes,
            },
            Level {
                stride: 16,
                scores: &l16.scores,
                boxes: &l16.boxes,
            },
            Level {
                stride: 32,
                scores: &l32.scores,
                boxes: &l32.boxes,
            },
        ];
        let dec = NanoDetDecoder::nanodet_m_416(0.5);
        let mut out = Vec::new();
        // Frame twice as wide and 1.5x as tall as the model input, stretched to fill it.
        let stretched = InputSpec {
            fit: Fit::Stretch,
            ..InputSpec::nanodet_m_416()
        };
        dec.decode(&levels, &stretched.placement(832, 624), &mut out).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        let d = out[0];
        assert_eq!(d.class, 0);
        assert!((d.score - 0.9).abs() < 1e-6);
        let want = BBox::new(
            (84.0 - 16.0) * 2.0,
            (164.0 - 24.0) * 1.5,
            (84.0 + 32.0) * 2.0,
            (164.0 + 40.0) * 1.5,
        );
        for (got, want) in [
            (d.bbox.x1, want.x1),
            (d.bbox.y1, want.y1),
            (d.bbox.x2, want.x2),
            (d.bbox.y2, want.y2),
        ] {
            assert!((got - want).abs() < 1e-3, "{:?} vs {:?}", d.bbox, want);
        }
        // The same frame letterboxed: halved both ways into 416 x 312, 52 grey rows above it.
        out.clear();
        let boxed = InputSpec::nanodet_m_416().placement(832, 624);
        dec.decode(&levels, &boxed, &mut out).unwrap();
        let want = [
            (84.0 - 16.0) * 2.0,
            (164.0 - 24.0 - 52.0) * 2.0,
            (84.0 + 32.0) * 2.0,
            (164.0 + 40.0 - 52.0) * 2.0,
        ];
        let b = out[0].bbox;
        for (got, want) in [b.x1, b.y1, b.x2, b.y2].into_iter().zip(want) {
            assert!((got - want).abs() < 1e-3, "{b:?} vs {want:?}");
        }
    }

    #[test]
    fn boxes_are_clipped_to_the_input() {
        let mut l8 = empty_level(8);
        // Cell (0,0): centre (4,4); left/top distance 10*8 = 80 px would leave the image.
        set_cell(&mut l8, 8, 0, 0, 0, 0.8, [10, 10, 1, 1]);
        let l16 = empty_level(16);
        let l32 = empty_level(32);
        let levels = [
            Level {
                stride: 8,
                scores: &l8.scores,
                boxes: &l8.boxes,
            },
            Level {
                stride: 16,
                scores: &l16.scores,
                boxes: &l16.boxes,
            },
            Level {
                stride: 32,
                scores: &l32.scores,
                boxes: &l32.boxes,
            },
        ];
        let mut out = Vec::new();
        NanoDetDecoder::nanodet_m_416(0.5)
            .decode(&levels, &InputSpec::nanodet_m_416().placement(416, 416), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].bbox.x1, out[0].bbox.y1), (0.0, 0.0));
        assert!((out[0].bbox.x2 - 12.0).abs() < 1e-3);
    }

    #[test]
    fn expectation_of_a_uniform_distribution_is_the_middle_bin() {
        assert!((expected_bin(&[0.0; BINS]) - 5.0).abs() < 1e-5);
        assert!((expected_bin(&peaked(7)) - 7.0).abs() < 1e-4);
    }

    #[test]
    fn wrong_tensor_sizes_are_reported() {
        let l8 = empty_level(8);
        let levels = [Level {
            stride: 8,
            scores: &l8.scores[..100],
            boxes: &l8.boxes,
        }];
        let err = NanoDetDecoder::nanodet_m_416(0.5)
            .decode(
                &levels,
                &InputSpec::nanodet_m_416().placement(416, 416),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("class scores"), "{err}");
    }
}
