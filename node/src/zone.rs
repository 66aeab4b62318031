//! Zones and counting lines in normalised image coordinates (0..1 on both axes, y down), and the
//! geometry the rules need: point in polygon, distance to the edge, box overlap, segment crossing.

use serde::{Deserialize, Serialize};

pub type Point = [f32; 2];

/// A closed polygon; the last point connects back to the first.
#[derive(Clone, Debug, PartialEq)]
pub struct Polygon {
    pts: Vec<Point>,
}

impl Polygon {
    /// At least three points are needed; the caller (config validation) reports anything else.
    pub fn new(pts: Vec<Point>) -> Option<Self> {
        (pts.len() >= 3).then_some(Self { pts })
    }

    pub fn points(&self) -> &[Point] {
        &self.pts
    }

    fn edges(&self) -> impl Iterator<Item = (Point, Point)> + '_ {
        self.pts.iter().copied().zip(self.pts.iter().copied().cycle().skip(1))
    }

    pub fn contains(&self, p: Point) -> bool {
        let mut inside = false;
        for (a, b) in self.edges() {
            if (a[1] > p[1]) != (b[1] > p[1]) {
                let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
                if p[0] < x {
                    inside = !inside;
                }
            }
        }
        inside
    }

    /// Distance to the nearest edge: positive inside, negative outside.
    pub fn signed_distance(&self, p: Point) -> f32 {
        let d = self
            .edges()
            .map(|(a, b)| segment_distance(p, a, b))
            .fold(f32::INFINITY, f32::min);
        if self.contains(p) {
            d
        } else {
            -d
        }
    }

    /// Fraction of the box (x1, y1, x2, y2, normalised) that lies inside the polygon, sampled on a grid:
    /// exact enough for "does this person reach into the shelf", and cheap.
    pub fn overlap_fraction(&self, b: [f32; 4]) -> f32 {
        const N: usize = 6;
        let mut inside = 0;
        for i in 0..N {
            for j in 0..N {
                let x = b[0] + (b[2] - b[0]) * (i as f32 + 0.5) / N as f32;
                let y = b[1] + (b[3] - b[1]) * (j as f32 + 0.5) / N as f32;
                if self.contains([x, y]) {
                    inside += 1;
                }
            }
        }
        inside as f32 / (N * N) as f32
    }

    /// Axis-aligned bounds (x1, y1, x2, y2).
    pub fn bounds(&self) -> [f32; 4] {
        self.pts.iter().fold(
            [f32::INFINITY, f32::INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY],
            |b, p| [b[0].min(p[0]), b[1].min(p[1]), b[2].max(p[0]), b[3].max(p[1])],
        )
    }
}

fn segment_distance(p: Point, a: Point, b: Point) -> f32 {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (a[0] + t * dx, a[1] + t * dy);
    ((p[0] - cx).powi(2) + (p[1] - cy).powi(2)).sqrt()
}

/// Which way across a counting line counts as "in".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Heading {
    Up,
    Down,
    Left,
    Right,
}

