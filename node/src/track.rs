//! Multi-person tracking: identities that last across frames, short misses, occlusions and crossings.
//!
//! The method is in the SORT/ByteTrack family, with an appearance cue for re-identification within one
//! camera (DeepSORT's idea, with colour histograms instead of a network):
//!
//! - **Motion model**: a constant-velocity Kalman filter on the box's centre, width and height, in
//!   *seconds*, not frames, so a variable frame rate or frames skipped by the motion gate do not distort it.
//!   Its noise is proportional to the person's height in the image: someone near the camera moves more
//!   pixels per second, and their box jitters by more pixels, than someone far away.
//! - **Appearance** ([`Appearance`]): colour histograms of torso and legs, learnt slowly from clear views
//!   (a box that overlaps another person's is not learnt from). Two boxes that plainly show different
//!   clothes are never matched, however well they overlap: that is what keeps two people apart where their
//!   paths cross.
//! - **Association**, solved optimally (Hungarian) in rounds:
//!   1. confident detections against confirmed tracks, by IoU with the predicted box (grown while a track
//!      is unseen, since the person may have changed pace) blended with appearance;
//!   2. weak detections (between `low_score` and `high_score`) against confirmed tracks seen last update,
//!      by IoU: a person half-hidden behind another keeps the id (ByteTrack's idea);
//!   3. re-identification: confident detections nobody claimed against tracks lost for a while, by
//!      appearance alone, within the distance the person could have walked and at a similar size; this is
//!      what carries an identity through a long occlusion, when the motion model has nothing left to say;
//!   4. confident detections against tentative tracks.
//! - **Lifecycle**: a track is tentative until matched in `min_hits` consecutive updates, and only then
//!   gets a public id, so a one-frame false positive never consumes one. A confirmed track survives
//!   `max_lost_secs` unmatched, then ends. When the camera's frame size changes, every track ends at once:
//!   a box in the old coordinates means nothing in the new ones.

use serde::{Deserialize, Serialize};

use crate::appearance::Appearance;
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
    /// Use what people look like (colour of torso and legs, in memory only) to keep identities apart
    /// and to find a person again after an occlusion.
    pub appearance: bool,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            high_score: 0.5,
            low_score: 0.3,
            match_iou: 0.3,
            low_match_iou: 0.5,
            min_hits: 3,
            // A shopper hidden behind a shelf end, a pillar or another shopper for a few seconds is still
            // the same shopper; re-identification needs the track to outlive such an occlusion. Longer
            // would keep people who left "present" for the rules (crowding, dwell) for longer.
            max_lost_secs: 4.0,
            lost_box_growth_per_sec: 0.3,
            appearance: true,
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

// The motion model's noise, as fractions of the person's height in the image (h):
/// A detector's box edges jitter by about 5 % of the person's height from frame to frame.
const MEASURE_STD: f32 = 0.05;
/// Unmodelled movement of the box (sway, limbs, a step aside), per second: about 0.16 h per √s, which is
/// 5 % of h per frame at 10 frames/s, the detector's jitter.
const POSITION_NOISE: f32 = 0.16;
/// How fast velocity changes, per second: 0.2 h/s per √s, about 0.35 m/s for a 1.7 m person. People walk
/// smoothly; a stop or a turn takes a second or two.
const VELOCITY_NOISE: f32 = 0.2;
/// The first sighting says nothing about velocity: anything up to about a body height per second (a
/// brisk walk is 0.8 h/s).
const INITIAL_VELOCITY_STD: f32 = 0.6;
/// Never extrapolate motion further than this: a track lost for long stays near where it was last seen.
const MAX_EXTRAPOLATE_SECS: f64 = 1.0;
const MAX_BOX_GROWTH: f32 = 0.5;
/// Cost used for pairs that fail a gate; anything above 1 can never be a real cost.
const FORBIDDEN: f64 = 1e6;

