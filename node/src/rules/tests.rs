//! Every rule with synthetic tracks and explicit time.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, TimeZone};

use super::*;
use crate::event::{Event, EventKind, Phase, TamperReason};
use crate::geom::BBox;
use crate::track::TrackedPerson;
use crate::zone::{Direction, Heading};

/// 2026-06-10 12:00 UTC, a Wednesday.
const NOON: i64 = 1_781_092_800_000;

fn zone(name: &str, kind: ZoneKind, pts: &[[f32; 2]]) -> ZoneSpec {
    ZoneSpec {
        name: name.into(),
        kind,
        polygon: Polygon::new(pts.to_vec()).unwrap(),
        min_confidence: 0.4,
        loiter_secs: match kind {
            ZoneKind::Checkout => None,
            _ => Some(60.0),
        },
        crowd_min: match kind {
            ZoneKind::Checkout => None,
            _ => Some(4),
        },
        interaction_secs: 2.0,
        severity: HashMap::new(),
        disabled: Vec::new(),
    }
}

fn rect(x1: f32, y1: f32, x2: f32, y2: f32) -> [[f32; 2]; 4] {
    [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
}

fn spec(zones: Vec<ZoneSpec>, lines: Vec<LineSpec>) -> CameraSpec {
    CameraSpec {
        store: "s1".into(),
        node: "n1".into(),
        camera: "cam".into(),
        model: "nanodet-m-416".into(),
        zones,
        lines,
        settings: RuleSettings::default(),
        schedule: Schedule::always_open(chrono_tz::UTC),
        disabled: Vec::new(),
    }
}

/// A person whose feet are at (fx, fy), in a 1000x1000 frame, 0.1 wide and 0.3 tall.
fn at(id: u64, fx: f32, fy: f32) -> TrackedPerson {
    TrackedPerson {
        id,
        bbox: BBox::new(
            (fx - 0.05) * 1000.0,
            (fy - 0.3) * 1000.0,
            (fx + 0.05) * 1000.0,
            fy * 1000.0,
        ),
        score: 0.9,
        visible: true,
        first_seen: 0.0,
        last_seen: 0.0,
    }
}

struct Sim {
    rules: CameraRules,
    now: i64,
    events: Vec<Event>,
    pixels: Option<PixelMeasures>,
}

impl Sim {
    fn new(spec: CameraSpec) -> Self {
        Self::starting(spec, NOON)
    }

    fn starting(spec: CameraSpec, now: i64) -> Self {
        Self {
            rules: CameraRules::new(spec),
            now,
            events: Vec::new(),
            pixels: None,
        }
    }

    /// One frame at the current time, then time advances by `dt_ms`.
    fn frame(&mut self, people: &[TrackedPerson], ended: &[TrackedPerson], dt_ms: i64) {
        let obs = Observation {
            now_ms: self.now,
            width: 1000,
            height: 1000,
            people,
            ended,
            pixels: self.pixels.as_ref(),
            online: true,
        };
        self.rules.observe(&obs, &mut self.events);
        self.now += dt_ms;
    }

    /// `secs` of frames at 10 fps with the same people.
    fn hold(&mut self, people: &[TrackedPerson], secs: f64) {
        for _ in 0..(secs * 10.0).round() as usize {
            self.frame(people, &[], 100);
        }
    }

    fn of(&self, kind: EventKind) -> Vec<&Event> {
        self.events.iter().filter(|e| e.kind == kind).collect()
    }

    fn phases(&self, kind: EventKind) -> Vec<Phase> {
        self.of(kind).iter().map(|e| e.phase).collect()
    }
}

#[test]
fn loitering_fires_at_the_limit_updates_and_ends_when_the_person_leaves() {
    let mut sim = Sim::new(spec(
        vec![zone("aisle", ZoneKind::General, &rect(0.2, 0.2, 0.8, 0.8))],
        vec![],
    ));
    let inside = [at(1, 0.5, 0.5)];
    sim.hold(&inside, 59.9);
    assert!(sim.of(EventKind::Loitering).is_empty(), "not before 60 s");
    sim.hold(&inside, 0.2);
    assert_eq!(sim.phases(EventKind::Loitering), vec![Phase::Start]);
    let start = sim.of(EventKind::Loitering)[0].clone();
    assert_eq!(start.started_at_ms, NOON, "the incident starts when the person arrived");
    assert_eq!(start.zone.as_deref(), Some("aisle"));
    assert_eq!(start.track, Some(1));
    sim.hold(&inside, 31.0);
    assert_eq!(sim.phases(EventKind::Loitering), vec![Phase::Start, Phase::Update]);
    sim.hold(&[at(1, 0.95, 0.95)], 0.2);
    let end = (*sim.of(EventKind::Loitering).last().unwrap()).clone();
    assert_eq!(end.phase, Phase::End);
    assert_eq!(end.incident, start.incident);
    assert!(end.detail.dwell_secs.unwrap() > 91.0);
    assert!(end.ended_at_ms.is_some());
}

#[test]
fn a_person_just_under_the_loitering_limit_is_no_incident() {
    let mut sim = Sim::new(spec(
        vec![zone("aisle", ZoneKind::General, &rect(0.2, 0.2, 0.8, 0.8))],
        vec![],
    ));
    sim.hold(&[at(1, 0.5, 0.5)], 59.5);
    sim.hold(&[at(1, 0.9, 0.9)], 5.0);
    sim.hold(&[at(1, 0.5, 0.5)], 30.0);
    assert!(
        sim.of(EventKind::Loitering).is_empty(),
        "leaving resets the dwell: {:?}",
        sim.events
    );
}

#[test]
fn standing_on_a_zone_edge_does_not_flicker() {
    let mut sim = Sim::new(spec(
        vec![zone("stock", ZoneKind::Restricted, &rect(0.2, 0.2, 0.8, 0.8))],
        vec![],
    ));
    sim.hold(&[at(1, 0.5, 0.5)], 1.0);
    // Feet jitter by +-0.005 around the edge at x = 0.8: under the 0.01 hysteresis.
    for i in 0..100 {
        let x = if i % 2 == 0 { 0.795 } else { 0.805 };
        sim.frame(&[at(1, x, 0.5)], &[], 100);
    }
    assert_eq!(sim.phases(EventKind::RestrictedEntry), vec![Phase::Start]);
    sim.hold(&[at(1, 0.9, 0.5)], 0.5);
    assert_eq!(sim.phases(EventKind::RestrictedEntry), vec![Phase::Start, Phase::End]);
}

#[test]
fn low_confidence_detections_do_not_count_in_a_zone() {
    let mut z = zone("stock", ZoneKind::Restricted, &rect(0.2, 0.2, 0.8, 0.8));
    z.min_confidence = 0.7;
    let mut sim = Sim::new(spec(vec![z], vec![]));
    let mut p = at(1, 0.5, 0.5);
    p.score = 0.6;
    sim.hold(&[p], 2.0);
    assert!(sim.of(EventKind::RestrictedEntry).is_empty());
}

fn store_zones() -> Vec<ZoneSpec> {
    vec![
        zone("shelf", ZoneKind::Shelf, &rect(0.0, 0.0, 0.3, 0.3)),
        zone("till", ZoneKind::Checkout, &rect(0.4, 0.0, 0.6, 0.3)),
        zone("door", ZoneKind::Exit, &rect(0.8, 0.7, 1.0, 1.0)),
    ]
}

#[test]
fn exit_without_checkout_needs_a_shelf_visit_and_no_checkout() {
    let mut sim = Sim::new(spec(store_zones(), vec![]));
    sim.hold(&[at(1, 0.15, 0.2)], 1.0); // at the shelf
    sim.hold(&[at(1, 0.5, 0.5)], 1.0);
    sim.hold(&[at(1, 0.9, 0.9)], 1.0); // out of the door
    let e = sim.of(EventKind::ExitWithoutCheckout);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].phase, Phase::Instant);
    assert_eq!(e[0].zone.as_deref(), Some("door"));
    // Leaving and coming back to the door does not repeat it.
    sim.hold(&[at(1, 0.5, 0.5)], 1.0);
    sim.hold(&[at(1, 0.9, 0.9)], 1.0);
    assert_eq!(sim.of(EventKind::ExitWithoutCheckout).len(), 1);

    let mut sim = Sim::new(spec(store_zones(), vec![]));
    sim.hold(&[at(2, 0.15, 0.2)], 1.0);
    sim.hold(&[at(2, 0.5, 0.2)], 1.0); // pays
    sim.hold(&[at(2, 0.9, 0.9)], 1.0);
    assert!(
        sim.of(EventKind::ExitWithoutCheckout).is_empty(),
        "visited checkout first"
    );

    let mut sim = Sim::new(spec(store_zones(), vec![]));
    sim.hold(&[at(3, 0.5, 0.5)], 1.0);
    sim.hold(&[at(3, 0.9, 0.9)], 1.0);
    assert!(sim.of(EventKind::ExitWithoutCheckout).is_empty(), "never at a shelf");
}

