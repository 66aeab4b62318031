//! Multi-person tracking: stable ids across frames, through short misses and occlusions.
//!
//! The method is in the SORT/ByteTrack family, chosen for being cheap (tens of microseconds per frame)
//! and needing no appearance model (no pixels, no biometric features):
//!
//! - **Motion model**: each track carries centre and size with a velocity, updated by an alpha-beta filter
//!   in *seconds*, not frames, so a variable frame rate or frames skipped by the motion gate do not
//!   distort it.
//! - **Association** by IoU between predicted track boxes and detections, solved optimally (Hungarian)
//!   in three rounds: (1) confident detections against confirmed tracks, where a track that is currently
//!   unseen has its predicted box grown with the time it has been missing (buffered IoU), so a person who
//!   reappears after an occlusion a little away from the prediction is still matched; (2) weak detections
//!   (between `low_score` and `high_score`) against confirmed tracks that were seen last frame — a person
//!   half-hidden behind another keeps the id instead of losing it (ByteTrack's idea); (3) confident
//!   detections against tentative tracks.
//! - **Lifecycle**: a track is tentative until it has been matched in `min_hits` consecutive updates, and
//!   only then gets a public id, so a one-frame false positive never consumes an id. A confirmed track
//!   survives `max_lost_secs` without a match, predicted forward, then ends.

use serde::{Deserialize, Serialize};

use crate::assign::assign;
use crate::detect::Detection;
use crate::geom::BBox;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Detections at or above this score start tracks and are matched first. Not set in this section:
    /// it is `detector.score_threshold` (see `NodeConfig::tracker_config`).
    #[serde(skip)]
    pub high_score: f32,
    /// Detections from here up to `high_score` only keep existing tracks alive.
    pub low_score: f32,
    /// Minimum IoU between a predicted track box and a confident detection to match them.
    pub match_iou: f32,
    /// Minimum IoU for weak detections; stricter, since weak detections are often clutter.
    pub low_match_iou: f32,
    /// Consecutive matches before a track is confirmed and gets an id.
    pub min_hits: u32,
    /// How long a confirmed track may go unmatched before it ends.
    pub max_lost_secs: f64,
    /// How much an unseen track's box grows per second of absence, for matching (0.3 = 30%/s each side).
    pub lost_box_growth_per_sec: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            high_score: 0.5,
            low_score: 0.3,
            match_iou: 0.3,
            low_match_iou: 0.5,
            min_hits: 3,
            max_lost_secs: 2.0,
            lost_box_growth_per_sec: 0.3,
        }
    }
}

/// A confirmed person as of the latest update.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TrackedPerson {
    pub id: u64,
    pub bbox: BBox,
    /// Score of the detection matched in this update (or the last one, when not `visible`).
    pub score: f32,
    /// Matched in this update; otherwise the box is a prediction during a short miss.
    pub visible: bool,
    /// Stream time (seconds) the track was first detected.
    pub first_seen: f64,
    /// Stream time of the last matched detection.
    pub last_seen: f64,
}

/// Position filter gains. Position follows the measurement closely (people change direction often);
/// velocity is smoothed more.
const ALPHA: f32 = 0.7;
const BETA: f32 = 0.3;
/// Never extrapolate motion further than this: a track lost for long stays near where it was last seen.
const MAX_EXTRAPOLATE_SECS: f32 = 1.0;
const MAX_BOX_GROWTH: f32 = 0.5;
/// Cost used for pairs that fail the IoU gate; anything above 1 can never be a real `1 - IoU`.
const FORBIDDEN: f64 = 1e6;

#[derive(Clone, Debug)]
struct Track {
    id: Option<u64>,
    /// centre x, centre y, width, height at time `t`
    state: [f32; 4],
    vel: [f32; 4],
    t: f64,
    hits: u32,
    missed: u32,
    score: f32,
    first_seen: f64,
}

impl Track {
    fn new(d: &Detection, now: f64) -> Self {
        Self {
            id: None,
            state: cxcywh(&d.bbox),
            vel: [0.0; 4],
            t: now,
            hits: 1,
            missed: 0,
            score: d.score,
            first_seen: now,
        }
    }

    fn predict(&self, now: f64) -> [f32; 4] {
        let dt = ((now - self.t) as f32).clamp(0.0, MAX_EXTRAPOLATE_SECS);
        let mut p = [0.0; 4];
        for (i, p) in p.iter_mut().enumerate() {
            *p = self.state[i] + self.vel[i] * dt;
        }
        p[2] = p[2].max(1.0);
        p[3] = p[3].max(1.0);
        p
    }

    fn predicted_box(&self, now: f64) -> BBox {
        let [cx, cy, w, h] = self.predict(now);
        BBox::from_cxcywh(cx, cy, w, h)
    }

