//! Pixel measures for the rules that need pixels (`camera_tamper`, `shelf_sweep`), computed on the
//! capture thread from small grey images. Only the resulting numbers leave that thread.
//!
//! Pure Rust over byte slices, so it is tested without OpenCV; the capture stage feeds it:
//! - `thumb`: the whole view, [`THUMB_WIDTH`] x [`THUMB_HEIGHT`] grey (also the motion gate's input);
//! - `detail`: the whole view, [`DETAIL_SIZE`] x [`DETAIL_SIZE`] grey (stretched like the model input).
//!
//! The meter learns what the camera normally sees (sharpness, the view itself, each shelf's background)
//! and reports the current frame relative to that. It stops learning while a frame looks tampered with,
//! so a covered or re-aimed camera does not become the new normal.

use crate::motion::{THUMB_HEIGHT, THUMB_WIDTH};
use crate::rules::PixelMeasures;
use crate::zone::Polygon;

pub const DETAIL_SIZE: u32 = 208;

/// Frames averaged before the learned references are trusted.
const WARMUP_FRAMES: u32 = 20;
/// How fast the references follow slow changes of a normal view (daylight): per frame.
const LEARN_RATE: f32 = 0.01;
/// Shelf background: pixels that match follow quickly; pixels that differ (a person, a gap on the shelf)
/// are absorbed only very slowly, so a change after a sweep persists for tens of seconds.
const SHELF_RATE_MATCH: f32 = 0.05;
const SHELF_RATE_DIFFER: f32 = 0.002;
/// Grey-level difference that counts a shelf pixel as changed.
const SHELF_PIXEL_THRESHOLD: f32 = 25.0;

/// When a frame is too abnormal to learn from (mirrors the tamper thresholds of the rules).
#[derive(Clone, Copy, Debug)]
pub struct LearnGate {
    pub dark_brightness: f32,
    pub min_contrast: f32,
    pub blur_ratio: f32,
    pub min_similarity: f32,
}

struct Shelf {
    /// Pixel rectangle in the detail image and the polygon mask over it.
    x0: usize,
    y0: usize,
    w: usize,
    mask: Vec<bool>,
    background: Vec<f32>,
}

pub struct PixelMeter {
    gate: LearnGate,
    frames: u32,
    sharpness: f32,
    reference: Vec<f32>,
    /// One per configured zone; `None` for zones that are not shelves.
    shelves: Vec<Option<Shelf>>,
}

impl PixelMeter {
    /// `zones`: every zone of the camera in order, with whether it is a shelf.
    pub fn new(zones: &[(Polygon, bool)], gate: LearnGate) -> Self {
        let n = DETAIL_SIZE as usize;
        let shelves = zones
            .iter()
            .map(|(poly, shelf)| {
                shelf.then(|| {
                    let b = poly.bounds();
                    let px = |v: f32| ((v.clamp(0.0, 1.0) * n as f32) as usize).min(n);
                    let (x0, y0, x1, y1) = (
                        px(b[0]),
                        px(b[1]),
                        px(b[2]).max(px(b[0]) + 1),
                        px(b[3]).max(px(b[1]) + 1),
                    );
                    let (x1, y1) = (x1.min(n), y1.min(n));
                    let (w, h) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
                    let mut mask = Vec::with_capacity(w * h);
                    for y in 0..h {
                        for x in 0..w {
                            let p = [(x0 + x) as f32 + 0.5, (y0 + y) as f32 + 0.5];
                            mask.push(poly.contains([p[0] / n as f32, p[1] / n as f32]));
                        }
                    }
                    Shelf {
                        x0,
                        y0,
                        w,
                        mask,
                        background: Vec::new(),
                    }
                })
            })
            .collect();
        Self {
            gate,
            frames: 0,
            sharpness: 0.0,
            reference: Vec::new(),
            shelves,
        }
    }