#[test]
fn crowding_needs_n_people_and_ends_after_they_disperse() {
    let mut sim = Sim::new(spec(
        vec![zone("promo", ZoneKind::Shelf, &rect(0.2, 0.2, 0.8, 0.8))],
        vec![],
    ));
    let three: Vec<TrackedPerson> = (1..=3).map(|i| at(i, 0.3 + 0.1 * i as f32, 0.5)).collect();
    sim.hold(&three, 5.0);
    assert!(sim.of(EventKind::Crowding).is_empty(), "a crowd of N-1 is not a crowd");
    let four: Vec<TrackedPerson> = (1..=4).map(|i| at(i, 0.25 + 0.1 * i as f32, 0.5)).collect();
    sim.hold(&four, 1.0);
    assert_eq!(sim.phases(EventKind::Crowding), vec![Phase::Start]);
    assert_eq!(sim.of(EventKind::Crowding)[0].detail.people, Some(4));
    let five: Vec<TrackedPerson> = (1..=5).map(|i| at(i, 0.25 + 0.1 * i as f32, 0.5)).collect();
    sim.hold(&five, 1.0);
    assert_eq!(
        sim.phases(EventKind::Crowding),
        vec![Phase::Start, Phase::Update],
        "a bigger crowd updates"
    );
    sim.hold(&three, 2.0);
    assert_eq!(sim.of(EventKind::Crowding).len(), 2, "not ended before the clear time");
    sim.hold(&three, 2.0);
    let end = (*sim.of(EventKind::Crowding).last().unwrap()).clone();
    assert_eq!((end.phase, end.detail.people), (Phase::End, Some(5)));
}

