//! Multi-object tracking scores with the MOTChallenge definitions, so an installer who annotates an
//! hour of their own footage can score their cameras (`lpmesh eval mot`), and so the tracker is
//! measured the way the field measures trackers.
//!
//! - Boxes match at IoU >= the threshold (0.5 by default); the cost of a match is 1 - IoU.
//! - Frame by frame, a ground-truth object matched to a hypothesis in the previous frame keeps it while
//!   their boxes still match (track continuity); the rest are matched by minimum total cost (Hungarian).
//!   A match whose object was last matched to another hypothesis is an identity switch.
//! - CLEAR-MOT: MOTA = 1 - (misses + false positives + switches) / ground-truth boxes; MOTP = mean IoU
//!   of the matches; a fragmentation is a tracked object becoming untracked before it is tracked again;
//!   mostly tracked / lost: tracked in >= 80 % / < 20 % of the frames it appears in.
//! - Identity scores: one global minimum-cost matching of ground-truth identities to hypothesis
//!   identities (each pair worth the frames in which their boxes match); IDTP is what it keeps, and
//!   IDF1 = 2 IDTP / (ground-truth boxes + hypothesis boxes), IDP = IDTP / hypothesis boxes, IDR =
//!   IDTP / ground-truth boxes.
//! - Ground-truth rows with confidence 0 ("not considered") are ignored, as the MOTChallenge tools do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use crate::assign::assign;

/// One box of a MOTChallenge file: `frame,id,x,y,w,h,conf,...`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub frame: u32,
    pub id: u64,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub conf: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Most rows one file may hold (an hour at 25 frames/s with a hundred people is 9 million).
pub const MAX_ROWS: usize = 20_000_000;

/// Parses a MOTChallenge text file (comma or whitespace separated; blank lines skipped).
pub fn parse(text: &str) -> Result<Vec<Row>, ParseError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| ParseError { line: i + 1, reason };
        if rows.len() >= MAX_ROWS {
            return Err(bad(format!("more than {MAX_ROWS} rows")));
        }
        let f: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        if f.len() < 6 {
            return Err(bad(format!("{} fields; a row is frame,id,x,y,w,h[,conf,...]", f.len())));
        }
        let num = |k: usize, name: &str| -> Result<f64, ParseError> {
            f[k].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(format!("{name} {:?} is not a number", f[k])))
        };
        let frame = num(0, "frame")?;
        let id = num(1, "id")?;
        if frame < 1.0 || frame > f64::from(u32::MAX) || frame.fract() != 0.0 {
            return Err(bad(format!("frame {:?}: frames are numbered from 1", f[0])));
        }
        if id < 0.0 || id.fract() != 0.0 || id > 9.0e15 {
            return Err(bad(format!("id {:?} is not a whole number", f[1])));
        }
        let (w, h) = (num(4, "width")?, num(5, "height")?);
        if w < 0.0 || h < 0.0 {
            return Err(bad("negative width or height".into()));
        }
        rows.push(Row {
            frame: frame as u32,
            id: id as u64,
            x: num(2, "x")?,
            y: num(3, "y")?,
            w,
            h,
            conf: if f.len() > 6 { num(6, "conf")? } else { 1.0 },
        });
    }
    Ok(rows)
}

