//! Greedy non-maximum suppression, per class.

use super::Detection;

/// Keeps, among boxes of the same class that overlap by more than `iou_threshold`, only the best scoring
/// one. The result is sorted by descending score. Works in place: no allocation beyond `dets`.
pub fn nms(dets: &mut Vec<Detection>, iou_threshold: f32) {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = 0;
    for i in 0..dets.len() {
        let candidate = dets[i];
        let suppressed = dets[..kept]
            .iter()
            .any(|k| k.class == candidate.class && k.bbox.iou(&candidate.bbox) > iou_threshold);
        if !suppressed {
            dets[kept] = candidate;
            kept += 1;
        }
    }
    dets.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geom::BBox;

    fn det(x: f32, score: f32, class: u16) -> Detection {
        Detection {
            bbox: BBox::new(x, 0.0, x + 10.0, 20.0),
            score,
            class,
        }
    }

    #[test]
    fn overlapping_boxes_keep_the_best_and_distinct_ones_survive() {
        let mut d = vec![det(0.0, 0.6, 0), det(1.0, 0.9, 0), det(50.0, 0.7, 0), det(2.0, 0.8, 1)];
        nms(&mut d, 0.5);
        // 0.9 at x=1 suppresses 0.6 at x=0 (IoU 0.82); x=50 is apart; class 1 is never suppressed by class 0.
        let got: Vec<(f32, u16)> = d.iter().map(|d| (d.score, d.class)).collect();
        assert_eq!(got, vec![(0.9, 0), (0.8, 1), (0.7, 0)]);
    }

    #[test]
    fn threshold_is_strict() {
        // IoU of these two is exactly 1/3.
        let mut d = vec![det(0.0, 0.9, 0), det(5.0, 0.8, 0)];
        nms(&mut d, 1.0 / 3.0);
        assert_eq!(d.len(), 2);
        nms(&mut d, 0.3);
        assert_eq!(d.len(), 1);
    }
}