// Appearance (see `appearance.rs`; distances run from 0, same colours, to 1, none in common):
/// Weight of appearance against IoU when matching a confident detection to a track.
const APPEARANCE_WEIGHT: f64 = 0.5;
/// Beyond this distance a box plainly shows someone else: two people in similar clothes are typically
/// 0.2-0.4 apart, different clothes 0.6 and more.
const APPEARANCE_GATE: f32 = 0.6;
/// Re-identification by appearance alone must be surer than matching helped by overlap.
const REID_MAX_DISTANCE: f32 = 0.35;
/// How far from where a lost person was last seen they may be found again: one body height, or the
/// distance walked at one body height per second if longer.
const REID_RADIUS_HEIGHTS_PER_SEC: f32 = 1.0;
/// A person found again is about the same size (they cannot have walked much nearer or further).
const REID_MAX_SIZE_RATIO: f32 = 1.4;
/// How fast a track's appearance follows what is seen, per clear view. Clothes do not change, so the
/// average spans about 20 views (two seconds at 10 detected frames/s): a few odd ones (a person bending,
/// a trolley in the box) move it little.
const LEARN_RATE: f32 = 0.05;
/// A detection overlapping another one by this IoU or more mixes two people's colours: not learnt from.
const CLEAR_VIEW_IOU: f32 = 0.2;
/// Tracks kept per camera at most (each detector output is bounded too); a frame with more people than
/// this starts no new tracks until some end.
pub const MAX_TRACKS: usize = 256;

/// One coordinate (centre x, centre y, width or height) and its velocity under a constant-velocity
/// Kalman filter. The four coordinates are independent in this model, so four 2x2 filters are exactly
/// the 8x8 one, at a fraction of the cost.
#[derive(Clone, Copy, Debug)]
struct Axis {
    x: f32,
    v: f32,
    pxx: f32,
    pxv: f32,
    pvv: f32,
}

impl Axis {
    fn new(x: f32, h: f32) -> Self {
        let (px, pv) = (2.0 * MEASURE_STD * h, INITIAL_VELOCITY_STD * h);
        Self {
            x,
            v: 0.0,
            pxx: px * px,
            pxv: 0.0,
            pvv: pv * pv,
        }
    }

    fn predict(&mut self, dt: f32, h: f32) {
        self.x += self.v * dt;
        let (qp, qv) = (POSITION_NOISE * h, VELOCITY_NOISE * h);
        self.pxx += 2.0 * dt * self.pxv + dt * dt * self.pvv + qp * qp * dt;
        self.pxv += dt * self.pvv;
        self.pvv += qv * qv * dt;
    }

    fn update(&mut self, z: f32, h: f32) {
        let r = MEASURE_STD * h;
        let s = self.pxx + r * r;
        if !(s > 0.0 && s.is_finite()) {
            self.x = z;
            return;
        }
        let (kx, kv) = (self.pxx / s, self.pxv / s);
        let y = z - self.x;
        self.x += kx * y;
        self.v += kv * y;
        let (pxx, pxv) = (self.pxx, self.pxv);
        self.pxx = (1.0 - kx) * pxx;
        self.pxv = (1.0 - kx) * pxv;
        self.pvv -= kv * pxv;
    }
}

#[derive(Clone, Debug)]
struct Track {
    id: Option<u64>,
    /// centre x, centre y, width, height, as predicted (or updated) for time `t`
    axes: [Axis; 4],
    t: f64,
    /// Time of the last matched detection, and that detection's box (cx, cy, w, h).
    seen_at: f64,
    seen: [f32; 4],
    /// Each coordinate's filtered value and velocity right after that detection: what the box shown
    /// and matched while the track is unseen is extrapolated from (for at most MAX_EXTRAPOLATE_SECS),
    /// while the filter itself keeps predicting, so that a person found again after a long absence is
    /// compared with where the motion model expects them, not with where the box was held.
    filtered: [(f32, f32); 4],
    hits: u32,
    missed: u32,
    score: f32,
    first_seen: f64,
    look: Option<Appearance>,
}

