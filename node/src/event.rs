//! Loss-prevention events: what the rules produce, what the mesh will replicate and HQ will summarise.
//!
//! An event is metadata only. No field can hold pixels: names are short validated strings, boxes are four
//! normalised numbers, details are typed numbers and enums. `tests` below keep it that way.

use serde::{Deserialize, Serialize};

use crate::zone::Direction;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Loitering,
    ShelfInteraction,
    ShelfSweep,
    ExitWithoutCheckout,
    AfterHours,
    RestrictedEntry,
    Crowding,
    CameraTamper,
    CameraOffline,
    LineCrossing,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Loitering,
        EventKind::ShelfInteraction,
        EventKind::ShelfSweep,
        EventKind::ExitWithoutCheckout,
        EventKind::AfterHours,
        EventKind::RestrictedEntry,
        EventKind::Crowding,
        EventKind::CameraTamper,
        EventKind::CameraOffline,
        EventKind::LineCrossing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Loitering => "loitering",
            EventKind::ShelfInteraction => "shelf_interaction",
            EventKind::ShelfSweep => "shelf_sweep",
            EventKind::ExitWithoutCheckout => "exit_without_checkout",
            EventKind::AfterHours => "after_hours",
            EventKind::RestrictedEntry => "restricted_entry",
            EventKind::Crowding => "crowding",
            EventKind::CameraTamper => "camera_tamper",
            EventKind::CameraOffline => "camera_offline",
            EventKind::LineCrossing => "line_crossing",
        }
    }

    /// The severity a kind has unless the configuration says otherwise.
    pub fn default_severity(self) -> Severity {
        match self {
            EventKind::LineCrossing | EventKind::ShelfInteraction => Severity::Info,
            EventKind::Loitering => Severity::Low,
            EventKind::RestrictedEntry | EventKind::Crowding | EventKind::CameraOffline => Severity::Medium,
            EventKind::ShelfSweep
            | EventKind::ExitWithoutCheckout
            | EventKind::AfterHours
            | EventKind::CameraTamper => Severity::High,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// Where an event is in its life. An incident is one `Start`, any number of `Update`s and one `End`;
/// something that happens at an instant (a line crossing, a sweep) is a single `Instant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    Update,
    End,
    Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TamperReason {
    /// Black or uniformly covered view.
    Covered,
    /// Out of focus or smeared.
    Blurred,
    /// The camera points elsewhere than it used to.
    Moved,
}

/// Kind-specific figures; each is present only for the kinds it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_secs: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<TamperReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_fraction: Option<f32>,
}

/// One loss-prevention event record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Ties the phases of one incident together: `node/camera/counter`.
    pub incident: String,
    pub phase: Phase,
    pub store: String,
    pub node: String,
    pub camera: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub kind: EventKind,
    pub severity: Severity,
    /// Unix milliseconds (UTC) when the incident started.
    pub started_at_ms: i64,
    /// Unix milliseconds of this record (equal to `started_at_ms` for `Start` and `Instant`).
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    /// The camera-local track id: opaque, meaningless outside this camera and this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<u64>,
    /// x, y, width, height as fractions of the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f32; 4]>,
    pub confidence: f32,
    pub model: String,
    /// Evidence of this incident (a still and a short clip) is kept on its camera's node: only that
    /// it exists and where, never a byte of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceRef>,
    #[serde(default)]
    pub detail: Detail,
}

/// Where an incident's evidence is kept: the node that owns the camera, and the evidence's id there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRef {
    pub node: String,
    pub id: EvidenceId,
}

/// An evidence id: 32 lowercase hex digits (128 random bits), so it names a file safely and says
/// nothing about the incident. Anything else is refused when read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EvidenceId(String);

impl EvidenceId {
    pub const LEN: usize = 32;