    /// Measures one frame. `thumb` and `detail` must have the sizes this module names.
    pub fn measure(&mut self, thumb: &[u8], detail: &[u8]) -> PixelMeasures {
        let (brightness, contrast) = mean_std(thumb);
        let sharp = laplacian_variance(detail, DETAIL_SIZE as usize);
        let warm = self.frames >= WARMUP_FRAMES;
        let sharpness_ratio = if warm && self.sharpness > 0.0 {
            sharp / self.sharpness
        } else {
            1.0
        };
        let similarity = if warm { ncc(thumb, &self.reference) } else { 1.0 };
        let g = self.gate;
        let normal = brightness >= g.dark_brightness
            && contrast >= g.min_contrast
            && sharpness_ratio >= g.blur_ratio
            && similarity >= g.min_similarity;
        if !warm {
            // Running mean over the warm-up frames.
            let k = 1.0 / (self.frames + 1) as f32;
            self.sharpness += (sharp - self.sharpness) * k;
            if self.reference.len() != thumb.len() {
                self.reference = thumb.iter().map(|&v| v as f32).collect();
            } else {
                for (r, &v) in self.reference.iter_mut().zip(thumb) {
                    *r += (v as f32 - *r) * k;
                }
            }
            self.frames += 1;
        } else if normal {
            self.sharpness += (sharp - self.sharpness) * LEARN_RATE;
            for (r, &v) in self.reference.iter_mut().zip(thumb) {
                *r += (v as f32 - *r) * LEARN_RATE;
            }
        }
        let n = DETAIL_SIZE as usize;
        let zone_change = self
            .shelves
            .iter_mut()
            .map(|s| {
                let s = s.as_mut()?;
                let h = s.mask.len() / s.w.max(1);
                if s.background.len() != s.mask.len() {
                    s.background = (0..s.mask.len())
                        .map(|i| detail[(s.y0 + i / s.w) * n + s.x0 + i % s.w] as f32)
                        .collect();
                }
                let (mut changed, mut total) = (0usize, 0usize);
                for y in 0..h {
                    let row = &detail[(s.y0 + y) * n + s.x0..(s.y0 + y) * n + s.x0 + s.w];
                    for (x, &v) in row.iter().enumerate() {
                        let i = y * s.w + x;
                        if !s.mask[i] {
                            continue;
                        }
                        total += 1;
                        let bg = &mut s.background[i];
                        let differs = (v as f32 - *bg).abs() > SHELF_PIXEL_THRESHOLD;
                        changed += usize::from(differs);
                        if normal {
                            *bg += (v as f32 - *bg) * if differs { SHELF_RATE_DIFFER } else { SHELF_RATE_MATCH };
                        }
                    }
                }
                Some(if total == 0 { 0.0 } else { changed as f32 / total as f32 })
            })
            .collect();
        PixelMeasures {
            brightness,
            contrast,
            sharpness_ratio,
            similarity,
            zone_change,
        }
    }
}

fn mean_std(v: &[u8]) -> (f32, f32) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    let mean = sum / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, var.sqrt() as f32)
}

/// Variance of the 4-neighbour Laplacian: high for a sharp view, collapses when it is blurred.
fn laplacian_variance(img: &[u8], n: usize) -> f32 {
    if img.len() < n * n || n < 3 {
        return 0.0;
    }
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0f64);
    for y in 1..n - 1 {
        for x in 1..n - 1 {
            let c = img[y * n + x] as i32;
            let l = img[y * n + x - 1] as i32
                + img[y * n + x + 1] as i32
                + img[(y - 1) * n + x] as i32
                + img[(y + 1) * n + x] as i32
                - 4 * c;
            sum += l as f64;
            sum2 += (l * l) as f64;
            count += 1.0;
        }
    }
    let mean = sum / count;
    (sum2 / count - mean * mean) as f32
}

/// Normalised cross-correlation of two images of the same size (1 = identical up to brightness/contrast).
fn ncc(a: &[u8], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 1.0;
    }
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        // A flat image correlates with nothing.
        return 0.0;
    }
    (sab / (saa * sbb).sqrt()) as f32
}