impl Track {
    fn new(d: &Detection, look: Option<&Appearance>, now: f64) -> Self {
        let z = cxcywh(&d.bbox);
        let h = z[3].max(1.0);
        Self {
            id: None,
            axes: z.map(|v| Axis::new(v, h)),
            t: now,
            seen_at: now,
            seen: z,
            filtered: z.map(|v| (v, 0.0)),
            hits: 1,
            missed: 0,
            score: d.score,
            first_seen: now,
            look: look.cloned(),
        }
    }

    fn height(&self) -> f32 {
        self.bbox().height().max(1.0)
    }

    /// Moves the track's state forward to `now`.
    fn predict(&mut self, now: f64) {
        let dt = now - self.t;
        if dt <= 0.0 {
            return;
        }
        let h = self.height();
        for a in &mut self.axes {
            a.predict(dt as f32, h);
        }
        self.axes[2].x = self.axes[2].x.max(1.0);
        self.axes[3].x = self.axes[3].x.max(1.0);
        self.t = now;
    }

    /// The box as of time `t`: the filter's own while the track is seen; while it is not, extrapolated
    /// from the last sighting for at most MAX_EXTRAPOLATE_SECS, then held (a track lost for long stays
    /// near where it was last seen).
    fn bbox(&self) -> BBox {
        let [cx, cy, w, h] = if self.missed == 0 {
            self.axes.map(|a| a.x)
        } else {
            let e = (self.t - self.seen_at).clamp(0.0, MAX_EXTRAPOLATE_SECS) as f32;
            self.filtered.map(|(x, v)| x + v * e)
        };
        BBox::from_cxcywh(cx, cy, w.max(1.0), h.max(1.0))
    }

    /// The box used for matching: grown while the track is unseen, since the person may have changed pace.
    fn matching_box(&self, now: f64, growth_per_sec: f32) -> BBox {
        let b = self.bbox();
        if self.missed == 0 {
            return b;
        }
        let g = (growth_per_sec * (now - self.seen_at) as f32).clamp(0.0, MAX_BOX_GROWTH);
        b.expanded(g)
    }

    /// Takes detection `d`, and learns from `look` when it is a clear view of the person.
    fn update(&mut self, d: &Detection, look: Option<&Appearance>, now: f64) {
        let z = cxcywh(&d.bbox);
        let h = self.height();
        for (a, z) in self.axes.iter_mut().zip(z) {
            a.update(z, h);
        }
        self.axes[2].x = self.axes[2].x.max(1.0);
        self.axes[3].x = self.axes[3].x.max(1.0);
        self.seen_at = now;
        self.seen = z;
        self.filtered = self.axes.map(|a| (a.x, a.v));
        self.hits += 1;
        self.missed = 0;
        self.score = d.score;
        if let Some(seen) = look {
            match &mut self.look {
                Some(l) => l.learn(seen, LEARN_RATE),
                None => self.look = Some(seen.clone()),
            }
        }
    }
}

fn cxcywh(b: &BBox) -> [f32; 4] {
    let (cx, cy) = b.center();
    [cx, cy, b.width(), b.height()]
}

/// Per-camera tracker. Pure: time comes in as stream seconds; no I/O, no pixels (only the appearance
/// descriptions the caller made of each detection).
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    people: Vec<TrackedPerson>,
    ended: Vec<TrackedPerson>,
    frame_size: Option<(u32, u32)>,
}

/// One frame's detections as the tracker sees them.
struct Frame<'a> {
    dets: &'a [Detection],
    looks: &'a [Option<Appearance>],
    /// Confident detections (indexes into `dets`) and whether each is already taken.
    high: Vec<usize>,
    high_used: Vec<bool>,
    low: Vec<usize>,
    /// A detection overlapping another: its colours are not learnt.
    crowded: Vec<bool>,
}