    pub fn random() -> EvidenceId {
        use rand::RngCore;
        let mut b = [0u8; Self::LEN / 2];
        rand::thread_rng().fill_bytes(&mut b);
        EvidenceId(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    pub fn parse(s: &str) -> Option<EvidenceId> {
        (s.len() == Self::LEN && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
            .then(|| EvidenceId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EvidenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EvidenceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EvidenceId::parse(&s).ok_or_else(|| serde::de::Error::custom("an evidence id is 32 lowercase hex digits"))
    }
}

impl Event {
    /// A stand-in shelf interaction for load and crash tests (`lpmesh run --synthetic`): camera
    /// `synthetic`, an incident id unique to this run, counted from 1.
    pub fn synthetic(store: &str, node: &str, run: i64, n: u64, now_ms: i64) -> Event {
        Event {
            incident: format!("{node}/synthetic/{run}-{n}"),
            phase: Phase::Instant,
            store: store.to_string(),
            node: node.to_string(),
            camera: "synthetic".into(),
            zone: Some("shelf".into()),
            kind: EventKind::ShelfInteraction,
            severity: EventKind::ShelfInteraction.default_severity(),
            started_at_ms: now_ms,
            at_ms: now_ms,
            ended_at_ms: None,
            track: Some(n),
            bbox: None,
            confidence: 1.0,
            model: "synthetic".into(),
            evidence: None,
            detail: Detail::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            incident: "n1/cam/7".into(),
            phase: Phase::Start,
            store: "s".into(),
            node: "n1".into(),
            camera: "cam".into(),
            zone: Some("shelf".into()),
            kind: EventKind::Loitering,
            severity: Severity::Low,
            started_at_ms: 1,
            at_ms: 1,
            ended_at_ms: None,
            track: Some(3),
            bbox: Some([0.1, 0.2, 0.3, 0.4]),
            confidence: 0.8,
            model: "nanodet-m-416".into(),
            evidence: None,
            detail: Detail {
                dwell_secs: Some(61.0),
                ..Detail::default()
            },
        }
    }

    #[test]
    fn round_trips_as_json_with_snake_case_kinds() {
        let e = sample();
        let js = serde_json::to_string(&e).unwrap();
        assert!(js.contains("\"kind\":\"loitering\""), "{js}");
        assert_eq!(serde_json::from_str::<Event>(&js).unwrap(), e);
        for k in EventKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
    }

    #[test]
    fn there_is_no_field_for_pixels() {
        // Any attempt to smuggle an image in, under any name, is rejected by the schema.
        let mut v = serde_json::to_value(sample()).unwrap();
        v["image"] = serde_json::json!("iVBORw0KGgo...");
        assert!(serde_json::from_value::<Event>(v).is_err());
        let mut v = serde_json::to_value(sample()).unwrap();
        v["detail"]["thumbnail"] = serde_json::json!([1, 2, 3]);
        assert!(serde_json::from_value::<Event>(v).is_err());
        // The only numeric arrays are the four-number box.
        let v = serde_json::to_value(sample()).unwrap();
        let arrays: Vec<&String> = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, x)| x.is_array())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(arrays, vec!["bbox"]);
    }

    #[test]
    fn evidence_is_a_reference_never_bytes() {
        let mut e = sample();
        let id = EvidenceId::random();
        e.evidence = Some(EvidenceRef {
            node: "n1".into(),
            id: id.clone(),
        });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["evidence"], serde_json::json!({"node": "n1", "id": id.as_str()}));
        assert_eq!(serde_json::from_value::<Event>(v.clone()).unwrap(), e);
        // An id that is not 32 hex digits (a path, a blob) and any extra field are refused.
        for bad in [
            "../../etc/passwd",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &"0".repeat(33),
            &"/9j/4AAQ".repeat(4),
        ] {
            let mut w = v.clone();
            w["evidence"]["id"] = serde_json::json!(bad);
            assert!(serde_json::from_value::<Event>(w).is_err(), "{bad}");
        }
        let mut w = v.clone();
        w["evidence"]["still"] = serde_json::json!("/9j/4AAQSkZJRg");
        assert!(serde_json::from_value::<Event>(w).is_err());
    }
}
