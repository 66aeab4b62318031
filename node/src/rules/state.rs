//! The per-camera rule state machine.

use std::collections::HashMap;

use super::{CameraSpec, PixelMeasures, ZoneKind};
use crate::event::{Detail, Event, EventKind, Phase, TamperReason};
use crate::track::TrackedPerson;
use crate::zone::Direction;

/// One frame's worth of input.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Wall-clock time of the frame, Unix milliseconds.
    pub now_ms: i64,
    pub width: u32,
    pub height: u32,
    /// Confirmed people (visible or briefly predicted) after this frame.
    pub people: &'a [TrackedPerson],
    /// Tracks that ended with this frame.
    pub ended: &'a [TrackedPerson],
    pub pixels: Option<&'a PixelMeasures>,
    /// False while the camera delivers no frames (the other fields are then empty).
    pub online: bool,
}

/// An incident that has started and not yet ended.
#[derive(Clone, Debug)]
struct Open {
    incident: String,
    started_ms: i64,
    last_update_ms: i64,
    peak: u32,
}

#[derive(Clone, Debug, Default)]
struct Membership {
    inside: bool,
    since_ms: i64,
    loiter: Option<Open>,
    restricted: Option<Open>,
    overlap_since: Option<i64>,
    last_overlap_ms: i64,
    interaction: Option<Open>,
}

#[derive(Clone, Debug)]
struct TrackState {
    zones: Vec<Membership>,
    /// Per line: the side the feet were last clearly on (true = "in" side).
    lines: Vec<Option<bool>>,
    visited_shelf: bool,
    visited_checkout: bool,
    exit_flagged: bool,
    bbox: [f32; 4],
    score: f32,
}

#[derive(Clone, Debug)]
struct SweepWatch {
    track: u64,
    bbox: [f32; 4],
    interaction_ended_ms: i64,
    changed_since: Option<i64>,
}

#[derive(Clone, Debug, Default)]
struct ZoneState {
    crowd: Option<Open>,
    below_since: Option<i64>,
    sweep: Option<SweepWatch>,
}

/// The rules of one camera.
#[derive(Debug)]
pub struct CameraRules {
    spec: CameraSpec,
    epoch_ms: Option<i64>,
    next_incident: u64,
    tracks: HashMap<u64, TrackState>,
    zones: Vec<ZoneState>,
    after_hours: Option<Open>,
    last_seen_after_hours_ms: i64,
    tamper: Option<(Open, TamperReason)>,
    tamper_pending: Option<i64>,
    tamper_normal_since: Option<i64>,
    offline: Option<Open>,
    offline_since: Option<i64>,
}

/// Who an event is about, beyond its kind.
#[derive(Clone, Copy, Debug, Default)]
struct Subject {
    zone: Option<usize>,
    track: Option<u64>,
    bbox: Option<[f32; 4]>,
    confidence: f32,
}

impl CameraRules {
    pub fn new(spec: CameraSpec) -> Self {
        let zones = vec![ZoneState::default(); spec.zones.len()];
        Self {
            spec,
            epoch_ms: None,
            next_incident: 1,
            tracks: HashMap::new(),
            zones,
            after_hours: None,
            last_seen_after_hours_ms: 0,
            tamper: None,
            tamper_pending: None,
            tamper_normal_since: None,
            offline: None,
            offline_since: None,
        }
    }

    pub fn spec(&self) -> &CameraSpec {
        &self.spec
    }

    fn open(&mut self, now: i64) -> Open {
        // The first observation's time keeps incident ids unique across restarts of the node.
        let epoch = *self.epoch_ms.get_or_insert(now);
        let n = self.next_incident;
        self.next_incident += 1;
        Open {
            incident: format!("{}/{}/{epoch}-{n}", self.spec.node, self.spec.camera),
            started_ms: now,
            last_update_ms: now,
            peak: 0,
        }
    }

