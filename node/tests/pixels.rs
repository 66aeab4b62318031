//! The pixel rules on real frames of vtest.avi, altered in the test: camera tamper (blacked out, blurred,
//! re-aimed) and a shelf swept versus a shelf someone only passed.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use lpmesh_node::capture::Preparer;
use lpmesh_node::config::default_footage_path;
use lpmesh_node::detect::InputSpec;
use lpmesh_node::event::{Event, EventKind, Phase, TamperReason};
use lpmesh_node::geom::BBox;
use lpmesh_node::measure::{LearnGate, PixelMeter};
use lpmesh_node::motion::MotionConfig;
use lpmesh_node::rules::{CameraRules, CameraSpec, Observation, PixelMeasures, RuleSettings, ZoneKind, ZoneSpec};
use lpmesh_node::schedule::Schedule;
use lpmesh_node::source::opencv::{OpenCvOptions, OpenCvSource, SourceKind};
use lpmesh_node::source::{Frame, FrameSource};
use lpmesh_node::track::TrackedPerson;
use lpmesh_node::zone::Polygon;

const T0: i64 = 1_781_092_800_000;

fn frames(n: usize) -> Vec<Frame> {
    let p = default_footage_path();
    assert!(p.exists(), "{} missing: run scripts/setup.sh", p.display());
    let stop = Arc::new(AtomicBool::new(false));
    let mut src = OpenCvSource::open(SourceKind::File(p), OpenCvOptions::default(), stop).unwrap();
    (0..n)
        .map(|_| src.next_frame(Vec::new()).unwrap().expect("enough frames"))
        .collect()
}

fn gate(s: &RuleSettings) -> LearnGate {
    LearnGate {
        dark_brightness: s.tamper_dark_brightness,
        min_contrast: s.tamper_min_contrast,
        blur_ratio: s.tamper_blur_ratio,
        min_similarity: s.tamper_min_similarity,
    }
}

fn shelf_zone() -> ZoneSpec {
    // The row of ground-floor windows of the building: nobody walks there in vtest.avi.
    ZoneSpec {
        name: "windows".into(),
        kind: ZoneKind::Shelf,
        polygon: Polygon::new(vec![[0.43, 0.06], [0.72, 0.06], [0.72, 0.17], [0.43, 0.17]]).unwrap(),
        min_confidence: 0.3,
        loiter_secs: None,
        crowd_min: None,
        interaction_secs: 2.0,
        severity: HashMap::new(),
        disabled: Vec::new(),
    }
}

fn spec(zones: Vec<ZoneSpec>) -> CameraSpec {
    CameraSpec {
        store: "s".into(),
        node: "n".into(),
        camera: "plaza".into(),
        model: "m".into(),
        zones,
        lines: Vec::new(),
        settings: RuleSettings::default(),
        schedule: Schedule::always_open(chrono_tz::UTC),
        disabled: Vec::new(),
    }
}

/// Measures each frame (after `alter`) and runs the rules over the measures at 10 fps.
fn run(
    frames: &[Frame],
    zones: Vec<ZoneSpec>,
    mut alter: impl FnMut(usize, &mut Vec<u8>, u32, u32),
    people: impl Fn(usize) -> Vec<TrackedPerson>,
) -> (Vec<Event>, Vec<PixelMeasures>) {
    let spec = spec(zones);
    let shelves: Vec<(Polygon, bool)> = spec
        .zones
        .iter()
        .map(|z| (z.polygon.clone(), z.kind == ZoneKind::Shelf))
        .collect();
    let meter = PixelMeter::new(&shelves, gate(&spec.settings));
    let mut prep = Preparer::new(InputSpec::nanodet_m_416(), MotionConfig::default(), Some(meter));
    let mut rules = CameraRules::new(spec);
    let mut events = Vec::new();
    let mut measures = Vec::new();
    let mut tensor = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut bgr = f.bgr.clone();
        alter(i, &mut bgr, f.width, f.height);
        let frame = Frame {
            seq: f.seq,
            pts: f.pts,
            width: f.width,
            height: f.height,
            bgr,
        };
        let px = prep.prepare(&frame, &mut tensor).unwrap().pixels.unwrap();
        let ppl = people(i);
        let obs = Observation {
            now_ms: T0 + i as i64 * 100,
            width: f.width,
            height: f.height,
            people: &ppl,
            ended: &[],
            pixels: Some(&px),
            online: true,
        };
        rules.observe(&obs, &mut events);
        measures.push(px);
    }
    (events, measures)
}

fn tamper(events: &[Event]) -> Vec<(Phase, Option<TamperReason>, i64)> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::CameraTamper)
        .map(|e| (e.phase, e.detail.reason, (e.at_ms - T0) / 100))
        .collect()
}

/// Separable box blur of a packed BGR image (a strongly out-of-focus lens).
fn blur(bgr: &mut [u8], w: u32, h: u32, r: usize) {
    let (w, h) = (w as usize, h as usize);
    let src = bgr.to_vec();
    let mut tmp = vec![0u8; src.len()];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let (lo, hi) = (x.saturating_sub(r), (x + r).min(w - 1));
                let s: u32 = (lo..=hi).map(|xx| src[(y * w + xx) * 3 + c] as u32).sum();
                tmp[(y * w + x) * 3 + c] = (s / (hi - lo + 1) as u32) as u8;
            }
        }
    }
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let (lo, hi) = (y.saturating_sub(r), (y + r).min(h - 1));
                let s: u32 = (lo..=hi).map(|yy| tmp[(yy * w + x) * 3 + c] as u32).sum();
                bgr[(y * w + x) * 3 + c] = (s / (hi - lo + 1) as u32) as u8;
            }
        }
    }
}

