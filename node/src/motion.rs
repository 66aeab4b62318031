//! Motion gate: skip inference on still scenes.
//!
//! The capture stage shrinks each frame to a small grey thumbnail ([`THUMB_WIDTH`] x [`THUMB_HEIGHT`]);
//! the gate compares it with the thumbnail of the last frame that was *inferred* (not the previous
//! frame, so slow changes add up until they matter) and skips inference when too few pixels changed.
//! A still person must not vanish from tracking, so inference still runs at least every `max_skip_secs`.

use serde::{Deserialize, Serialize};

pub const THUMB_WIDTH: u32 = 96;
pub const THUMB_HEIGHT: u32 = 72;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    pub enabled: bool,
    /// Grey-level difference (0-255) above which a thumbnail pixel counts as changed.
    pub pixel_threshold: u8,
    /// Fraction of thumbnail pixels that must change for the frame to be inferred.
    pub min_changed_fraction: f32,
    /// Longest time without inference, even on a still scene.
    pub max_skip_secs: f64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            pixel_threshold: 18,
            min_changed_fraction: 0.002,
            max_skip_secs: 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Infer,
    Skip,
}

/// The gate's verdict on one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    pub decision: Decision,
    /// Fraction of thumbnail pixels changed since the last inferred frame.
    pub changed: f32,
    /// The scene was judged still, whether or not the gate is enabled to act on it.
    pub still: bool,
}

#[derive(Debug)]
pub struct MotionGate {
    cfg: MotionConfig,
    reference: Vec<u8>,
    last_infer: Option<f64>,
    skipped: u64,
}

impl MotionGate {
    pub fn new(cfg: MotionConfig) -> Self {
        Self {
            cfg,
            reference: Vec::new(),
            last_infer: None,
            skipped: 0,
        }
    }

    /// Frames the gate decided to skip so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Decides for the thumbnail `thumb` at stream time `now`. With the gate disabled the decision is
    /// always `Infer`, and `still` and [`MotionGate::skipped`] still say what it *would* have skipped.
    pub fn decide(&mut self, thumb: &[u8], now: f64) -> Gate {
        let infer = |changed| Gate {
            decision: Decision::Infer,
            changed,
            still: false,
        };
        if self.reference.len() != thumb.len() || thumb.is_empty() {
            self.refresh(thumb, now);
            return infer(1.0);
        }
        let t = self.cfg.pixel_threshold;
        let changed = self
            .reference
            .iter()
            .zip(thumb)
            .filter(|(a, b)| a.abs_diff(**b) > t)
            .count();
        let fraction = changed as f32 / thumb.len() as f32;
        let overdue = self.last_infer.is_none_or(|l| now - l >= self.cfg.max_skip_secs);
        if fraction >= self.cfg.min_changed_fraction || overdue {
            self.refresh(thumb, now);
            return infer(fraction);
        }
        self.skipped += 1;
        Gate {
            decision: if self.cfg.enabled {
                Decision::Skip
            } else {
                Decision::Infer
            },
            changed: fraction,
            still: true,
        }
    }

    fn refresh(&mut self, thumb: &[u8], now: f64) {
        self.reference.clear();
        self.reference.extend_from_slice(thumb);
        self.last_infer = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = (THUMB_WIDTH * THUMB_HEIGHT) as usize;

    #[test]
    fn still_scene_is_skipped_but_refreshed_every_max_skip_secs() {
        let mut g = MotionGate::new(MotionConfig::default());
        let still = vec![100u8; N];
        let mut decisions = Vec::new();
        for f in 0..25 {
            decisions.push(g.decide(&still, f as f64 / 10.0).decision);
        }
        let inferred: Vec<usize> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == Decision::Infer)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(inferred, vec![0, 10, 20]);
        assert_eq!(g.skipped(), 22);
    }

    #[test]
    fn a_person_walking_in_is_inferred_and_noise_is_not() {
        let mut g = MotionGate::new(MotionConfig::default());
        let mut img = vec![100u8; N];
        g.decide(&img, 0.0);
        // Sensor noise: every pixel +-10, under the pixel threshold.
        let noisy: Vec<u8> = img
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { v + 10 } else { v - 10 })
            .collect();
        assert_eq!(g.decide(&noisy, 0.1).decision, Decision::Skip);
        // A small figure: 4x8 thumbnail pixels (0.46% of the image) change a lot.
        for y in 30..38 {
            for x in 40..44 {
                img[y * THUMB_WIDTH as usize + x] = 20;
            }
        }
        let v = g.decide(&img, 0.2);
        assert_eq!(v.decision, Decision::Infer);
        assert!((v.changed - 32.0 / N as f32).abs() < 1e-6);
    }

    #[test]
    fn slow_change_accumulates_against_the_last_inferred_frame() {
        let mut g = MotionGate::new(MotionConfig {
            max_skip_secs: 100.0,
            ..MotionConfig::default()
        });
        let mut img = vec![100u8; N];
        g.decide(&img, 0.0);
        // Brighten a patch by 5 grey levels per frame: no single step passes the threshold of 18,
        // but after four steps the difference to the reference (20) does.
        let mut decisions = Vec::new();
        for f in 1..=4 {
            for v in img.iter_mut().take(200) {
                *v += 5;
            }
            decisions.push(g.decide(&img, f as f64 * 0.1).decision);
        }
        assert_eq!(
            decisions,
            vec![Decision::Skip, Decision::Skip, Decision::Skip, Decision::Infer]
        );
    }

    #[test]
    fn disabled_gate_always_infers_and_counts_what_it_would_skip() {
        let mut g = MotionGate::new(MotionConfig {
            enabled: false,
            ..MotionConfig::default()
        });
        let still = vec![0u8; N];
        let v: Vec<Gate> = (0..5).map(|f| g.decide(&still, f as f64 * 0.1)).collect();
        assert!(v.iter().all(|g| g.decision == Decision::Infer));
        assert_eq!(v.iter().filter(|g| g.still).count(), 4);
        assert_eq!(g.skipped(), 4);
    }
}