fn london_schedule(range: &str) -> Schedule {
    let tz = Schedule::parse_tz("Europe/London").unwrap();
    Schedule::new(
        tz,
        std::array::from_fn(|_| vec![Schedule::parse_range(range).unwrap()]),
        vec![],
    )
}

fn london_ms(local: &str) -> i64 {
    let tz = Schedule::parse_tz("Europe/London").unwrap();
    let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").unwrap();
    tz.from_local_datetime(&naive).earliest().unwrap().timestamp_millis()
}

#[test]
fn after_hours_across_closing_time_and_midnight() {
    let mut s = spec(vec![], vec![]);
    s.schedule = london_schedule("08:00-22:00");
    let mut sim = Sim::starting(s, london_ms("2026-11-24 21:59:00"));
    sim.hold(&[at(1, 0.5, 0.5)], 50.0);
    assert!(sim.of(EventKind::AfterHours).is_empty(), "still open at 21:59");
    sim.hold(&[at(1, 0.5, 0.5)], 15.0); // past 22:00
    assert_eq!(sim.phases(EventKind::AfterHours), vec![Phase::Start]);
    sim.hold(&[], 11.0);
    assert_eq!(sim.phases(EventKind::AfterHours), vec![Phase::Start, Phase::End]);
    // Someone at 03:00 the next night is after hours too (the range does not wrap).
    let mut s = spec(vec![], vec![]);
    s.schedule = london_schedule("08:00-22:00");
    let mut sim = Sim::starting(s, london_ms("2026-11-25 03:00:00"));
    sim.hold(&[at(1, 0.5, 0.5)], 1.0);
    assert_eq!(sim.phases(EventKind::AfterHours), vec![Phase::Start]);
}

#[test]
fn after_hours_follows_daylight_saving_time() {
    // Opening at 08:00 local. On 2026-03-28 (GMT) 07:30 UTC is 07:30 local: closed. On 2026-03-29 (BST)
    // 07:30 UTC is 08:30 local: open.
    let run = |utc: &str| {
        let mut s = spec(vec![], vec![]);
        s.schedule = london_schedule("08:00-20:00");
        let t = DateTime::parse_from_rfc3339(utc).unwrap().timestamp_millis();
        let mut sim = Sim::starting(s, t);
        sim.hold(&[at(1, 0.5, 0.5)], 1.0);
        sim.of(EventKind::AfterHours).len()
    };
    assert_eq!(run("2026-03-28T07:30:00Z"), 1);
    assert_eq!(run("2026-03-29T07:30:00Z"), 0);
}