    /// The box used for matching: grown while the track is unseen, since the person may have changed pace.
    fn matching_box(&self, now: f64, growth_per_sec: f32) -> BBox {
        let b = self.predicted_box(now);
        if self.missed == 0 {
            return b;
        }
        let g = (growth_per_sec * (now - self.t) as f32).clamp(0.0, MAX_BOX_GROWTH);
        b.expanded(g)
    }

    fn update(&mut self, d: &Detection, now: f64) {
        let z = cxcywh(&d.bbox);
        let dt = (now - self.t) as f32;
        if self.hits == 1 && dt > 0.0 {
            // Second sighting: the displacement is the best velocity estimate there is.
            for ((v, zi), si) in self.vel.iter_mut().zip(z).zip(self.state) {
                *v = (zi - si) / dt;
            }
            self.state = z;
        } else {
            let pred = self.predict(now);
            for (((s, v), zi), pi) in self.state.iter_mut().zip(&mut self.vel).zip(z).zip(pred) {
                let r = zi - pi;
                *s = pi + ALPHA * r;
                if dt > 0.0 {
                    *v += BETA * r / dt.max(1e-3);
                }
            }
        }
        self.t = now;
        self.hits += 1;
        self.missed = 0;
        self.score = d.score;
    }
}

fn cxcywh(b: &BBox) -> [f32; 4] {
    let (cx, cy) = b.center();
    [cx, cy, b.width(), b.height()]
}

/// Per-camera tracker. Pure: time comes in as stream seconds; no I/O, no pixels.
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    people: Vec<TrackedPerson>,
    ended: Vec<TrackedPerson>,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
            people: Vec::new(),
            ended: Vec::new(),
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Confirmed people after the last update, visible or briefly predicted.
    pub fn people(&self) -> &[TrackedPerson] {
        &self.people
    }

    /// Tracks that ended in the last update (gone longer than `max_lost_secs`), as last seen.
    pub fn ended(&self) -> &[TrackedPerson] {
        &self.ended
    }

    /// How many ids have been handed out so far.
    pub fn ids_issued(&self) -> u64 {
        self.next_id - 1
    }

    /// Feeds one frame's detections at stream time `now` (seconds, non-decreasing).
    pub fn update(&mut self, dets: &[Detection], now: f64) {
        let cfg = self.cfg.clone();
        let (high, low): (Vec<&Detection>, Vec<&Detection>) = dets
            .iter()
            .filter(|d| d.score >= cfg.low_score)
            .partition(|d| d.score >= cfg.high_score);
        let mut high_used = vec![false; high.len()];
        let mut matched = vec![false; self.tracks.len()];

        // Round 1: confident detections against confirmed tracks (seen or briefly unseen).
        let confirmed: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].id.is_some())
            .collect();
        let boxes: Vec<BBox> = confirmed
            .iter()
            .map(|&i| self.tracks[i].matching_box(now, cfg.lost_box_growth_per_sec))
            .collect();
        for (row, col) in match_iou(&boxes, &high, &high_used, cfg.match_iou) {
            self.tracks[confirmed[row]].update(high[col], now);
            matched[confirmed[row]] = true;
            high_used[col] = true;
        }

        // Round 2: weak detections keep confirmed tracks that were seen last update.
        let seen: Vec<usize> = confirmed
            .iter()
            .copied()
            .filter(|&i| !matched[i] && self.tracks[i].missed == 0)
            .collect();
        let boxes: Vec<BBox> = seen.iter().map(|&i| self.tracks[i].predicted_box(now)).collect();
        let low_used = vec![false; low.len()];
        for (row, col) in match_iou(&boxes, &low, &low_used, cfg.low_match_iou) {
            self.tracks[seen[row]].update(low[col], now);
            matched[seen[row]] = true;
        }

        // Round 3: remaining confident detections against tentative tracks.
        let tentative: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].id.is_none())
            .collect();
        let boxes: Vec<BBox> = tentative.iter().map(|&i| self.tracks[i].predicted_box(now)).collect();
        for (row, col) in match_iou(&boxes, &high, &high_used, cfg.match_iou) {
            let t = &mut self.tracks[tentative[row]];
            t.update(high[col], now);
            matched[tentative[row]] = true;
            high_used[col] = true;
            if t.hits >= cfg.min_hits {
                t.id = Some(self.next_id);
                self.next_id += 1;
            }
        }

        // Unmatched: tentative tracks are dropped at once, confirmed ones wait up to max_lost_secs.
        self.ended.clear();
        let mut i = 0;
        while i < self.tracks.len() {
            if !matched[i] {
                let t = &mut self.tracks[i];
                t.missed += 1;
                let gone = t.id.is_none() || now - t.t > cfg.max_lost_secs;
                if gone {
                    if let Some(id) = t.id {
                        self.ended.push(person(id, t, now));
                    }
                    self.tracks.swap_remove(i);
                    matched.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }

        // New tentative tracks from confident detections nobody claimed.
        for (d, _) in high.iter().zip(&high_used).filter(|(_, used)| !**used) {
            let mut t = Track::new(d, now);
            if cfg.min_hits <= 1 {
                t.id = Some(self.next_id);
                self.next_id += 1;
            }
            self.tracks.push(t);
        }

        self.people.clear();
        for t in &self.tracks {
            if let Some(id) = t.id {
                self.people.push(person(id, t, now));
            }
        }
        self.people.sort_by_key(|p| p.id);
    }
}