/// Sizes of the images [`PixelMeter::measure`] takes.
pub const THUMB_LEN: usize = (THUMB_WIDTH * THUMB_HEIGHT) as usize;
pub const DETAIL_LEN: usize = (DETAIL_SIZE * DETAIL_SIZE) as usize;

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> LearnGate {
        LearnGate {
            dark_brightness: 20.0,
            min_contrast: 6.0,
            blur_ratio: 0.3,
            min_similarity: 0.6,
        }
    }

    /// A textured synthetic scene: stripes and a gradient.
    fn scene(w: usize, h: usize, shift: usize) -> Vec<u8> {
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w + shift) % w, i / w);
                (((x / 4) % 2) as u8 * 120 + (y * 100 / h) as u8).saturating_add(20)
            })
            .collect()
    }

    fn box_blur(img: &[u8], n: usize, r: usize) -> Vec<u8> {
        let mut out = img.to_vec();
        for y in 0..n {
            for x in 0..n {
                let (mut s, mut c) = (0u32, 0u32);
                for yy in y.saturating_sub(r)..(y + r + 1).min(n) {
                    for xx in x.saturating_sub(r)..(x + r + 1).min(n) {
                        s += img[yy * n + xx] as u32;
                        c += 1;
                    }
                }
                out[y * n + x] = (s / c) as u8;
            }
        }
        out
    }

    fn warmed() -> (PixelMeter, Vec<u8>, Vec<u8>) {
        let shelf = Polygon::new(vec![[0.1, 0.1], [0.4, 0.1], [0.4, 0.4], [0.1, 0.4]]).unwrap();
        let mut m = PixelMeter::new(&[(shelf, true)], gate());
        let thumb = scene(THUMB_WIDTH as usize, THUMB_HEIGHT as usize, 0);
        let detail = scene(DETAIL_SIZE as usize, DETAIL_SIZE as usize, 0);
        for _ in 0..WARMUP_FRAMES + 5 {
            m.measure(&thumb, &detail);
        }
        (m, thumb, detail)
    }

    #[test]
    fn the_normal_view_measures_as_normal() {
        let (mut m, thumb, detail) = warmed();
        let p = m.measure(&thumb, &detail);
        assert!((p.sharpness_ratio - 1.0).abs() < 0.01 && p.similarity > 0.99, "{p:?}");
        assert_eq!(p.zone_change, vec![Some(0.0)]);
        assert!(p.brightness > 20.0 && p.contrast > 6.0);
    }

    #[test]
    fn black_blurred_and_shifted_views_stand_out() {
        let (mut m, thumb, detail) = warmed();
        let black = m.measure(&vec![0; THUMB_LEN], &vec![0; DETAIL_LEN]);
        assert!(black.brightness < 1.0 && black.contrast < 1.0);
        let blurred = m.measure(&box_blur(&thumb, 1, 0), &box_blur(&detail, DETAIL_SIZE as usize, 4));
        assert!(blurred.sharpness_ratio < 0.3, "{blurred:?}");
        let moved = m.measure(&scene(THUMB_WIDTH as usize, THUMB_HEIGHT as usize, 6), &detail);
        assert!(moved.similarity < 0.6, "{moved:?}");
        // None of that was learned: the normal view is still normal.
        let back = m.measure(&thumb, &detail);
        assert!(
            back.similarity > 0.99 && (back.sharpness_ratio - 1.0).abs() < 0.05,
            "{back:?}"
        );
    }

    #[test]
    fn a_changed_shelf_stays_changed_and_a_passing_change_fades() {
        let (mut m, thumb, detail) = warmed();
        let n = DETAIL_SIZE as usize;
        // Empty half of the shelf region (x 21..83, y 21..83 in the detail image).
        let mut swept = detail.clone();
        for y in 21..83 {
            for x in 21..52 {
                swept[y * n + x] = 230;
            }
        }
        let first = m.measure(&thumb, &swept).zone_change[0].unwrap();
        assert!(first > 0.3, "{first}");
        let mut last = first;
        for _ in 0..100 {
            last = m.measure(&thumb, &swept).zone_change[0].unwrap();
        }
        assert!(last > 0.3, "ten seconds later the gap is still there: {last}");
    }

    #[test]
    fn someone_passing_in_front_of_a_shelf_leaves_no_change() {
        let (mut m, thumb, detail) = warmed();
        let n = DETAIL_SIZE as usize;
        let mut person = detail.clone();
        for y in 15..90 {
            for x in 30..50 {
                person[y * n + x] = 10;
            }
        }
        // Two seconds in front of the shelf at 10 fps.
        let during = (0..20)
            .map(|_| m.measure(&thumb, &person).zone_change[0].unwrap())
            .fold(0.0f32, f32::max);
        assert!(during > 0.1, "the person shows while there: {during}");
        let after = m.measure(&thumb, &detail).zone_change[0].unwrap();
        assert!(after < 0.05, "nothing left once they are gone: {after}");
    }
}