#[test]
fn line_crossings_are_counted_per_direction_once_each() {
    let line = LineSpec {
        name: "door".into(),
        line: CountingLine::new([0.1, 0.5], [0.9, 0.5], Heading::Up).unwrap(),
    };
    let mut sim = Sim::new(spec(vec![], vec![line]));
    // Walk up across the line (in), jittering on it for a while, then back down (out).
    for i in 0..20 {
        sim.frame(&[at(1, 0.5, 0.7 - 0.02 * i as f32)], &[], 100);
    }
    for i in 0..20 {
        sim.frame(&[at(2, 0.3, if i % 2 == 0 { 0.495 } else { 0.505 })], &[], 100);
    }
    for i in 0..20 {
        sim.frame(&[at(1, 0.5, 0.3 + 0.02 * i as f32)], &[], 100);
    }
    // Crossing beyond the line's end does not count.
    for i in 0..20 {
        sim.frame(&[at(3, 0.95, 0.7 - 0.02 * i as f32)], &[], 100);
    }
    let dirs: Vec<(Option<u64>, Option<Direction>)> = sim
        .of(EventKind::LineCrossing)
        .iter()
        .map(|e| (e.track, e.detail.direction))
        .collect();
    assert_eq!(
        dirs,
        vec![(Some(1), Some(Direction::In)), (Some(1), Some(Direction::Out))]
    );
    assert!(sim
        .of(EventKind::LineCrossing)
        .iter()
        .all(|e| e.phase == Phase::Instant && e.detail.line.as_deref() == Some("door")));
}

#[test]
fn shelf_interaction_needs_a_sustained_reach() {
    let zones = vec![zone("cosmetics", ZoneKind::Shelf, &rect(0.0, 0.0, 0.3, 0.3))];
    let mut sim = Sim::new(spec(zones.clone(), vec![]));
    // Feet at (0.3, 0.45): outside the zone, but a quarter of the body box reaches into it.
    let reaching = at(1, 0.3, 0.45);
    sim.hold(&[reaching], 1.0);
    sim.hold(&[at(1, 0.6, 0.9)], 2.0);
    assert!(
        sim.of(EventKind::ShelfInteraction).is_empty(),
        "a one-second touch is not an interaction"
    );
    sim.hold(&[reaching], 3.0);
    assert_eq!(sim.phases(EventKind::ShelfInteraction), vec![Phase::Start]);
    sim.hold(&[at(1, 0.6, 0.9)], 2.0);
    assert_eq!(sim.phases(EventKind::ShelfInteraction), vec![Phase::Start, Phase::End]);
}

fn sweep_sim() -> Sim {
    let zones = vec![zone("cosmetics", ZoneKind::Shelf, &rect(0.0, 0.0, 0.3, 0.3))];
    let mut sim = Sim::new(spec(zones, vec![]));
    sim.pixels = Some(PixelMeasures {
        brightness: 120.0,
        contrast: 40.0,
        sharpness_ratio: 1.0,
        similarity: 0.95,
        zone_change: vec![Some(0.0)],
    });
    sim
}

#[test]
fn a_shelf_left_changed_after_an_interaction_is_a_sweep() {
    let mut sim = sweep_sim();
    sim.pixels.as_mut().unwrap().zone_change[0] = Some(0.5); // the person covers the shelf
    sim.hold(&[at(7, 0.3, 0.45)], 4.0);
    sim.hold(&[at(7, 0.7, 0.9)], 0.5); // steps away; the shelf stays half changed
    sim.hold(&[at(7, 0.7, 0.9)], 2.0);
    let sweeps = sim.of(EventKind::ShelfSweep);
    assert_eq!(sweeps.len(), 1, "{:?}", sim.events);
    assert_eq!(
        (sweeps[0].track, sweeps[0].detail.changed_fraction),
        (Some(7), Some(0.5))
    );
    sim.hold(&[], 10.0);
    assert_eq!(sim.of(EventKind::ShelfSweep).len(), 1, "one sweep, not one per frame");
}

#[test]
fn a_person_who_only_passes_leaves_the_shelf_as_it_was() {
    let mut sim = sweep_sim();
    sim.pixels.as_mut().unwrap().zone_change[0] = Some(0.5);
    sim.hold(&[at(7, 0.3, 0.45)], 4.0);
    sim.pixels.as_mut().unwrap().zone_change[0] = Some(0.03); // back to the learned background
    sim.hold(&[at(7, 0.7, 0.9)], 8.0);
    assert_eq!(sim.phases(EventKind::ShelfInteraction), vec![Phase::Start, Phase::End]);
    assert!(sim.of(EventKind::ShelfSweep).is_empty());
}