    fn record(&self, kind: EventKind, phase: Phase, o: &Open, now: i64, s: Subject, detail: Detail) -> Event {
        Event {
            incident: o.incident.clone(),
            phase,
            store: self.spec.store.clone(),
            node: self.spec.node.clone(),
            camera: self.spec.camera.clone(),
            zone: s.zone.map(|z| self.spec.zones[z].name.clone()),
            kind,
            severity: s
                .zone
                .and_then(|z| self.spec.zones[z].severity.get(&kind).copied())
                .unwrap_or_else(|| self.spec.settings.severity_of(kind)),
            started_at_ms: o.started_ms,
            at_ms: now,
            ended_at_ms: matches!(phase, Phase::End | Phase::Instant).then_some(now),
            track: s.track,
            bbox: s.bbox.map(|b| [b[0], b[1], b[2] - b[0], b[3] - b[1]]),
            confidence: s.confidence,
            model: self.spec.model.clone(),
            evidence: None,
            detail,
        }
    }

    fn instant(&mut self, kind: EventKind, now: i64, s: Subject, detail: Detail, out: &mut Vec<Event>) {
        let o = self.open(now);
        out.push(self.record(kind, Phase::Instant, &o, now, s, detail));
    }

    /// Processes one frame; appends the events it causes to `out`.
    pub fn observe(&mut self, obs: &Observation<'_>, out: &mut Vec<Event>) {
        let first = out.len();
        self.evaluate(obs, out);
        // Switched-off rules still keep their state (so switching one on mid-incident is consistent),
        // they just say nothing.
        self.drop_disabled(out, first);
    }

