//! The loss-prevention rules: tracks, per-zone pixel measures and `now` in, events out.
//!
//! Pure: no I/O, no OpenCV, no clock of its own. One [`CameraRules`] per camera holds the state of every
//! open incident; [`CameraRules::observe`] is called once per frame (inferred or not) and appends the
//! events that frame causes. See ARCHITECTURE.md, "Rules", for each rule's definition.

mod from_config;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, Severity};
use crate::schedule::Schedule;
use crate::zone::{CountingLine, Polygon};

pub use from_config::SpecError;
pub use state::{CameraRules, Observation};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneKind {
    Shelf,
    Checkout,
    Exit,
    Entrance,
    Restricted,
    General,
}

/// A zone as the rules use it (compiled from the configuration).
#[derive(Clone, Debug)]
pub struct ZoneSpec {
    pub name: String,
    pub kind: ZoneKind,
    pub polygon: Polygon,
    /// Detections below this score do not change who is in the zone.
    pub min_confidence: f32,
    /// Dwell time after which a person loiters here; `None`: no loitering rule in this zone.
    pub loiter_secs: Option<f64>,
    /// People at once that make a crowd here; `None`: no crowding rule in this zone.
    pub crowd_min: Option<u32>,
    /// Reach time for `shelf_interaction` (shelf zones).
    pub interaction_secs: f64,
    /// Severity overrides for events in this zone.
    pub severity: HashMap<EventKind, Severity>,
    /// Rules switched off in this zone.
    pub disabled: Vec<EventKind>,
}

#[derive(Clone, Debug)]
pub struct LineSpec {
    pub name: String,
    pub line: CountingLine,
}

/// Thresholds of the rules, with the defaults a store gets without configuring them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSettings {
    /// How far (fraction of the frame) past a zone edge or line a person's feet must be to count as
    /// having crossed it: people standing on an edge do not flicker in and out.
    pub hysteresis: f32,
    /// Default dwell before `loitering`, for zones that do not set their own (checkout zones have none).
    pub loitering_secs: f64,
    /// Interval of `Update` records while an incident lasts.
    pub update_secs: f64,
    /// Minimum time a person's box overlaps a shelf zone for `shelf_interaction`.
    pub shelf_interaction_secs: f64,
    /// Fraction of the box that must be inside the shelf zone to count as touching it.
    pub shelf_min_overlap: f32,
    /// A shelf interaction or zone stay survives gaps this long (a hand briefly out of the zone).
    pub grace_secs: f64,
    /// Fraction of a shelf zone's pixels that must stay changed after the person left for `shelf_sweep`.
    pub sweep_min_changed: f32,
    /// The change must show within this time after the interaction ended...
    pub sweep_window_secs: f64,
    /// ...and hold this long, so a passing shadow is not a sweep.
    pub sweep_hold_secs: f64,
    /// Default people at once for `crowding`, for zones that do not set their own (not checkout).
    pub crowding_min_people: u32,
    /// `crowding` ends when the zone has held fewer people for this long.
    pub crowding_clear_secs: f64,
    /// `after_hours` ends when nobody was seen for this long.
    pub after_hours_clear_secs: f64,
    /// A tamper condition must last this long to raise `camera_tamper`, and be gone this long to end it.
    pub tamper_secs: f64,
    /// Mean grey level (0-255) below which the view is dark (covered or blacked out).
    pub tamper_dark_brightness: f32,
    /// Grey-level standard deviation below which the view is uniform (covered by something).
    pub tamper_min_contrast: f32,
    /// Sharpness relative to the camera's learned normal below which the view is blurred.
    pub tamper_blur_ratio: f32,
    /// Similarity to the camera's learned view below which it has moved.
    pub tamper_min_similarity: f32,
    /// No frames for this long raises `camera_offline`.
    pub offline_secs: f64,
    /// Severity per event kind, overriding the defaults.
    pub severity: HashMap<EventKind, Severity>,
}

impl Default for RuleSettings {
    fn default() -> Self {
        Self {
            hysteresis: 0.01,
            loitering_secs: 60.0,
            update_secs: 30.0,
            shelf_interaction_secs: 2.0,
            shelf_min_overlap: 0.15,
            grace_secs: 1.0,
            sweep_min_changed: 0.2,
            sweep_window_secs: 5.0,
            sweep_hold_secs: 1.0,
            crowding_min_people: 4,
            crowding_clear_secs: 3.0,
            after_hours_clear_secs: 10.0,
            tamper_secs: 3.0,
            tamper_dark_brightness: 20.0,
            tamper_min_contrast: 6.0,
            tamper_blur_ratio: 0.3,
            tamper_min_similarity: 0.6,
            offline_secs: 5.0,
            severity: HashMap::new(),
        }
    }
}

impl RuleSettings {
    pub fn severity_of(&self, kind: EventKind) -> Severity {
        self.severity
            .get(&kind)
            .copied()
            .unwrap_or_else(|| kind.default_severity())
    }
}

/// Everything the rules of one camera need to know, compiled from the configuration.
#[derive(Clone, Debug)]
pub struct CameraSpec {
    pub store: String,
    pub node: String,
    pub camera: String,
    pub model: String,
    pub zones: Vec<ZoneSpec>,
    pub lines: Vec<LineSpec>,
    pub settings: RuleSettings,
    pub schedule: Schedule,
    /// Rules switched off for the whole camera.
    pub disabled: Vec<EventKind>,
}

/// What the capture thread measured on the pixels of one frame (the pixels themselves stay there).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PixelMeasures {
    /// Mean grey level, 0-255.
    pub brightness: f32,
    /// Grey-level standard deviation.
    pub contrast: f32,
    /// Sharpness relative to the camera's learned normal (1 = as usual).
    pub sharpness_ratio: f32,
    /// Similarity to the camera's learned view (1 = same view).
    pub similarity: f32,
    /// Per zone (same order as `CameraSpec::zones`): fraction of the zone's pixels that differ from its
    /// learned background; `None` for zones that are not shelves.
    pub zone_change: Vec<Option<f32>>,
}