impl Heading {
    pub fn vector(self) -> Point {
        match self {
            Heading::Up => [0.0, -1.0],
            Heading::Down => [0.0, 1.0],
            Heading::Left => [-1.0, 0.0],
            Heading::Right => [1.0, 0.0],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// A counting line from `a` to `b`; crossing it while moving towards `in_heading` counts as in.
#[derive(Clone, Debug, PartialEq)]
pub struct CountingLine {
    pub a: Point,
    pub b: Point,
    /// Unit normal pointing to the "in" side.
    normal: Point,
}

impl CountingLine {
    /// `None` when the line is degenerate or the heading runs along it (it could never be crossed that way).
    pub fn new(a: Point, b: Point, in_heading: Heading) -> Option<Self> {
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-3 {
            return None;
        }
        let mut n = [-dy / len, dx / len];
        let h = in_heading.vector();
        let dot = n[0] * h[0] + n[1] * h[1];
        if dot.abs() < 0.3 {
            return None;
        }
        if dot < 0.0 {
            n = [-n[0], -n[1]];
        }
        Some(Self { a, b, normal: n })
    }

    /// Signed distance from the line's infinite extension: positive on the "in" side.
    pub fn side_distance(&self, p: Point) -> f32 {
        (p[0] - self.a[0]) * self.normal[0] + (p[1] - self.a[1]) * self.normal[1]
    }

    /// Whether a point projects onto the segment (a crossing beside the line's end does not count).
    pub fn spans(&self, p: Point) -> bool {
        let (dx, dy) = (self.b[0] - self.a[0], self.b[1] - self.a[1]);
        let t = ((p[0] - self.a[0]) * dx + (p[1] - self.a[1]) * dy) / (dx * dx + dy * dy);
        (-0.02..=1.02).contains(&t)
    }
}

/// How many of `people` stand in each zone (by their feet: the bottom centre of the box), for the
/// tablets' camera board. Boxes are in pixels of a `width` x `height` frame, zones in fractions.
pub fn occupancy(
    zones: &[(String, Polygon)],
    people: &[crate::track::TrackedPerson],
    width: u32,
    height: u32,
) -> std::collections::BTreeMap<String, u32> {
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    zones
        .iter()
        .map(|(name, poly)| {
            let n = people
                .iter()
                .filter(|p| poly.contains([(p.bbox.x1 + p.bbox.x2) / 2.0 / w, p.bbox.y2 / h]))
                .count() as u32;
            (name.clone(), n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square() -> Polygon {
        Polygon::new(vec![[0.2, 0.2], [0.6, 0.2], [0.6, 0.6], [0.2, 0.6]]).unwrap()
    }

    #[test]
    fn containment_and_signed_distance() {
        let s = square();
        assert!(s.contains([0.3, 0.3]));
        assert!(!s.contains([0.7, 0.3]));
        assert!((s.signed_distance([0.3, 0.4]) - 0.1).abs() < 1e-6);
        assert!((s.signed_distance([0.7, 0.4]) + 0.1).abs() < 1e-6);
        assert!(Polygon::new(vec![[0.0, 0.0], [1.0, 1.0]]).is_none());
    }

    #[test]
    fn box_overlap_is_a_fraction() {
        let s = square();
        assert_eq!(s.overlap_fraction([0.3, 0.3, 0.5, 0.5]), 1.0);
        assert_eq!(s.overlap_fraction([0.7, 0.7, 0.9, 0.9]), 0.0);
        let half = s.overlap_fraction([0.5, 0.3, 0.7, 0.5]);
        assert!((half - 0.5).abs() < 0.01, "{half}");
    }

    #[test]
    fn line_sides_follow_the_in_heading() {
        // A horizontal line; walking up the image is "in".
        let l = CountingLine::new([0.1, 0.5], [0.9, 0.5], Heading::Up).unwrap();
        assert!(l.side_distance([0.5, 0.4]) > 0.0);
        assert!(l.side_distance([0.5, 0.6]) < 0.0);
        // Same line drawn the other way round: same meaning.
        let r = CountingLine::new([0.9, 0.5], [0.1, 0.5], Heading::Up).unwrap();
        assert!(r.side_distance([0.5, 0.4]) > 0.0);
        assert!(l.spans([0.5, 0.3]) && !l.spans([0.95, 0.3]));
        // A heading along the line can never be crossed.
        assert!(CountingLine::new([0.1, 0.5], [0.9, 0.5], Heading::Left).is_none());
    }

    #[test]
    fn occupancy_counts_people_by_their_feet() {
        use crate::track::TrackedPerson;
        let zones = vec![
            (
                "left".to_string(),
                Polygon::new(vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]).unwrap(),
            ),
            (
                "empty".to_string(),
                Polygon::new(vec![[0.9, 0.9], [1.0, 0.9], [1.0, 1.0]]).unwrap(),
            ),
        ];
        let person = |x1: f32, x2: f32| TrackedPerson {
            id: 1,
            bbox: crate::geom::BBox {
                x1,
                y1: 10.0,
                x2,
                y2: 90.0,
            },
            score: 0.9,
            visible: true,
            first_seen: 0.0,
            last_seen: 0.0,
        };
        // 200 px wide: feet at x = 50 and 90 (left of the border at 100), and 150.
        let people = [person(40.0, 60.0), person(60.0, 120.0), person(140.0, 160.0)];
        let occ = occupancy(&zones, &people, 200, 100);
        assert_eq!(occ["left"], 2);
        assert_eq!(occ["empty"], 0);
    }
}
