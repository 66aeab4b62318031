//! Packed 8-bit BGR pixels to the planar, normalised float tensor a detector wants.

use super::{ChannelOrder, InputSpec, Placement};

/// Per-channel lookup tables: `(v - mean) / std` for every byte value, so normalising is one load and one
/// store per value instead of a subtract and a divide.
pub struct Normalizer {
    /// Indexed by the *source* channel (0 = B, 1 = G, 2 = R).
    lut: [[f32; 256]; 3],
    order: ChannelOrder,
    width: usize,
    height: usize,
}

impl Normalizer {
    pub fn new(spec: &InputSpec) -> Self {
        let mut lut = [[0.0f32; 256]; 3];
        for (src, table) in lut.iter_mut().enumerate() {
            // mean/std are given in the model's plane order.
            let plane = match spec.channel_order {
                ChannelOrder::Bgr => src,
                ChannelOrder::Rgb => 2 - src,
            };
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 - spec.mean[plane]) / spec.std[plane];
            }
        }
        Self {
            lut,
            order: spec.channel_order,
            width: spec.width as usize,
            height: spec.height as usize,
        }
    }

    /// `bgr` is the frame as packed bytes already resized to `at`'s `width` x `height`; `out` is the
    /// NCHW tensor (`3 * width * height` of the model's input). The input outside the frame gets 0, the
    /// model's mean colour: a neutral grey that looks like nothing. Returns false (and leaves `out`
    /// alone) on a size mismatch.
    pub fn fill(&self, bgr: &[u8], at: &Placement, out: &mut [f32]) -> bool {
        let n = self.width * self.height;
        let (x, y, w, h) = (at.x as usize, at.y as usize, at.width as usize, at.height as usize);
        if bgr.len() != w * h * 3 || out.len() != n * 3 || x + w > self.width || y + h > self.height {
            return false;
        }
        let (p0, rest) = out.split_at_mut(n);
        let (p1, p2) = rest.split_at_mut(n);
        // Only the bands around the frame: the frame's own pixels are written once, below.
        for plane in [&mut *p0, &mut *p1, &mut *p2] {
            grey_around(plane, self.width, (x, y, w, h));
        }
        let (b, g, r) = match self.order {
            ChannelOrder::Bgr => (p0, p1, p2),
            ChannelOrder::Rgb => (p2, p1, p0),
        };
        let [lb, lg, lr] = &self.lut;
        if w == 0 {
            return true;
        }
        for (row, src) in bgr.chunks_exact(w * 3).enumerate() {
            let start = (y + row) * self.width + x;
            let dst = start..start + w;
            for (((px, b), g), r) in src
                .chunks_exact(3)
                .zip(&mut b[dst.clone()])
                .zip(&mut g[dst.clone()])
                .zip(&mut r[dst])
            {
                *b = lb[px[0] as usize];
                *g = lg[px[1] as usize];
                *r = lr[px[2] as usize];
            }
        }
        true
    }
}

/// Sets a plane `width` wide to 0 (the mean colour) outside the rectangle (`x`, `y`, `w`, `h`), which
/// the caller has checked lies within it.
fn grey_around(plane: &mut [f32], width: usize, (x, y, w, h): (usize, usize, usize, usize)) {
    let (top, bottom) = (y * width, (y + h) * width);
    plane[..top].fill(0.0);
    plane[bottom..].fill(0.0);
    if w < width {
        for row in plane[top..bottom].chunks_exact_mut(width) {
            row[..x].fill(0.0);
            row[x + w..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Fit;

    fn spec(order: ChannelOrder) -> InputSpec {
        InputSpec {
            width: 2,
            height: 1,
            fit: Fit::Stretch,
            channel_order: order,
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
        }
    }

    fn whole() -> Placement {
        spec(ChannelOrder::Bgr).placement(2, 1)
    }

    #[test]
    fn bgr_model_keeps_plane_order_and_normalises() {
        let n = Normalizer::new(&spec(ChannelOrder::Bgr));
        let px = [12u8, 24, 35, 10, 20, 30];
        let mut out = [0.0f32; 6];
        assert!(n.fill(&px, &whole(), &mut out));
        // planes: B = [(12-10)/2, 0], G = [(24-20)/4, 0], R = [(35-30)/5, 0]
        assert_eq!(out, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn rgb_model_gets_red_first_with_its_own_mean() {
        let n = Normalizer::new(&spec(ChannelOrder::Rgb));
        // pixel 0: B=0, G=20, R=20 -> planes R,G,B with means 10,20,30 and stds 2,4,5
        let px = [0u8, 20, 20, 0, 0, 0];
        let mut out = [0.0f32; 6];
        assert!(n.fill(&px, &whole(), &mut out));
        assert_eq!(out[0], (20.0 - 10.0) / 2.0); // R plane
        assert_eq!(out[2], 0.0); // G plane
        assert_eq!(out[4], (0.0 - 30.0) / 5.0); // B plane
    }

    #[test]
    fn size_mismatch_is_refused() {
        let n = Normalizer::new(&spec(ChannelOrder::Bgr));
        let mut out = [0.0f32; 6];
        assert!(!n.fill(&[0u8; 5], &whole(), &mut out));
    }

    #[test]
    fn a_letterboxed_frame_sits_in_grey() {
        let spec = InputSpec {
            width: 4,
            height: 4,
            fit: Fit::Letterbox,
            ..spec(ChannelOrder::Bgr)
        };
        let n = Normalizer::new(&spec);
        // An 8 x 4 frame in a 4 x 4 input: 4 x 2, rows 1 and 2.
        let at = spec.placement(8, 4);
        assert_eq!((at.x, at.y, at.width, at.height), (0, 1, 4, 2));
        let px = [12u8, 24, 35].repeat(8);
        let mut out = vec![7.0f32; 48];
        assert!(n.fill(&px, &at, &mut out));
        for plane in out.chunks(16) {
            assert_eq!(plane[..4], [0.0; 4], "the row above the frame is grey");
            assert_eq!(plane[4..12], [1.0; 8], "the frame's rows");
            assert_eq!(plane[12..], [0.0; 4], "the row below the frame is grey");
        }
        // The frame's bytes must be of the placement's size.
        assert!(!n.fill(&px[..21], &at, &mut out));
        // A portrait 4 x 8 frame: 2 x 4, columns 1 and 2, grey beside it.
        let at = spec.placement(4, 8);
        assert_eq!((at.x, at.y, at.width, at.height), (1, 0, 2, 4));
        let mut out = vec![7.0f32; 48];
        assert!(n.fill(&px, &at, &mut out));
        for row in out.chunks(4) {
            assert_eq!(row, [0.0, 1.0, 1.0, 0.0], "grey, the frame, grey");
        }
    }
}