/// The camera knocked sideways: the view moves by `dx` pixels (wrapping round).
fn shift(bgr: &mut [u8], w: u32, dx: usize) {
    let w = w as usize;
    for row in bgr.chunks_exact_mut(w * 3) {
        row.rotate_left(dx * 3);
    }
}

#[test]
fn a_blacked_out_blurred_or_moved_camera_is_tamper_and_the_real_view_is_not() {
    let fs = frames(160);
    // 0-5.9 s normal, 6-10.9 s blacked out, 11-15.9 s normal again.
    let (events, _) = run(
        &fs,
        vec![],
        |i, bgr, _, _| {
            if (60..110).contains(&i) {
                bgr.fill(0)
            }
        },
        |_| vec![],
    );
    let t = tamper(&events);
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!((t[0].0, t[0].1), (Phase::Start, Some(TamperReason::Covered)));
    assert!((90..=92).contains(&t[0].2), "raised after 3 s of black: {t:?}");
    assert_eq!(t[1].0, Phase::End);

    let (events, m) = run(
        &fs,
        vec![],
        |i, bgr, w, h| {
            if i >= 60 {
                blur(bgr, w, h, 12)
            }
        },
        |_| vec![],
    );
    assert!(m[100].sharpness_ratio < 0.3, "{:?}", m[100]);
    let t = tamper(&events);
    assert_eq!(
        t.first().map(|t| (t.0, t.1)),
        Some((Phase::Start, Some(TamperReason::Blurred))),
        "{t:?}"
    );

    let (events, m) = run(
        &fs,
        vec![],
        |i, bgr, w, _| {
            if i >= 60 {
                shift(bgr, w, 200)
            }
        },
        |_| vec![],
    );
    assert!(m[100].similarity < 0.6, "{:?}", m[100]);
    let t = tamper(&events);
    assert_eq!(
        t.first().map(|t| (t.0, t.1)),
        Some((Phase::Start, Some(TamperReason::Moved))),
        "{t:?}"
    );
}

#[test]
fn the_whole_unaltered_video_raises_no_tamper() {
    let fs = frames(795);
    let (events, m) = run(&fs, vec![], |_, _, _, _| {}, |_| vec![]);
    assert!(tamper(&events).is_empty(), "{:?}", tamper(&events));
    let worst = m[20..].iter().map(|p| p.similarity).fold(1.0f32, f32::min);
    assert!(worst > 0.8, "people walking by change the view only a little: {worst}");
}

/// A person (a dark figure in the pixels, a track for the rules) stands at the window shelf from 2 s to
/// 6 s; afterwards the shelf either looks as before, or half of it has been emptied.
fn shelf_run(swept: bool) -> Vec<Event> {
    let fs = frames(150);
    let (w, h) = (fs[0].width as f32, fs[0].height as f32);
    let zone = shelf_zone();
    let b = zone.polygon.bounds();
    let (x0, y0, x1, y1) = (
        (b[0] * w) as usize,
        (b[1] * h) as usize,
        (b[2] * w) as usize,
        (b[3] * h) as usize,
    );
    let present = |i: usize| (20..60).contains(&i);
    let alter = |i: usize, bgr: &mut Vec<u8>, fw: u32, _fh: u32| {
        let fw = fw as usize;
        let mut paint = |xa: usize, xb: usize, ya: usize, yb: usize, v: u8| {
            for y in ya..yb {
                bgr[(y * fw + xa) * 3..(y * fw + xb) * 3].fill(v);
            }
        };
        if present(i) {
            // The person in front of the shelf's left half.
            paint(x0 + 20, x0 + 90, y0, y1 + 60, 25);
        } else if swept && i >= 60 {
            // Goods gone from the left half: bare, bright back panel.
            paint(x0, (x0 + x1) / 2, y0, y1, 235);
        }
    };
    let person = move |i: usize| {
        let bx = if present(i) {
            // Feet below the shelf, body reaching up into it.
            BBox::new(x0 as f32 + 20.0, y0 as f32, x0 as f32 + 90.0, y1 as f32 + 60.0)
        } else if (60..80).contains(&i) {
            // Walking away, well clear of the shelf.
            BBox::new(x0 as f32 + 20.0, y1 as f32 + 150.0, x0 as f32 + 90.0, y1 as f32 + 300.0)
        } else {
            return vec![];
        };
        vec![TrackedPerson {
            id: 9,
            bbox: bx,
            score: 0.9,
            visible: true,
            first_seen: 2.0,
            last_seen: 6.0,
        }]
    };
    let (events, _) = run(&fs, vec![zone], alter, person);
    events
}

#[test]
fn a_shelf_emptied_during_an_interaction_is_a_sweep() {
    let events = shelf_run(true);
    let kinds: Vec<(EventKind, Phase)> = events.iter().map(|e| (e.kind, e.phase)).collect();
    assert!(
        kinds.contains(&(EventKind::ShelfInteraction, Phase::Start)),
        "{kinds:?}"
    );
    let sweeps: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::ShelfSweep).collect();
    assert_eq!(sweeps.len(), 1, "{kinds:?}");
    assert_eq!(sweeps[0].track, Some(9));
    assert!(sweeps[0].detail.changed_fraction.unwrap() > 0.2);
}

#[test]
fn a_person_who_only_passes_the_shelf_is_no_sweep() {
    let events = shelf_run(false);
    assert!(
        events.iter().any(|e| e.kind == EventKind::ShelfInteraction),
        "the interaction itself is seen"
    );
    assert!(!events.iter().any(|e| e.kind == EventKind::ShelfSweep), "{events:?}");
}
