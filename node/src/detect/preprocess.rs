//! Packed 8-bit BGR pixels to the planar, normalised float tensor a detector wants.

use super::{ChannelOrder, InputSpec};

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

    /// `bgr` is `width * height * 3` packed bytes already resized to the model's input size; `out` is the
    /// NCHW tensor (`3 * width * height`). Returns false (and leaves `out` alone) on a size mismatch.
    pub fn fill(&self, bgr: &[u8], out: &mut [f32]) -> bool {
        let n = self.width * self.height;
        if bgr.len() != n * 3 || out.len() != n * 3 {
            return false;
        }
        let (p0, rest) = out.split_at_mut(n);
        let (p1, p2) = rest.split_at_mut(n);
        let (b, g, r) = match self.order {
            ChannelOrder::Bgr => (p0, p1, p2),
            ChannelOrder::Rgb => (p2, p1, p0),
        };
        let [lb, lg, lr] = &self.lut;
        for (((px, b), g), r) in bgr.chunks_exact(3).zip(b).zip(g).zip(r) {
            *b = lb[px[0] as usize];
            *g = lg[px[1] as usize];
            *r = lr[px[2] as usize];
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(order: ChannelOrder) -> InputSpec {
        InputSpec {
            width: 2,
            height: 1,
            channel_order: order,
            mean: [10.0, 20.0, 30.0],
            std: [2.0, 4.0, 5.0],
        }
    }

    #[test]
    fn bgr_model_keeps_plane_order_and_normalises() {
        let n = Normalizer::new(&spec(ChannelOrder::Bgr));
        let px = [12u8, 24, 35, 10, 20, 30];
        let mut out = [0.0f32; 6];
        assert!(n.fill(&px, &mut out));
        // planes: B = [(12-10)/2, 0], G = [(24-20)/4, 0], R = [(35-30)/5, 0]
        assert_eq!(out, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn rgb_model_gets_red_first_with_its_own_mean() {
        let n = Normalizer::new(&spec(ChannelOrder::Rgb));
        // pixel 0: B=0, G=20, R=20 -> planes R,G,B with means 10,20,30 and stds 2,4,5
        let px = [0u8, 20, 20, 0, 0, 0];
        let mut out = [0.0f32; 6];
        assert!(n.fill(&px, &mut out));
        assert_eq!(out[0], (20.0 - 10.0) / 2.0); // R plane
        assert_eq!(out[2], 0.0); // G plane
        assert_eq!(out[4], (0.0 - 30.0) / 5.0); // B plane
    }

    #[test]
    fn size_mismatch_is_refused() {
        let n = Normalizer::new(&spec(ChannelOrder::Bgr));
        let mut out = [0.0f32; 6];
        assert!(!n.fill(&[0u8; 5], &mut out));
    }
}