fn iou(a: &Row, b: &Row) -> f64 {
    let ix = ((a.x + a.w).min(b.x + b.w) - a.x.max(b.x)).max(0.0);
    let iy = ((a.y + a.h).min(b.y + b.h) - a.y.max(b.y)).max(0.0);
    let inter = ix * iy;
    let union = a.w * a.h + b.w * b.h - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scores {
    pub frames: u32,
    /// Ground-truth boxes scored and identities present.
    pub gt_boxes: u64,
    pub gt_ids: u64,
    pub hyp_boxes: u64,
    pub hyp_ids: u64,
    /// Matched boxes, identity switches included (py-motmetrics' `num_matches` leaves those out).
    pub matches: u64,
    pub false_positives: u64,
    pub misses: u64,
    pub id_switches: u64,
    pub fragmentations: u64,
    pub mostly_tracked: u64,
    pub partially_tracked: u64,
    pub mostly_lost: u64,
    /// Fractions (0..1); `None` where undefined (no ground truth, no matches).
    pub mota: Option<f64>,
    pub motp: Option<f64>,
    pub idf1: Option<f64>,
    pub idp: Option<f64>,
    pub idr: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Scores `hyp` against `gt`, on the frames in `frames` (inclusive; all when `None`), matching at
/// IoU >= `min_iou`.
pub fn evaluate(gt: &[Row], hyp: &[Row], frames: Option<(u32, u32)>, min_iou: f64) -> Scores {
    let within = |r: &&Row| frames.is_none_or(|(a, b)| r.frame >= a && r.frame <= b);
    let mut by_frame: BTreeMap<u32, (Vec<Row>, Vec<Row>)> = BTreeMap::new();
    for r in gt.iter().filter(within).filter(|r| r.conf != 0.0) {
        by_frame.entry(r.frame).or_default().0.push(*r);
    }
    for r in hyp.iter().filter(within) {
        by_frame.entry(r.frame).or_default().1.push(*r);
    }
    let max_cost = 1.0 - min_iou;
    let mut s = Scores::default();
    // Per ground-truth id: the hypothesis it was last matched to, and whether in the previous frame.
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut matched_prev: BTreeSet<u64> = BTreeSet::new();
    // Per ground-truth id: frames present, frames matched, and its matched/missed sequence.
    let mut present: HashMap<u64, u64> = HashMap::new();
    let mut tracked: HashMap<u64, u64> = HashMap::new();
    let mut states: HashMap<u64, Vec<bool>> = HashMap::new();
    // Per (gt id, hyp id): frames in which their boxes match (for the identity scores).
    let mut pairs: HashMap<(u64, u64), u64> = HashMap::new();
    let mut gt_count: HashMap<u64, u64> = HashMap::new();
    let mut hyp_count: HashMap<u64, u64> = HashMap::new();
    let mut iou_sum = 0.0;
    let first = frames.map(|f| f.0).or_else(|| by_frame.keys().next().copied());
    let last_frame = frames.map(|f| f.1).or_else(|| by_frame.keys().next_back().copied());
    if let (Some(a), Some(b)) = (first, last_frame) {
        s.frames = b.saturating_sub(a).saturating_add(1);
    }
    // Frames with no box at all are not steps: continuity carries over them, as in py-motmetrics.
    for (g, h) in by_frame.values() {
        s.gt_boxes += g.len() as u64;
        s.hyp_boxes += h.len() as u64;
        for r in g {
            *gt_count.entry(r.id).or_default() += 1;
            *present.entry(r.id).or_default() += 1;
        }
        for r in h {
            *hyp_count.entry(r.id).or_default() += 1;
        }
        let cost: Vec<Vec<f64>> = g.iter().map(|a| h.iter().map(|b| 1.0 - iou(a, b)).collect()).collect();
        for (i, a) in g.iter().enumerate() {
            for (j, b) in h.iter().enumerate() {
                if cost[i][j] <= max_cost {
                    *pairs.entry((a.id, b.id)).or_default() += 1;
                }
            }
        }
        let mut g_done = vec![false; g.len()];
        let mut h_done = vec![false; h.len()];
        let mut matches: Vec<(usize, usize)> = Vec::new();
        // 1. Continuity.
        for (i, a) in g.iter().enumerate() {
            if !matched_prev.contains(&a.id) {
                continue;
            }
            let Some(&hid) = last.get(&a.id) else { continue };
            if let Some(j) = (0..h.len()).find(|&j| !h_done[j] && h[j].id == hid) {
                if cost[i][j] <= max_cost {
                    g_done[i] = true;
                    h_done[j] = true;
                    matches.push((i, j));
                }
            }
        }
        // 2. Minimum total cost over what is left; pairs beyond the threshold cannot match.
        let gi: Vec<usize> = (0..g.len()).filter(|&i| !g_done[i]).collect();
        let hj: Vec<usize> = (0..h.len()).filter(|&j| !h_done[j]).collect();
        const FORBIDDEN: f64 = 1.0e6;
        let sub: Vec<Vec<f64>> = gi
            .iter()
            .map(|&i| {
                hj.iter()
                    .map(|&j| if cost[i][j] <= max_cost { cost[i][j] } else { FORBIDDEN })
                    .collect()
            })
            .collect();
        for (k, col) in assign(&sub, hj.len()).into_iter().enumerate() {
            let Some(c) = col else { continue };
            let (i, j) = (gi[k], hj[c]);
            if cost[i][j] > max_cost {
                continue;
            }
            if last.get(&g[i].id).is_some_and(|&prev| prev != h[j].id) {
                s.id_switches += 1;
            }
            g_done[i] = true;
            h_done[j] = true;
            matches.push((i, j));
        }
        matched_prev.clear();
        for &(i, j) in &matches {
            last.insert(g[i].id, h[j].id);
            matched_prev.insert(g[i].id);
            *tracked.entry(g[i].id).or_default() += 1;
            iou_sum += 1.0 - cost[i][j];
        }
        s.matches += matches.len() as u64;
        s.misses += g_done.iter().filter(|d| !**d).count() as u64;
        s.false_positives += h_done.iter().filter(|d| !**d).count() as u64;
        for (i, a) in g.iter().enumerate() {
            states.entry(a.id).or_default().push(g_done[i]);
        }
    }
    for seq in states.values() {
        let (Some(a), Some(b)) = (seq.iter().position(|m| *m), seq.iter().rposition(|m| *m)) else {
            continue;
        };
        s.fragmentations += seq[a..=b].windows(2).filter(|w| w[0] && !w[1]).count() as u64;
    }
    for (id, &n) in &present {
        let t = tracked.get(id).copied().unwrap_or(0) as f64 / n as f64;
        if t >= 0.8 {
            s.mostly_tracked += 1;
        } else if t < 0.2 {
            s.mostly_lost += 1;
        } else {
            s.partially_tracked += 1;
        }
    }
    s.gt_ids = gt_count.len() as u64;
    s.hyp_ids = hyp_count.len() as u64;
    // Identity scores: the assignment of identities that keeps the most matching frames.
    let gids: Vec<u64> = {
        let mut v: Vec<u64> = gt_count.keys().copied().collect();
        v.sort_unstable();
        v
    };
    let hids: Vec<u64> = {
        let mut v: Vec<u64> = hyp_count.keys().copied().collect();
        v.sort_unstable();
        v
    };
    let gain: Vec<Vec<f64>> = gids
        .iter()
        .map(|g| {
            hids.iter()
                .map(|h| -(pairs.get(&(*g, *h)).copied().unwrap_or(0) as f64))
                .collect()
        })
        .collect();
    let idtp: u64 = assign(&gain, hids.len())
        .into_iter()
        .enumerate()
        .filter_map(|(r, c)| c.map(|c| pairs.get(&(gids[r], hids[c])).copied().unwrap_or(0)))
        .sum();
    let (gtb, hb) = (s.gt_boxes as f64, s.hyp_boxes as f64);
    s.mota = ratio(gtb - (s.misses + s.false_positives + s.id_switches) as f64, gtb);
    s.motp = ratio(iou_sum, s.matches as f64);
    s.idf1 = ratio(2.0 * idtp as f64, gtb + hb);
    s.idp = ratio(idtp as f64, hb);
    s.idr = ratio(idtp as f64, gtb);
    s.precision = ratio(s.matches as f64, hb);
    s.recall = ratio(s.matches as f64, gtb);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(frame: u32, id: u64, x: f64) -> Row {
        Row {
            frame,
            id,
            x,
            y: 0.0,
            w: 10.0,
            h: 10.0,
            conf: 1.0,
        }
    }

    #[test]
    fn a_perfect_tracker_scores_one() {
        let gt: Vec<Row> = (1..=5).flat_map(|f| [r(f, 1, 0.0), r(f, 2, 50.0)]).collect();
        let s = evaluate(&gt, &gt, None, 0.5);
        assert_eq!((s.matches, s.misses, s.false_positives, s.id_switches), (10, 0, 0, 0));
        assert_eq!((s.mota, s.motp, s.idf1), (Some(1.0), Some(1.0), Some(1.0)));
        assert_eq!((s.mostly_tracked, s.fragmentations, s.frames), (2, 0, 5));
    }

    #[test]
    fn a_switch_a_miss_and_a_false_positive_by_hand() {
        // One person over 4 frames; the tracker calls them 7, 7, (nothing), 8, plus a ghost in frame 2.
        let gt: Vec<Row> = (1..=4).map(|f| r(f, 1, 0.0)).collect();
        let hyp = vec![r(1, 7, 0.0), r(2, 7, 1.0), r(2, 9, 100.0), r(4, 8, 0.0)];
        let s = evaluate(&gt, &hyp, None, 0.5);
        assert_eq!((s.matches, s.misses, s.false_positives, s.id_switches), (3, 1, 1, 1));
        assert_eq!(s.fragmentations, 1, "tracked, lost in frame 3, tracked again");
        assert!((s.mota.unwrap() - (1.0 - 3.0 / 4.0)).abs() < 1e-12);
        // IoU of a box shifted by 1 of 10: 90 / 110.
        assert!((s.motp.unwrap() - (2.0 + 90.0 / 110.0) / 3.0).abs() < 1e-12);
        // Identity: 1 -> 7 keeps 2 frames; IDF1 = 2*2 / (4 + 4).
        assert!((s.idf1.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!((s.idp, s.idr), (Some(0.5), Some(0.5)));
        assert_eq!((s.mostly_tracked, s.partially_tracked), (0, 1), "3 of 4 frames is 75 %");
    }

    #[test]
    fn continuity_keeps_an_identity_over_a_cheaper_rival() {
        // Person 1 matched to 5 in frame 1; in frame 2, hypothesis 6 fits better but 5 still matches.
        let gt = vec![r(1, 1, 0.0), r(2, 1, 0.0)];
        let hyp = vec![r(1, 5, 0.0), r(2, 5, 2.0), r(2, 6, 0.0)];
        let s = evaluate(&gt, &hyp, None, 0.5);
        assert_eq!((s.id_switches, s.false_positives), (0, 1));
    }

    #[test]
    fn ignored_rows_frame_ranges_and_thresholds() {
        let mut gt = vec![r(1, 1, 0.0), r(2, 1, 0.0), r(3, 1, 0.0)];
        gt[1].conf = 0.0;
        let hyp = vec![r(1, 1, 0.0), r(3, 1, 4.0)];
        let s = evaluate(&gt, &hyp, None, 0.5);
        assert_eq!(
            (s.gt_boxes, s.matches, s.misses),
            (2, 1, 1),
            "the conf-0 row is not scored"
        );
        // IoU of a shift by 4: 60 / 140 < 0.5, so no match at 0.5 but one at 0.4.
        let s = evaluate(&gt, &hyp, Some((3, 3)), 0.5);
        assert_eq!((s.matches, s.misses, s.false_positives, s.frames), (0, 1, 1, 1));
        let s = evaluate(&gt, &hyp, Some((3, 3)), 0.4);
        assert_eq!(s.matches, 1);
        let s = evaluate(&[], &[], None, 0.5);
        assert_eq!((s.mota, s.idf1), (None, None));
    }

    #[test]
    fn files_parse_with_their_line_in_errors() {
        let rows = parse("1,2,3.5,4,5,6,1,-1,-1,-1\n\n2 3 1 1 1 1\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].conf, 1.0);
        assert_eq!(parse("1,2,3\n").unwrap_err().line, 1);
        assert!(parse("ok\n").is_err());
        let e = parse("1,1,0,0,1,1\n0,1,0,0,1,1\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse("1,1,0,0,-1,1\n").is_err());
        assert!(parse("1,1,nan,0,1,1\n").is_err());
    }
}
