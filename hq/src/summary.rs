//! A store's summary for one period: aggregates and incident metadata, nothing else.
//!
//! The type is the privacy boundary towards HQ: there is no field that can hold an image, a per-person
//! trail or a track id. Every name is a short identifier, every list is bounded, and [`Summary::validate`]
//! (run by HQ on everything it receives) refuses anything longer. Unknown fields are refused by serde.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::vv::VersionVector;

/// Longest camera, zone, line, kind or incident name.
pub const MAX_NAME_LEN: usize = 96;
/// Most high-severity incidents listed per period (the counts always cover all of them).
pub const MAX_INCIDENTS: usize = 500;
/// Most entries of any other list or map.
pub const MAX_ENTRIES: usize = 1000;
/// Longest note an operator left on an incident that reaches HQ.
pub const MAX_NOTE_LEN: usize = 280;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub store: String,
    /// Unix milliseconds (UTC) of the period's start; periods are aligned to `period_secs`.
    pub period_start_ms: i64,
    pub period_secs: u32,
    /// The state of the store's log this summary was computed from.
    pub vv: VersionVector,
    /// People counted per counting line and direction.
    pub footfall: Vec<LineCount>,
    /// The most people seen at once in one zone, per `camera/zone`.
    pub peak_occupancy: BTreeMap<String, u32>,
    /// Incidents that started in the period (line crossings are footfall, not incidents).
    pub incidents_by_kind: BTreeMap<String, u64>,
    pub incidents_by_severity: BTreeMap<String, u64>,
    pub incidents_by_camera: BTreeMap<String, u64>,
    /// Per `camera/zone`.
    pub incidents_by_zone: BTreeMap<String, u64>,
    pub acknowledgements: AckStats,
    pub cameras: Vec<CameraUptime>,
    /// High and critical incidents of the period, metadata only.
    pub serious: Vec<Incident>,
    /// How many serious incidents there were, listed or not.
    pub serious_total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineCount {
    pub camera: String,
    pub line: String,
    #[serde(rename = "in")]
    pub entered: u64,
    #[serde(rename = "out")]
    pub left: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckStats {
    /// Incidents of the period that an operator acted on.
    pub acknowledged: u64,
    pub resolved: u64,
    pub false_alarms: u64,
    /// Seconds from an incident's start to its first acknowledgement.
    pub ack_secs_mean: Option<f64>,
    pub ack_secs_p90: Option<f64>,
    pub ack_secs_max: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraUptime {
    pub camera: String,
    /// Seconds of the period the camera was reported offline.
    pub offline_secs: f64,
    /// Share of the period the camera was delivering frames (0..1).
    pub uptime: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub incident: String,
    pub camera: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub kind: String,
    pub severity: String,
    pub started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    /// open, acknowledged, resolved or false_alarm.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("summary field {field}: {problem}")]
pub struct InvalidSummary {
    pub field: String,
    pub problem: String,
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control)
}

impl Summary {
    // Every figure came from the network: sums saturate rather than wrap (release) or panic (debug).

    pub fn period_end_ms(&self) -> i64 {
        self.period_start_ms
            .saturating_add(i64::from(self.period_secs).saturating_mul(1000))
    }

    /// Footfall in and out over all lines.
    pub fn footfall_totals(&self) -> (u64, u64) {
        self.footfall.iter().fold((0u64, 0u64), |(i, o), l| {
            (i.saturating_add(l.entered), o.saturating_add(l.left))
        })
    }

    pub fn incidents_total(&self) -> u64 {
        self.incidents_by_kind.values().fold(0u64, |t, &n| t.saturating_add(n))
    }

    /// Checks every limit; HQ refuses a summary that fails (it could be carrying something it should not).
    pub fn validate(&self) -> Result<(), InvalidSummary> {
        let bad = |field: &str, problem: &str| InvalidSummary {
            field: field.to_string(),
            problem: problem.to_string(),
        };
        if !name_ok(&self.store) {
            return Err(bad("store", "not a short name"));
        }
        if self.period_secs == 0 || self.period_secs > 86_400 {
            return Err(bad("period_secs", "must be 1..=86400"));
        }
        if self.period_start_ms.rem_euclid(i64::from(self.period_secs) * 1000) != 0 {
            return Err(bad("period_start_ms", "not aligned to the period"));
        }
        if !self.vv.is_well_formed() {
            return Err(bad("vv", "malformed version vector"));
        }
        if self.footfall.len() > MAX_ENTRIES {
            return Err(bad("footfall", "too many lines"));
        }
        for l in &self.footfall {
            if !name_ok(&l.camera) || !name_ok(&l.line) {
                return Err(bad("footfall", "camera and line must be short names"));
            }
        }
        let maps: [(&str, Vec<&String>); 5] = [
            ("peak_occupancy", self.peak_occupancy.keys().collect()),
            ("incidents_by_kind", self.incidents_by_kind.keys().collect()),
            ("incidents_by_severity", self.incidents_by_severity.keys().collect()),
            ("incidents_by_camera", self.incidents_by_camera.keys().collect()),
            ("incidents_by_zone", self.incidents_by_zone.keys().collect()),
        ];
        for (field, keys) in maps {
            if keys.len() > MAX_ENTRIES || !keys.iter().all(|k| name_ok(k)) {
                return Err(bad(field, "too many entries or a key that is not a short name"));
            }
        }
        if self.cameras.len() > MAX_ENTRIES {
            return Err(bad("cameras", "too many cameras"));
        }
        for c in &self.cameras {
            if !name_ok(&c.camera) || !(0.0..=1.0).contains(&c.uptime) || !c.offline_secs.is_finite() {
                return Err(bad("cameras", "bad camera entry"));
            }
        }
        if self.serious.len() > MAX_INCIDENTS {
            return Err(bad("serious", "too many incidents"));
        }
        for i in &self.serious {
            let names = [&i.incident, &i.camera, &i.kind, &i.severity, &i.state];
            if !names.iter().all(|n| name_ok(n)) || i.zone.as_deref().is_some_and(|z| !name_ok(z)) {
                return Err(bad("serious", "incident fields must be short names"));
            }
            if i.note.as_deref().is_some_and(|n| n.len() > MAX_NOTE_LEN) {
                return Err(bad("serious.note", "note too long"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Summary {
        Summary {
            store: "shop-1".into(),
            period_start_ms: 3_600_000 * 400_000,
            period_secs: 3600,
            vv: VersionVector([("12D3KooWabc".to_string(), 5)].into_iter().collect()),
            footfall: vec![LineCount {
                camera: "door".into(),
                line: "main".into(),
                entered: 12,
                left: 10,
            }],
            incidents_by_kind: [("loitering".to_string(), 2)].into_iter().collect(),
            serious: vec![Incident {
                incident: "n1/door/1-0".into(),
                camera: "door".into(),
                kind: "exit_without_checkout".into(),
                severity: "high".into(),
                started_at_ms: 3_600_000 * 400_000 + 5,
                state: "open".into(),
                ..Incident::default()
            }],
            serious_total: 1,
            ..Summary::default()
        }
    }

    #[test]
    fn a_sample_is_valid_and_round_trips() {
        let s = sample();
        s.validate().unwrap();
        let js = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<Summary>(&js).unwrap(), s);
    }

    #[test]
    fn there_is_no_room_for_an_image() {
        // An extra field of any name is refused.
        let mut v = serde_json::to_value(sample()).unwrap();
        v["snapshot"] = serde_json::json!("/9j/4AAQSkZJRgABAQ...");
        assert!(serde_json::from_value::<Summary>(v).is_err());
        let mut v = serde_json::to_value(sample()).unwrap();
        v["serious"][0]["thumbnail"] = serde_json::json!([255, 216, 255]);
        assert!(serde_json::from_value::<Summary>(v).is_err());
        // A string field stuffed with an encoded picture fails validation.
        let mut s = sample();
        s.serious[0].zone = Some("A".repeat(20_000));
        assert!(s.validate().is_err());
        let mut s = sample();
        s.serious[0].note = Some("A".repeat(MAX_NOTE_LEN + 1));
        assert!(s.validate().is_err());
    }

    #[test]
    fn figures_at_the_limits_saturate() {
        let mut s = sample();
        s.footfall.push(LineCount {
            camera: "door".into(),
            line: "side".into(),
            entered: u64::MAX,
            left: u64::MAX,
        });
        s.incidents_by_kind.insert("crowding".into(), u64::MAX);
        s.period_start_ms = i64::MAX - i64::MAX % 3_600_000;
        assert_eq!(s.footfall_totals(), (u64::MAX, u64::MAX));
        assert_eq!(s.incidents_total(), u64::MAX);
        assert_eq!(s.period_end_ms(), i64::MAX);
    }

    #[test]
    fn misaligned_periods_are_refused() {
        let mut s = sample();
        s.period_start_ms += 1;
        assert_eq!(s.validate().unwrap_err().field, "period_start_ms");
    }
}