#[test]
fn tamper_needs_a_lasting_condition_and_says_why() {
    let mut sim = sweep_sim();
    sim.pixels.as_mut().unwrap().brightness = 5.0;
    sim.hold(&[], 1.0);
    sim.pixels.as_mut().unwrap().brightness = 120.0;
    sim.hold(&[], 1.0);
    assert!(
        sim.of(EventKind::CameraTamper).is_empty(),
        "a one-second dark frame is a light flicker"
    );
    sim.pixels.as_mut().unwrap().sharpness_ratio = 0.1;
    sim.hold(&[], 4.0);
    let t = sim.of(EventKind::CameraTamper);
    assert_eq!((t.len(), t[0].detail.reason), (1, Some(TamperReason::Blurred)));
    sim.pixels.as_mut().unwrap().sharpness_ratio = 1.0;
    sim.hold(&[], 4.0);
    assert_eq!(sim.phases(EventKind::CameraTamper), vec![Phase::Start, Phase::End]);
    sim.pixels.as_mut().unwrap().similarity = 0.2;
    sim.hold(&[], 4.0);
    assert_eq!(
        sim.of(EventKind::CameraTamper).last().unwrap().detail.reason,
        Some(TamperReason::Moved)
    );
}

#[test]
fn an_offline_camera_is_reported_and_cleared() {
    let mut rules = CameraRules::new(spec(vec![], vec![]));
    let mut out = Vec::new();
    let obs = |t, online| Observation {
        now_ms: t,
        width: 0,
        height: 0,
        people: &[],
        ended: &[],
        pixels: None,
        online,
    };
    for i in 0..60 {
        rules.observe(&obs(NOON + i * 100, false), &mut out);
    }
    assert_eq!(
        out.iter().map(|e| (e.kind, e.phase)).collect::<Vec<_>>(),
        vec![(EventKind::CameraOffline, Phase::Start)]
    );
    assert_eq!(out[0].started_at_ms, NOON);
    rules.observe(&obs(NOON + 7_000, true), &mut out);
    assert_eq!(out[1].phase, Phase::End);
}

#[test]
fn a_track_that_ends_closes_its_incidents() {
    let mut sim = Sim::new(spec(
        vec![zone("stock", ZoneKind::Restricted, &rect(0.2, 0.2, 0.8, 0.8))],
        vec![],
    ));
    let p = at(4, 0.5, 0.5);
    sim.hold(&[p], 61.0);
    assert_eq!(sim.phases(EventKind::Loitering), vec![Phase::Start]);
    sim.frame(&[], &[p], 100);
    assert_eq!(sim.phases(EventKind::Loitering), vec![Phase::Start, Phase::End]);
    assert_eq!(sim.phases(EventKind::RestrictedEntry), vec![Phase::Start, Phase::End]);
}

#[test]
fn severities_come_from_the_kind_or_the_configuration() {
    let mut s = spec(store_zones(), vec![]);
    s.settings
        .severity
        .insert(EventKind::ExitWithoutCheckout, crate::event::Severity::Critical);
    let mut sim = Sim::new(s);
    sim.hold(&[at(1, 0.15, 0.2)], 3.0);
    sim.hold(&[at(1, 0.9, 0.9)], 1.0);
    assert_eq!(
        sim.of(EventKind::ExitWithoutCheckout)[0].severity,
        crate::event::Severity::Critical
    );
    assert_eq!(
        sim.of(EventKind::ShelfInteraction)[0].severity,
        crate::event::Severity::Info
    );
}

#[test]
fn switched_off_rules_say_nothing() {
    let mut s = spec(
        vec![zone("stock", ZoneKind::Restricted, &rect(0.2, 0.2, 0.8, 0.8))],
        vec![],
    );
    s.zones[0].disabled.push(EventKind::Loitering);
    s.disabled.push(EventKind::AfterHours);
    let mut sim = Sim::new(s);
    sim.hold(&[at(1, 0.5, 0.5)], 70.0);
    assert!(sim.of(EventKind::Loitering).is_empty());
    assert_eq!(sim.phases(EventKind::RestrictedEntry), vec![Phase::Start]);
}

#[test]
fn finishing_ends_every_open_incident() {
    let mut sim = Sim::new(spec(
        vec![zone("stock", ZoneKind::Restricted, &rect(0.2, 0.2, 0.8, 0.8))],
        vec![],
    ));
    let four: Vec<TrackedPerson> = (1..=4).map(|i| at(i, 0.3 + 0.1 * i as f32, 0.5)).collect();
    sim.hold(&four, 61.0);
    let mut out = Vec::new();
    sim.rules.finish(sim.now, &mut out);
    let ends = |k| out.iter().filter(|e| e.kind == k && e.phase == Phase::End).count();
    assert_eq!(ends(EventKind::RestrictedEntry), 4);
    assert_eq!(ends(EventKind::Loitering), 4);
    assert_eq!(ends(EventKind::Crowding), 1);
    assert!(out.iter().all(|e| e.phase == Phase::End));
}