fn person(id: u64, t: &Track, now: f64) -> TrackedPerson {
    let visible = t.missed == 0;
    TrackedPerson {
        id,
        bbox: if visible {
            BBox::from_cxcywh(t.state[0], t.state[1], t.state[2], t.state[3])
        } else {
            t.predicted_box(now)
        },
        score: t.score,
        visible,
        first_seen: t.first_seen,
        last_seen: t.t,
    }
}

/// Optimal assignment of `boxes` (rows) to the not-yet-used detections (columns) with IoU >= `min_iou`.
/// Returns (row, detection index) pairs.
fn match_iou(boxes: &[BBox], dets: &[&Detection], used: &[bool], min_iou: f32) -> Vec<(usize, usize)> {
    let cols: Vec<usize> = (0..dets.len()).filter(|&c| !used[c]).collect();
    if boxes.is_empty() || cols.is_empty() {
        return Vec::new();
    }
    let cost: Vec<Vec<f64>> = boxes
        .iter()
        .map(|b| {
            cols.iter()
                .map(|&c| {
                    let iou = b.iou(&dets[c].bbox);
                    if iou >= min_iou {
                        1.0 - iou as f64
                    } else {
                        FORBIDDEN
                    }
                })
                .collect()
        })
        .collect();
    assign(&cost, cols.len())
        .into_iter()
        .enumerate()
        .filter_map(|(row, col)| col.filter(|&c| cost[row][c] < FORBIDDEN).map(|c| (row, cols[c])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPS: f64 = 10.0;

    fn det(cx: f32, cy: f32, w: f32, h: f32, score: f32) -> Detection {
        Detection {
            bbox: BBox::from_cxcywh(cx, cy, w, h),
            score,
            class: 0,
        }
    }

    /// Runs frames through a tracker; returns, per frame, the visible (id, centre x, height).
    fn run(tr: &mut Tracker, frames: &[Vec<Detection>]) -> Vec<Vec<(u64, f32, f32)>> {
        frames
            .iter()
            .enumerate()
            .map(|(f, dets)| {
                tr.update(dets, f as f64 / FPS);
                tr.people()
                    .iter()
                    .filter(|p| p.visible)
                    .map(|p| (p.id, p.bbox.center().0, p.bbox.height()))
                    .collect()
            })
            .collect()
    }

    /// The id of the person near centre x `x` whose box is about `h` tall.
    fn id_at(frame: &[(u64, f32, f32)], x: f32, h: f32) -> Option<u64> {
        frame
            .iter()
            .find(|(_, cx, bh)| (cx - x).abs() < 15.0 && (bh - h).abs() < 10.0)
            .map(|(id, _, _)| *id)
    }

    #[test]
    fn one_walker_gets_one_id_after_min_hits() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let frames: Vec<Vec<Detection>> = (0..30)
            .map(|f| vec![det(100.0 + 5.0 * f as f32, 200.0, 40.0, 100.0, 0.8)])
            .collect();
        let out = run(&mut tr, &frames);
        assert!(out[0].is_empty() && out[1].is_empty(), "tentative tracks have no id");
        assert_eq!(out[2].len(), 1);
        assert_eq!(out[2][0].0, 1);
        assert!((out[2][0].1 - 110.0).abs() < 0.5, "{:?}", out[2]);
        assert!(out[2..].iter().all(|f| f.len() == 1 && f[0].0 == 1));
        assert_eq!(tr.ids_issued(), 1);
    }

    #[test]
    fn crossing_paths_keep_their_ids() {
        let mut tr = Tracker::new(TrackerConfig::default());
        // A walks right, nearer the camera (bigger); B walks left, further away. They overlap mid-way.
        let frames: Vec<Vec<Detection>> = (0..40)
            .map(|f| {
                let f = f as f32;
                vec![
                    det(100.0 + 10.0 * f, 300.0, 60.0, 160.0, 0.9),
                    det(500.0 - 10.0 * f, 280.0, 45.0, 120.0, 0.85),
                ]
            })
            .collect();
        let out = run(&mut tr, &frames);
        let a = id_at(&out[3], 130.0, 160.0).unwrap();
        let b = id_at(&out[3], 470.0, 120.0).unwrap();
        assert_ne!(a, b);
        for (f, frame) in out.iter().enumerate().skip(3) {
            let f = f as f32;
            assert_eq!(id_at(frame, 100.0 + 10.0 * f, 160.0), Some(a), "frame {f}: {frame:?}");
            assert_eq!(id_at(frame, 500.0 - 10.0 * f, 120.0), Some(b), "frame {f}: {frame:?}");
        }
        assert_eq!(tr.ids_issued(), 2);
    }

    #[test]
    fn occlusion_for_a_few_frames_keeps_the_id() {
        let mut tr = Tracker::new(TrackerConfig::default());
        // Walks right 8 px/frame; hidden behind a pillar for frames 10..16 (0.6 s).
        let frames: Vec<Vec<Detection>> = (0..30)
            .map(|f| {
                if (10..16).contains(&f) {
                    vec![]
                } else {
                    vec![det(100.0 + 8.0 * f as f32, 200.0, 40.0, 100.0, 0.8)]
                }
            })
            .collect();
        let out = run(&mut tr, &frames);
        assert_eq!(id_at(&out[9], 100.0 + 8.0 * 9.0, 100.0), Some(1));
        assert!(out[12].is_empty(), "not visible while hidden");
        // During the miss the person is still known, as a prediction.
        assert_eq!(out[16].len(), 1);
        assert_eq!(out[16][0].0, 1, "same id after the occlusion: {:?}", out[16]);
        assert_eq!(tr.ids_issued(), 1);
    }

    #[test]
    fn leaving_ends_the_track_and_a_newcomer_gets_a_new_id() {
        let cfg = TrackerConfig::default();
        let mut tr = Tracker::new(cfg.clone());
        let mut ended_at = None;
        for f in 0..80 {
            let now = f as f64 / FPS;
            let dets = if f < 20 {
                vec![det(300.0, 200.0, 40.0, 100.0, 0.9)]
            } else if f >= 60 {
                vec![det(100.0, 220.0, 40.0, 100.0, 0.9)]
            } else {
                vec![]
            };
            tr.update(&dets, now);
            if let Some(e) = tr.ended().first() {
                assert_eq!(e.id, 1);
                ended_at.get_or_insert(now);
            }
        }
        // Last seen at 1.9 s; ends once more than max_lost_secs have passed.
        let ended_at = ended_at.expect("track 1 ended");
        assert!(
            ended_at > 1.9 + cfg.max_lost_secs && ended_at < 1.9 + cfg.max_lost_secs + 0.15,
            "{ended_at}"
        );
        assert_eq!(tr.people().iter().map(|p| p.id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_one_frame_false_positive_never_gets_an_id() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let mut frames: Vec<Vec<Detection>> = (0..10).map(|_| vec![]).collect();
        frames[4] = vec![det(50.0, 50.0, 20.0, 40.0, 0.95)];
        run(&mut tr, &frames);
        assert_eq!(tr.ids_issued(), 0);
    }

    #[test]
    fn weak_detections_continue_a_track_but_never_start_one() {
        let mut tr = Tracker::new(TrackerConfig::default());
        // Confident for 5 frames, then half-hidden (score 0.35) for 10: same id throughout.
        let frames: Vec<Vec<Detection>> = (0..15)
            .map(|f| {
                let s = if f < 5 { 0.9 } else { 0.35 };
                vec![det(200.0 + 4.0 * f as f32, 200.0, 40.0, 100.0, s)]
            })
            .collect();
        let out = run(&mut tr, &frames);
        assert!(out[5..].iter().all(|f| f.len() == 1 && f[0].0 == 1), "{out:?}");
        // A weak-only person never becomes a track.
        let mut tr = Tracker::new(TrackerConfig::default());
        let weak: Vec<Vec<Detection>> = (0..10).map(|_| vec![det(200.0, 200.0, 40.0, 100.0, 0.4)]).collect();
        run(&mut tr, &weak);
        assert_eq!(tr.ids_issued(), 0);
    }

    #[test]
    fn variable_frame_rate_does_not_break_the_motion_model() {
        let mut tr = Tracker::new(TrackerConfig::default());
        // 100 px/s walker sampled at irregular times (as with the motion gate skipping frames).
        let times = [0.0, 0.1, 0.2, 0.5, 0.6, 1.4, 1.5, 1.6, 2.5];
        for &t in &times {
            tr.update(&[det(100.0 + 100.0 * t as f32, 200.0, 40.0, 100.0, 0.9)], t);
        }
        assert_eq!(tr.ids_issued(), 1);
        let p = tr.people()[0];
        assert!(p.visible);
        assert!((p.bbox.center().0 - 350.0).abs() < 5.0, "{p:?}");
    }
}