impl Frame<'_> {
    fn look(&self, d: usize) -> Option<&Appearance> {
        self.looks.get(d).and_then(Option::as_ref)
    }
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
            people: Vec::new(),
            ended: Vec::new(),
            frame_size: None,
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Confirmed people after the last update, visible or briefly predicted.
    pub fn people(&self) -> &[TrackedPerson] {
        &self.people
    }

    /// Tracks that ended in the last update (gone longer than `max_lost_secs`, or the frame size
    /// changed), as last known.
    pub fn ended(&self) -> &[TrackedPerson] {
        &self.ended
    }

    /// How many ids have been handed out so far.
    pub fn ids_issued(&self) -> u64 {
        self.next_id - 1
    }

    /// The frame size of the last update that gave one.
    pub fn frame_size(&self) -> Option<(u32, u32)> {
        self.frame_size
    }

    /// Feeds one frame's detections at stream time `now` (seconds, non-decreasing), without appearance.
    pub fn update(&mut self, dets: &[Detection], now: f64) {
        self.update_with(dets, &[], None, now);
    }

    /// Feeds one frame: its detections, what each detected person looks like (`looks[i]` for `dets[i]`;
    /// empty when unknown), the frame's size when known, and its stream time `now` (seconds,
    /// non-decreasing). A frame size other than the last one ends every track first.
    pub fn update_with(
        &mut self,
        dets: &[Detection],
        looks: &[Option<Appearance>],
        size: Option<(u32, u32)>,
        now: f64,
    ) {
        self.ended.clear();
        if let Some(size) = size {
            if self.frame_size.is_some_and(|s| s != size) {
                for t in self.tracks.drain(..) {
                    if let Some(id) = t.id {
                        self.ended.push(person(id, &t));
                    }
                }
            }
            self.frame_size = Some(size);
        }
        let cfg = self.cfg.clone();
        let looks = if cfg.appearance && looks.len() == dets.len() {
            looks
        } else {
            &[]
        };
        // A box that is not a finite, non-empty rectangle is nobody (and would poison the assignment).
        let usable = |i: &usize| {
            let b = &dets[*i].bbox;
            [b.x1, b.y1, b.x2, b.y2].iter().all(|v| v.is_finite()) && b.x2 > b.x1 && b.y2 > b.y1
        };
        let considered: Vec<usize> = (0..dets.len())
            .filter(usable)
            .filter(|&i| dets[i].score >= cfg.low_score)
            .collect();
        let high: Vec<usize> = considered
            .iter()
            .copied()
            .filter(|&i| dets[i].score >= cfg.high_score)
            .collect();
        let low: Vec<usize> = considered
            .iter()
            .copied()
            .filter(|&i| dets[i].score < cfg.high_score)
            .collect();
        // Only learning reads this, and only confident detections with a look are learnt from.
        let mut crowded = vec![false; dets.len()];
        if !looks.is_empty() {
            for &i in &high {
                crowded[i] = considered
                    .iter()
                    .any(|&j| j != i && dets[i].bbox.iou(&dets[j].bbox) >= CLEAR_VIEW_IOU);
            }
        }
        let mut f = Frame {
            dets,
            looks,
            high_used: vec![false; high.len()],
            high,
            low,
            crowded,
        };
        for t in &mut self.tracks {
            t.predict(now);
        }
        let mut matched = vec![false; self.tracks.len()];

        // Round 1: confident detections against confirmed tracks (seen or unseen), IoU and appearance.
        let confirmed: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].id.is_some())
            .collect();
        let growth = cfg.lost_box_growth_per_sec;
        self.take_confident(&confirmed, &mut f, &mut matched, now, |t, f, d| {
            let iou = t.matching_box(now, growth).iou(&f.dets[d].bbox);
            if iou.is_nan() || iou < cfg.match_iou {
                return FORBIDDEN;
            }
            match (&t.look, f.look(d)) {
                (Some(a), Some(b)) => {
                    let dist = a.distance(b);
                    if dist > APPEARANCE_GATE {
                        FORBIDDEN
                    } else {
                        (1.0 - APPEARANCE_WEIGHT) * (1.0 - iou as f64) + APPEARANCE_WEIGHT * dist as f64
                    }
                }
                _ => 1.0 - iou as f64,
            }
        });

        // Round 2: weak detections keep confirmed tracks that were seen last update.
        let seen: Vec<usize> = confirmed
            .iter()
            .copied()
            .filter(|&i| !matched[i] && self.tracks[i].missed == 0)
            .collect();
        let cost: Vec<Vec<f64>> = seen
            .iter()
            .map(|&i| {
                let b = self.tracks[i].bbox();
                f.low
                    .iter()
                    .map(|&d| iou_cost(&b, &f.dets[d].bbox, cfg.low_match_iou))
                    .collect()
            })
            .collect();
        for (row, col) in solve(&cost, f.low.len()) {
            let d = f.low[col];
            // A weak detection is usually a partial view (half hidden): kept, but not learnt from.
            self.tracks[seen[row]].update(&f.dets[d], None, now);
            matched[seen[row]] = true;
        }

        // Round 3: re-identification of tracks lost for a while, by appearance, near where they were.
        if !f.looks.is_empty() {
            let lost: Vec<usize> = confirmed
                .iter()
                .copied()
                .filter(|&i| !matched[i] && self.tracks[i].missed > 0 && self.tracks[i].look.is_some())
                .collect();
            self.take_confident(&lost, &mut f, &mut matched, now, |t, f, d| reid_cost(t, f, d, now));
        }

        // Round 4: remaining confident detections against tentative tracks.
        let tentative: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].id.is_none())
            .collect();
        let grown = self.take_confident(&tentative, &mut f, &mut matched, now, |t, f, d| {
            iou_cost(&t.bbox(), &f.dets[d].bbox, cfg.match_iou)
        });
        for i in grown {
            let t = &mut self.tracks[i];
            if t.hits >= cfg.min_hits {
                t.id = Some(self.next_id);
                self.next_id += 1;
            }
        }

        // Unmatched: tentative tracks are dropped at once, confirmed ones wait up to max_lost_secs.
        let mut i = 0;
        while i < self.tracks.len() {
            if !matched[i] {
                let t = &mut self.tracks[i];
                t.missed += 1;
                let gone = t.id.is_none() || now - t.seen_at > cfg.max_lost_secs;
                if gone {
                    if let Some(id) = t.id {
                        self.ended.push(person(id, t));
                    }
                    self.tracks.swap_remove(i);
                    matched.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }

        // New tentative tracks from confident detections nobody claimed.
        for (c, &d) in f.high.iter().enumerate() {
            if f.high_used[c] || self.tracks.len() >= MAX_TRACKS {
                continue;
            }
            let look = if f.crowded[d] { None } else { f.look(d) };
            let mut t = Track::new(&f.dets[d], look, now);
            if cfg.min_hits <= 1 {
                t.id = Some(self.next_id);
                self.next_id += 1;
            }
            self.tracks.push(t);
        }

        self.people.clear();
        for t in &self.tracks {
            if let Some(id) = t.id {
                self.people.push(person(id, t));
            }
        }
        self.people.sort_by_key(|p| p.id);
    }

    /// Gives the confident detections nobody has taken yet to the tracks `rows` (indexes into
    /// `self.tracks`) at the least total `cost(track, frame, detection)`, FORBIDDEN meaning never; returns
    /// the tracks that took one.
    fn take_confident(
        &mut self,
        rows: &[usize],
        f: &mut Frame<'_>,
        matched: &mut [bool],
        now: f64,
        cost: impl Fn(&Track, &Frame<'_>, usize) -> f64,
    ) -> Vec<usize> {
        let free: Vec<usize> = (0..f.high.len()).filter(|&c| !f.high_used[c]).collect();
        let costs: Vec<Vec<f64>> = rows
            .iter()
            .map(|&i| free.iter().map(|&c| cost(&self.tracks[i], f, f.high[c])).collect())
            .collect();
        let mut took = Vec::new();
        for (row, col) in solve(&costs, free.len()) {
            let (i, c) = (rows[row], free[col]);
            let d = f.high[c];
            let clear = if f.crowded[d] { None } else { f.look(d) };
            self.tracks[i].update(&f.dets[d], clear, now);
            matched[i] = true;
            f.high_used[c] = true;
            took.push(i);
        }
        took
    }
}

/// The cost of giving lost track `t` the confident detection `d`, found by appearance alone.
fn reid_cost(t: &Track, f: &Frame<'_>, d: usize, now: f64) -> f64 {
    let (Some(a), Some(b)) = (&t.look, f.look(d)) else {
        return FORBIDDEN;
    };
    let z = cxcywh(&f.dets[d].bbox);
    let h = t.seen[3].max(1.0);
    let ratio = z[3] / h;
    if !(1.0 / REID_MAX_SIZE_RATIO..=REID_MAX_SIZE_RATIO).contains(&ratio) {
        return FORBIDDEN;
    }
    let lost_secs = ((now - t.seen_at) as f32).max(1.0);
    let dist = (z[0] - t.seen[0]).hypot(z[1] - t.seen[1]);
    if dist > REID_RADIUS_HEIGHTS_PER_SEC * h * lost_secs {
        return FORBIDDEN;
    }
    let looks = a.distance(b);
    if looks >= REID_MAX_DISTANCE {
        return FORBIDDEN;
    }
    looks as f64
}

fn iou_cost(a: &BBox, b: &BBox, min_iou: f32) -> f64 {
    let iou = a.iou(b);
    if iou >= min_iou {
        1.0 - iou as f64
    } else {
        FORBIDDEN
    }
}

/// Optimal assignment of rows to `cols` columns; only pairs below FORBIDDEN are returned.
fn solve(cost: &[Vec<f64>], cols: usize) -> Vec<(usize, usize)> {
    if cost.is_empty() || cols == 0 {
        return Vec::new();
    }
    assign(cost, cols)
        .into_iter()
        .enumerate()
        .filter_map(|(row, col)| col.filter(|&c| cost[row][c] < FORBIDDEN).map(|c| (row, c)))
        .collect()
}

fn person(id: u64, t: &Track) -> TrackedPerson {
    TrackedPerson {
        id,
        bbox: t.bbox(),
        score: t.score,
        visible: t.missed == 0,
        first_seen: t.first_seen,
        last_seen: t.seen_at,
    }
}

/// The tracker's settings as the node's configuration gives them.
impl crate::config::NodeConfig {
    /// The tracker settings with the detector's threshold as the one that starts tracks.
    pub fn tracker_config(&self) -> TrackerConfig {
        TrackerConfig {
            high_score: self.detector.score_threshold,
            ..self.tracker.clone()
        }
    }

    /// The lowest score any stage uses: the detector decodes down to here so the tracker sees weak boxes.
    pub fn decode_threshold(&self) -> f32 {
        self.detector.score_threshold.min(self.tracker.low_score)
    }
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

    /// A look made of one colour bin for the torso and one for the legs.
    fn look(torso: usize, legs: usize) -> Appearance {
        let mut a = [0.0; crate::appearance::BINS];
        let mut b = [0.0; crate::appearance::BINS];
        a[torso] = 1.0;
        b[legs] = 1.0;
        Appearance::from_histograms(a, b)
    }

    /// (id, x) of a person where the test expected them.
    type Sightings = Vec<(u64, f32)>;

    /// Two people walk towards each other, meet, stand together for a second and walk back the way they
    /// came. By motion alone each continues the other's path; what they wear says who is who.
    fn meet_and_turn_back(appearance: bool) -> (Sightings, Sightings) {
        let mut tr = Tracker::new(TrackerConfig {
            appearance,
            ..TrackerConfig::default()
        });
        let (red, blue) = (look(3, 0), look(48, 63));
        let path = |f: i32| -> f32 {
            match f {
                0..=14 => 15.0 * f as f32,
                15..=24 => 210.0,
                _ => 210.0 - 15.0 * (f - 24) as f32,
            }
        };
        let (mut a_seen, mut b_seen) = (Vec::new(), Vec::new());
        for f in 0..45 {
            let (xa, xb) = (100.0 + path(f), 540.0 - path(f));
            let dets = [det(xa, 200.0, 50.0, 130.0, 0.9), det(xb, 205.0, 50.0, 130.0, 0.9)];
            tr.update_with(
                &dets,
                &[Some(red.clone()), Some(blue.clone())],
                Some((640, 480)),
                f as f64 / FPS,
            );
            if f >= 35 {
                for (x, seen) in [(xa, &mut a_seen), (xb, &mut b_seen)] {
                    if let Some(p) = tr
                        .people()
                        .iter()
                        .find(|p| p.visible && (p.bbox.center().0 - x).abs() < 10.0)
                    {
                        seen.push((p.id, x));
                    }
                }
            }
        }
        (a_seen, b_seen)
    }

    #[test]
    fn what_people_wear_keeps_them_apart_where_motion_cannot() {
        let (a, b) = meet_and_turn_back(true);
        assert!(!a.is_empty() && !b.is_empty());
        assert!(a.iter().all(|(id, _)| *id == 1), "the first walker kept id 1: {a:?}");
        assert!(b.iter().all(|(id, _)| *id == 2), "the second walker kept id 2: {b:?}");
        // Without appearance the same scene loses at least one identity: the test can tell the difference.
        let (a, b) = meet_and_turn_back(false);
        assert!(
            a.iter().chain(&b).any(|(id, _)| *id > 2) || a.iter().any(|(id, _)| *id != 1),
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn a_person_hidden_for_seconds_is_found_again_by_appearance() {
        // Walks right at 6 px/frame; behind a pillar from frame 10 to 40 (3 s): reappears 186 px on,
        // beyond where the motion model still looks. Another person in other clothes stands nearby.
        let run = |appearance: bool| {
            let mut tr = Tracker::new(TrackerConfig {
                appearance,
                ..TrackerConfig::default()
            });
            let (walker, other) = (look(5, 10), look(60, 40));
            let mut ids = Vec::new();
            for f in 0..60 {
                let mut dets = vec![det(500.0, 300.0, 60.0, 150.0, 0.9)];
                let mut looks = vec![Some(other.clone())];
                if !(10..41).contains(&f) {
                    dets.push(det(100.0 + 6.0 * f as f32, 200.0, 50.0, 130.0, 0.9));
                    looks.push(Some(walker.clone()));
                }
                tr.update_with(&dets, &looks, Some((640, 480)), f as f64 / FPS);
                if f >= 45 {
                    let x = 100.0 + 6.0 * f as f32;
                    ids.extend(
                        tr.people()
                            .iter()
                            .filter(|p| (p.bbox.center().0 - x).abs() < 10.0)
                            .map(|p| p.id),
                    );
                }
            }
            (ids, tr.ids_issued())
        };
        let (ids, issued) = run(true);
        assert!(!ids.is_empty() && ids.iter().all(|&id| id == 2), "{ids:?}");
        assert_eq!(issued, 2);
        let (ids, issued) = run(false);
        assert!(
            ids.iter().all(|&id| id == 3) && issued == 3,
            "without appearance a new id: {ids:?}"
        );
    }

    #[test]
    fn someone_else_in_the_lost_persons_place_is_not_given_their_id() {
        // A lost person's place is taken by someone in other clothes: that newcomer gets a new id.
        let mut tr = Tracker::new(TrackerConfig::default());
        let (a, b) = (look(5, 10), look(60, 40));
        for f in 0..40 {
            let (dets, looks) = if f < 10 {
                (vec![det(200.0, 200.0, 50.0, 130.0, 0.9)], vec![Some(a.clone())])
            } else if f < 20 {
                (vec![], vec![])
            } else {
                (vec![det(205.0, 200.0, 50.0, 130.0, 0.9)], vec![Some(b.clone())])
            };
            tr.update_with(&dets, &looks, Some((640, 480)), f as f64 / FPS);
        }
        assert_eq!(
            tr.people()
                .iter()
                .filter(|p| p.visible)
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn a_new_frame_size_ends_every_track_and_no_box_stays_in_old_coordinates() {
        let mut tr = Tracker::new(TrackerConfig::default());
        for f in 0..10 {
            tr.update_with(
                &[det(600.0, 400.0, 60.0, 150.0, 0.9)],
                &[],
                Some((1280, 720)),
                f as f64 / FPS,
            );
        }
        assert_eq!(tr.people().len(), 1);
        // The camera now sends 640x360: the same person is at half the coordinates.
        tr.update_with(&[det(300.0, 200.0, 30.0, 75.0, 0.9)], &[], Some((640, 360)), 1.0);
        assert_eq!(tr.ended().iter().map(|p| p.id).collect::<Vec<_>>(), vec![1]);
        assert!(tr.people().is_empty(), "nothing carried over: {:?}", tr.people());
        assert_eq!(tr.frame_size(), Some((640, 360)));
        for f in 11..14 {
            tr.update_with(
                &[det(300.0, 200.0, 30.0, 75.0, 0.9)],
                &[],
                Some((640, 360)),
                f as f64 / FPS,
            );
        }
        let p = tr.people();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].id, 2);
        assert!(p[0].bbox.x2 <= 640.0 && p[0].bbox.y2 <= 360.0, "{p:?}");
        assert!(tr.ended().is_empty());
    }

    #[test]
    fn boxes_that_are_not_rectangles_are_nobody() {
        let mut tr = Tracker::new(TrackerConfig {
            min_hits: 1,
            ..TrackerConfig::default()
        });
        let bad = |x1: f32, y1: f32, x2: f32, y2: f32| Detection {
            bbox: BBox::new(x1, y1, x2, y2),
            score: 0.9,
            class: 0,
        };
        for f in 0..5 {
            let dets = [
                det(100.0, 100.0, 40.0, 100.0, 0.9),
                bad(f32::NAN, 0.0, 10.0, 10.0),
                bad(0.0, 0.0, f32::INFINITY, 0.0),
                bad(50.0, 50.0, 50.0, 80.0),
            ];
            tr.update(&dets, f as f64 / FPS);
        }
        assert_eq!(tr.ids_issued(), 1);
        assert!(tr
            .people()
            .iter()
            .all(|p| p.bbox.x1.is_finite() && p.bbox.y2.is_finite()));
    }

    #[test]
    fn a_person_found_after_a_long_absence_keeps_a_walkers_speed() {
        // Walks right at 100 px/s, unseen for 3 s (the value is held after 1 s), found where a walker
        // would be: the velocity afterwards is still about a walker's, not inflated by the wait.
        let mut tr = Tracker::new(TrackerConfig::default());
        let at = |t: f64| det(100.0 + 100.0 * t as f32, 200.0, 50.0, 130.0, 0.9);
        let looks = [Some(look(5, 10))];
        for f in 0..20 {
            let t = f as f64 / FPS;
            tr.update_with(&[at(t)], &looks, None, t);
        }
        for f in 20..50 {
            tr.update_with(&[], &[], None, f as f64 / FPS);
        }
        let t = 5.0;
        tr.update_with(&[at(t)], &looks, None, t);
        assert_eq!(
            tr.people().iter().map(|p| (p.id, p.visible)).collect::<Vec<_>>(),
            vec![(1, true)]
        );
        let before = tr.people()[0].bbox.center().0;
        tr.update_with(&[], &[], None, t + 0.5);
        let predicted = tr.people()[0].bbox.center().0;
        let speed = (predicted - before) / 0.5;
        assert!((60.0..=140.0).contains(&speed), "{speed} px/s after the absence");
    }

    #[test]
    fn a_flood_of_detections_is_bounded() {
        let mut tr = Tracker::new(TrackerConfig {
            min_hits: 1,
            ..TrackerConfig::default()
        });
        let dets: Vec<Detection> = (0..1000)
            .map(|i| det((i % 40) as f32 * 30.0, (i / 40) as f32 * 30.0, 10.0, 20.0, 0.9))
            .collect();
        for f in 0..3 {
            tr.update(&dets, f as f64 / FPS);
            assert!(tr.people().len() <= MAX_TRACKS);
        }
        assert!(tr.ids_issued() as usize <= MAX_TRACKS);
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
        // The filter smooths, so the box lags the detection by less than the detector's own jitter.
        assert!((out[2][0].1 - 110.0).abs() < 2.0, "{:?}", out[2]);
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