    /// Ends every open incident (the stream ended or the node is stopping): people leave the view,
    /// crowds and outages are over as far as this camera can tell.
    pub fn finish(&mut self, now: i64, out: &mut Vec<Event>) {
        let first = out.len();
        let mut ids: Vec<u64> = self.tracks.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.end_track(id, now, out);
        }
        for zi in 0..self.zones.len() {
            self.zones[zi].sweep = None;
            if let Some(o) = self.zones[zi].crowd.take() {
                let detail = Detail {
                    people: Some(o.peak),
                    ..Detail::default()
                };
                let subject = Subject {
                    zone: Some(zi),
                    ..Subject::default()
                };
                out.push(self.record(EventKind::Crowding, Phase::End, &o, now, subject, detail));
            }
        }
        if let Some(o) = self.after_hours.take() {
            let detail = Detail {
                people: Some(o.peak),
                ..Detail::default()
            };
            out.push(self.record(EventKind::AfterHours, Phase::End, &o, now, Subject::default(), detail));
        }
        if let Some((o, reason)) = self.tamper.take() {
            let detail = Detail {
                reason: Some(reason),
                ..Detail::default()
            };
            out.push(self.record(EventKind::CameraTamper, Phase::End, &o, now, Subject::default(), detail));
        }
        if let Some(o) = self.offline.take() {
            out.push(self.record(
                EventKind::CameraOffline,
                Phase::End,
                &o,
                now,
                Subject::default(),
                Detail::default(),
            ));
        }
        self.drop_disabled(out, first);
    }

    /// Removes, from the events appended since `first`, those of switched-off rules.
    fn drop_disabled(&self, out: &mut Vec<Event>, first: usize) {
        let mut i = first;
        while i < out.len() {
            if self.enabled(&out[i]) {
                i += 1;
            } else {
                out.remove(i);
            }
        }
    }

    fn enabled(&self, e: &Event) -> bool {
        if self.spec.disabled.contains(&e.kind) {
            return false;
        }
        let zone = e
            .zone
            .as_deref()
            .and_then(|name| self.spec.zones.iter().find(|z| z.name == name));
        !zone.is_some_and(|z| z.disabled.contains(&e.kind))
    }

    fn evaluate(&mut self, obs: &Observation<'_>, out: &mut Vec<Event>) {
        let now = obs.now_ms;
        self.offline_rule(obs.online, now, out);
        if !obs.online {
            return;
        }
        if let Some(px) = obs.pixels {
            self.tamper_rule(px, now, out);
        }
        let (w, h) = (obs.width.max(1) as f32, obs.height.max(1) as f32);
        for p in obs.people.iter().filter(|p| p.visible) {
            let b = p.bbox;
            let nb = [b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h];
            self.person(p.id, nb, p.score, now, out);
        }
        for p in obs.ended {
            self.end_track(p.id, now, out);
        }
        self.crowding_rule(obs.people, now, out);
        self.after_hours_rule(obs.people, now, out);
        if let Some(px) = obs.pixels {
            self.sweep_rule(obs.people, w, h, px, now, out);
        }
    }

    fn person(&mut self, id: u64, nb: [f32; 4], score: f32, now: i64, out: &mut Vec<Event>) {
        let nz = self.spec.zones.len();
        let nl = self.spec.lines.len();
        let mut st = self.tracks.remove(&id).unwrap_or_else(|| TrackState {
            zones: vec![Membership::default(); nz],
            lines: vec![None; nl],
            visited_shelf: false,
            visited_checkout: false,
            exit_flagged: false,
            bbox: nb,
            score,
        });
        st.bbox = nb;
        st.score = score;
        let feet = [(nb[0] + nb[2]) / 2.0, nb[3]];
        let hyst = self.spec.settings.hysteresis;
        let subject = |zone: usize| Subject {
            zone: Some(zone),
            track: Some(id),
            bbox: Some(nb),
            confidence: score,
        };

        for zi in 0..nz {
            let z = &self.spec.zones[zi];
            if score < z.min_confidence {
                continue;
            }
            let (kind, loiter_secs, interaction_secs) = (z.kind, z.loiter_secs, z.interaction_secs);
            let d = z.polygon.signed_distance(feet);
            let overlap = if kind == ZoneKind::Shelf {
                z.polygon.overlap_fraction(nb)
            } else {
                0.0
            };
            let was_inside = st.zones[zi].inside;
            if !was_inside && d >= hyst {
                st.zones[zi].inside = true;
                st.zones[zi].since_ms = now;
                match kind {
                    ZoneKind::Shelf => st.visited_shelf = true,
                    ZoneKind::Checkout => st.visited_checkout = true,
                    ZoneKind::Exit if st.visited_shelf && !st.visited_checkout && !st.exit_flagged => {
                        st.exit_flagged = true;
                        self.instant(EventKind::ExitWithoutCheckout, now, subject(zi), Detail::default(), out);
                    }
                    ZoneKind::Restricted => {
                        let o = self.open(now);
                        out.push(self.record(
                            EventKind::RestrictedEntry,
                            Phase::Start,
                            &o,
                            now,
                            subject(zi),
                            Detail::default(),
                        ));
                        st.zones[zi].restricted = Some(o);
                    }
                    _ => {}
                }
            } else if was_inside && d <= -hyst {
                st.zones[zi].inside = false;
                self.leave_zone(&mut st.zones[zi], zi, id, nb, score, now, out);
            }

            // Loitering: a long stay in the zone.
            if let (true, Some(limit)) = (st.zones[zi].inside, loiter_secs) {
                let since = st.zones[zi].since_ms;
                let dwell = (now - since) as f64 / 1000.0;
                let detail = Detail {
                    dwell_secs: Some(dwell as f32),
                    ..Detail::default()
                };
                match st.zones[zi].loiter.take() {
                    None if dwell >= limit => {
                        let mut o = self.open(now);
                        o.started_ms = since;
                        out.push(self.record(EventKind::Loitering, Phase::Start, &o, now, subject(zi), detail));
                        st.zones[zi].loiter = Some(o);
                    }
                    Some(mut o) => {
                        if self.due(&o, now) {
                            o.last_update_ms = now;
                            out.push(self.record(EventKind::Loitering, Phase::Update, &o, now, subject(zi), detail));
                        }
                        st.zones[zi].loiter = Some(o);
                    }
                    None => {}
                }
            }

            // Shelf interaction: the box reaches into the shelf for a while.
            if kind == ZoneKind::Shelf {
                let s = &self.spec.settings;
                let m = &mut st.zones[zi];
                if overlap >= s.shelf_min_overlap {
                    let since = *m.overlap_since.get_or_insert(now);
                    m.last_overlap_ms = now;
                    st.visited_shelf = true;
                    if m.interaction.is_none() && (now - since) as f64 >= interaction_secs * 1000.0 {
                        let mut o = self.open(now);
                        o.started_ms = since;
                        out.push(self.record(
                            EventKind::ShelfInteraction,
                            Phase::Start,
                            &o,
                            now,
                            subject(zi),
                            Detail::default(),
                        ));
                        st.zones[zi].interaction = Some(o);
                    }
                } else if m.overlap_since.is_some() && (now - m.last_overlap_ms) as f64 > s.grace_secs * 1000.0 {
                    self.end_interaction(&mut st.zones[zi], zi, id, nb, score, now, out);
                }
            }
        }

        // Counting lines, with the same hysteresis as zone edges.
        for li in 0..nl {
            let l = &self.spec.lines[li].line;
            let dist = l.side_distance(feet);
            let side = if dist >= hyst {
                Some(true)
            } else if dist <= -hyst {
                Some(false)
            } else {
                None
            };
            if let Some(s) = side {
                if st.lines[li].is_some_and(|prev| prev != s) && l.spans(feet) {
                    let detail = Detail {
                        line: Some(self.spec.lines[li].name.clone()),
                        direction: Some(if s { Direction::In } else { Direction::Out }),
                        ..Detail::default()
                    };
                    let subj = Subject {
                        zone: None,
                        track: Some(id),
                        bbox: Some(nb),
                        confidence: score,
                    };
                    self.instant(EventKind::LineCrossing, now, subj, detail, out);
                }
                st.lines[li] = Some(s);
            }
        }
        self.tracks.insert(id, st);
    }

    fn due(&self, o: &Open, now: i64) -> bool {
        (now - o.last_update_ms) as f64 >= self.spec.settings.update_secs * 1000.0
    }

    #[allow(clippy::too_many_arguments)]
    fn leave_zone(
        &mut self,
        m: &mut Membership,
        zi: usize,
        id: u64,
        nb: [f32; 4],
        score: f32,
        now: i64,
        out: &mut Vec<Event>,
    ) {
        let subject = Subject {
            zone: Some(zi),
            track: Some(id),
            bbox: Some(nb),
            confidence: score,
        };
        if let Some(o) = m.loiter.take() {
            let detail = Detail {
                dwell_secs: Some((now - m.since_ms) as f32 / 1000.0),
                ..Detail::default()
            };
            out.push(self.record(EventKind::Loitering, Phase::End, &o, now, subject, detail));
        }
        if let Some(o) = m.restricted.take() {
            out.push(self.record(
                EventKind::RestrictedEntry,
                Phase::End,
                &o,
                now,
                subject,
                Detail::default(),
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn end_interaction(
        &mut self,
        m: &mut Membership,
        zi: usize,
        id: u64,
        nb: [f32; 4],
        score: f32,
        now: i64,
        out: &mut Vec<Event>,
    ) {
        m.overlap_since = None;
        if let Some(o) = m.interaction.take() {
            let subject = Subject {
                zone: Some(zi),
                track: Some(id),
                bbox: Some(nb),
                confidence: score,
            };
            let detail = Detail {
                dwell_secs: Some((now - o.started_ms) as f32 / 1000.0),
                ..Detail::default()
            };
            out.push(self.record(EventKind::ShelfInteraction, Phase::End, &o, now, subject, detail));
            // Watch the shelf for what the person may have taken.
            self.zones[zi].sweep = Some(SweepWatch {
                track: id,
                bbox: nb,
                interaction_ended_ms: now,
                changed_since: None,
            });
        }
    }

    fn end_track(&mut self, id: u64, now: i64, out: &mut Vec<Event>) {
        let Some(mut st) = self.tracks.remove(&id) else {
            return;
        };
        for zi in 0..st.zones.len() {
            let mut m = std::mem::take(&mut st.zones[zi]);
            self.leave_zone(&mut m, zi, id, st.bbox, st.score, now, out);
            self.end_interaction(&mut m, zi, id, st.bbox, st.score, now, out);
        }
    }

    fn crowding_rule(&mut self, people: &[TrackedPerson], now: i64, out: &mut Vec<Event>) {
        for zi in 0..self.spec.zones.len() {
            let Some(min) = self.spec.zones[zi].crowd_min else {
                continue;
            };
            let count = people
                .iter()
                .filter(|p| self.tracks.get(&p.id).is_some_and(|t| t.zones[zi].inside))
                .count() as u32;
            let subject = Subject {
                zone: Some(zi),
                ..Subject::default()
            };
            let detail = Detail {
                people: Some(count),
                ..Detail::default()
            };
            if count >= min {
                self.zones[zi].below_since = None;
                match self.zones[zi].crowd.take() {
                    None => {
                        let mut o = self.open(now);
                        o.peak = count;
                        out.push(self.record(EventKind::Crowding, Phase::Start, &o, now, subject, detail));
                        self.zones[zi].crowd = Some(o);
                    }
                    Some(mut o) => {
                        if count > o.peak || self.due(&o, now) {
                            o.peak = o.peak.max(count);
                            o.last_update_ms = now;
                            out.push(self.record(EventKind::Crowding, Phase::Update, &o, now, subject, detail));
                        }
                        self.zones[zi].crowd = Some(o);
                    }
                }
            } else if self.zones[zi].crowd.is_some() {
                let since = *self.zones[zi].below_since.get_or_insert(now);
                if (now - since) as f64 >= self.spec.settings.crowding_clear_secs * 1000.0 {
                    if let Some(o) = self.zones[zi].crowd.take() {
                        let detail = Detail {
                            people: Some(o.peak),
                            ..Detail::default()
                        };
                        out.push(self.record(EventKind::Crowding, Phase::End, &o, now, subject, detail));
                    }
                    self.zones[zi].below_since = None;
                }
            }
        }
    }

    fn after_hours_rule(&mut self, people: &[TrackedPerson], now: i64, out: &mut Vec<Event>) {
        let seen = people.iter().filter(|p| p.visible).count() as u32;
        let open_now = self.spec.schedule.is_open(now);
        let best = people
            .iter()
            .filter(|p| p.visible)
            .map(|p| p.score)
            .fold(0.0f32, f32::max);
        let subject = Subject {
            confidence: best,
            ..Subject::default()
        };
        if seen > 0 && !open_now {
            self.last_seen_after_hours_ms = now;
            let detail = Detail {
                people: Some(seen),
                ..Detail::default()
            };
            match self.after_hours.take() {
                None => {
                    let mut o = self.open(now);
                    o.peak = seen;
                    out.push(self.record(EventKind::AfterHours, Phase::Start, &o, now, subject, detail));
                    self.after_hours = Some(o);
                }
                Some(mut o) => {
                    if seen > o.peak || self.due(&o, now) {
                        o.peak = o.peak.max(seen);
                        o.last_update_ms = now;
                        out.push(self.record(EventKind::AfterHours, Phase::Update, &o, now, subject, detail));
                    }
                    self.after_hours = Some(o);
                }
            }
        } else if self.after_hours.is_some() {
            let quiet =
                (now - self.last_seen_after_hours_ms) as f64 >= self.spec.settings.after_hours_clear_secs * 1000.0;
            if quiet || open_now {
                if let Some(o) = self.after_hours.take() {
                    let detail = Detail {
                        people: Some(o.peak),
                        ..Detail::default()
                    };
                    out.push(self.record(EventKind::AfterHours, Phase::End, &o, now, subject, detail));
                }
            }
        }
    }

    fn classify(&self, px: &PixelMeasures) -> Option<TamperReason> {
        let s = &self.spec.settings;
        if px.brightness < s.tamper_dark_brightness || px.contrast < s.tamper_min_contrast {
            Some(TamperReason::Covered)
        } else if px.sharpness_ratio < s.tamper_blur_ratio {
            Some(TamperReason::Blurred)
        } else if px.similarity < s.tamper_min_similarity {
            Some(TamperReason::Moved)
        } else {
            None
        }
    }

    fn tamper_rule(&mut self, px: &PixelMeasures, now: i64, out: &mut Vec<Event>) {
        let hold = self.spec.settings.tamper_secs * 1000.0;
        match self.classify(px) {
            Some(reason) => {
                self.tamper_normal_since = None;
                let since = *self.tamper_pending.get_or_insert(now);
                if self.tamper.is_none() && (now - since) as f64 >= hold {
                    let mut o = self.open(now);
                    o.started_ms = since;
                    let detail = Detail {
                        reason: Some(reason),
                        ..Detail::default()
                    };
                    out.push(self.record(
                        EventKind::CameraTamper,
                        Phase::Start,
                        &o,
                        now,
                        Subject::default(),
                        detail,
                    ));
                    self.tamper = Some((o, reason));
                }
            }
            None => {
                self.tamper_pending = None;
                if self.tamper.is_some() {
                    let since = *self.tamper_normal_since.get_or_insert(now);
                    if (now - since) as f64 >= hold {
                        if let Some((o, reason)) = self.tamper.take() {
                            let detail = Detail {
                                reason: Some(reason),
                                ..Detail::default()
                            };
                            out.push(self.record(
                                EventKind::CameraTamper,
                                Phase::End,
                                &o,
                                now,
                                Subject::default(),
                                detail,
                            ));
                        }
                        self.tamper_normal_since = None;
                    }
                }
            }
        }
    }

    fn offline_rule(&mut self, online: bool, now: i64, out: &mut Vec<Event>) {
        if online {
            self.offline_since = None;
            if let Some(o) = self.offline.take() {
                out.push(self.record(
                    EventKind::CameraOffline,
                    Phase::End,
                    &o,
                    now,
                    Subject::default(),
                    Detail::default(),
                ));
            }
            return;
        }
        let since = *self.offline_since.get_or_insert(now);
        if self.offline.is_none() && (now - since) as f64 >= self.spec.settings.offline_secs * 1000.0 {
            let mut o = self.open(now);
            o.started_ms = since;
            out.push(self.record(
                EventKind::CameraOffline,
                Phase::Start,
                &o,
                now,
                Subject::default(),
                Detail::default(),
            ));
            self.offline = Some(o);
        }
    }

    fn sweep_rule(
        &mut self,
        people: &[TrackedPerson],
        w: f32,
        h: f32,
        px: &PixelMeasures,
        now: i64,
        out: &mut Vec<Event>,
    ) {
        let s = self.spec.settings.clone();
        for zi in 0..self.spec.zones.len() {
            let Some(mut watch) = self.zones[zi].sweep.take() else {
                continue;
            };
            let zb = self.spec.zones[zi].polygon.bounds();
            // Anyone over the shelf hides it: the measure means nothing until they are gone.
            let occupied = people.iter().filter(|p| p.visible).any(|p| {
                let b = p.bbox;
                b.x2 / w > zb[0] && b.x1 / w < zb[2] && b.y2 / h > zb[1] && b.y1 / h < zb[3]
            });
            let change = px.zone_change.get(zi).copied().flatten().unwrap_or(0.0);
            let since_end = (now - watch.interaction_ended_ms) as f64 / 1000.0;
            if occupied || change < s.sweep_min_changed {
                watch.changed_since = None;
            } else {
                let since = *watch.changed_since.get_or_insert(now);
                if (now - since) as f64 >= s.sweep_hold_secs * 1000.0 {
                    let subject = Subject {
                        zone: Some(zi),
                        track: Some(watch.track),
                        bbox: Some(watch.bbox),
                        confidence: 1.0,
                    };
                    let detail = Detail {
                        changed_fraction: Some(change),
                        ..Detail::default()
                    };
                    self.instant(EventKind::ShelfSweep, now, subject, detail, out);
                    continue;
                }
            }
            let started_in_window = watch
                .changed_since
                .is_some_and(|c| ((c - watch.interaction_ended_ms) as f64) <= s.sweep_window_secs * 1000.0);
            if since_end <= s.sweep_window_secs || started_in_window {
                self.zones[zi].sweep = Some(watch);
            }
        }
    }
}
