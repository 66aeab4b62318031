//! Evidence of an incident: a still of the moment (the person's box drawn) and a short clip around
//! it, kept encrypted on the node that owns the camera and shown only to the store's logged-in
//! tablets, straight from that node over HTTPS. Nothing of it enters the mesh: an event carries only
//! an [`crate::event::EvidenceRef`] (this node's name and a random id).
//!
//! - [`ring`]: the bounded buffer of a camera's recent frames (JPEG, downscaled) and people's boxes.
//! - [`store`]: the encrypted files on disk, their retention and size cap (time is an input).
//! - [`token`]: short-lived grants a node signs so a tablet logged in on it can fetch evidence from
//!   the node that holds it.
//! - `clip` (vision): faces hidden, the subject's box drawn, the still as JPEG, the clip as H.264 MP4.

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, Phase, Severity};

#[cfg(feature = "vision")]
pub mod clip;
pub mod ring;
pub mod store;
pub mod token;

/// Requests for evidence this node refused (no session, a bad, expired or foreign grant, a removed
/// user), for `/metrics`.
pub static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What this node's evidence workers did (for `/metrics` and the demo's report).
#[derive(Debug, Default)]
pub struct EvidenceStats {
    pub stills: std::sync::atomic::AtomicU64,
    pub clips: std::sync::atomic::AtomicU64,
    /// Incidents whose evidence was not made: the worker was too far behind.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Evidence that failed (no frame of the moment, the encoder, the disk).
    pub failed: std::sync::atomic::AtomicU64,
    /// The most memory a clip encoder (a child process) has used, KB.
    pub encoder_peak_kb: std::sync::atomic::AtomicU64,
}

/// `[evidence]`: which incidents keep a still and a clip, and for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvidenceConfig {
    pub enabled: bool,
    /// Incidents of at least this severity keep evidence.
    pub min_severity: Severity,
    /// Only these kinds (empty: every kind a camera can show; never `camera_offline`).
    pub kinds: Vec<EventKind>,
    /// The clip starts this long before the moment and ends this long after it.
    pub before_secs: f64,
    pub after_secs: f64,
    /// Frames per second kept for clips.
    pub fps: f64,
    /// Widest frame kept (pixels): enough to see a person, small enough for a bounded buffer.
    pub max_width: u32,
    /// Evidence older than this is deleted.
    pub retention_hours: f64,
    /// Evidence beyond this much disk is deleted, oldest first.
    pub max_mb: u64,
    /// Pixelate every person's head in stills and clips.
    pub blur_faces: bool,
    /// The program that encodes clips (Debian's `ffmpeg`; without it stills are kept, clips not).
    pub ffmpeg: String,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_severity: Severity::Medium,
            kinds: Vec::new(),
            before_secs: 5.0,
            after_secs: 5.0,
            fps: 5.0,
            max_width: 640,
            retention_hours: 72.0,
            max_mb: 1024,
            blur_faces: true,
            ffmpeg: "ffmpeg".into(),
        }
    }
}

/// Longest clip side of the moment, in seconds (the ring buffer holds both sides).
pub const MAX_SIDE_SECS: f64 = 30.0;

impl EvidenceConfig {
    /// Whether `e` gets evidence: the first record of an incident (or an instant one) of a kind and
    /// severity configured, from a camera that can show it.
    pub fn wants(&self, e: &Event) -> bool {
        self.enabled
            && matches!(e.phase, Phase::Start | Phase::Instant)
            && e.kind != EventKind::CameraOffline
            && e.severity >= self.min_severity
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }

    /// Problems as (dotted field, message), for the configuration's report.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        for (field, v) in [("before_secs", self.before_secs), ("after_secs", self.after_secs)] {
            if !(0.0..=MAX_SIDE_SECS).contains(&v) {
                p.push((
                    format!("evidence.{field}"),
                    format!("must be between 0 and {MAX_SIDE_SECS}, got {v}"),
                ));
            }
        }
        if !(self.fps >= 1.0 && self.fps <= 30.0) {
            p.push((
                "evidence.fps".into(),
                format!("must be between 1 and 30, got {}", self.fps),
            ));
        }
        if !(160..=1920).contains(&self.max_width) {
            p.push((
                "evidence.max_width".into(),
                format!("must be between 160 and 1920 pixels, got {}", self.max_width),
            ));
        }
        if !(self.retention_hours > 0.0 && self.retention_hours <= 24.0 * 90.0) {
            p.push((
                "evidence.retention_hours".into(),
                format!(
                    "must be more than 0 and at most 2160 (90 days), got {}",
                    self.retention_hours
                ),
            ));
        }
        // JPEG of a busy scene: about a quarter of a byte per pixel (0.18 measured on the demo
        // footage), frames 4:3 at worst.
        let ring_mb = self.ring_secs() * self.fps * f64::from(self.max_width).powi(2) * 0.75 * 0.25 / 1e6;
        let cap_mb = ring::MAX_RING_BYTES as f64 / 1e6;
        if ring_mb > cap_mb && p.is_empty() {
            p.push((
                "evidence.fps".into(),
                format!(
                    "a clip this long at this rate and width needs about {ring_mb:.0} MB of recent frames per camera, more than the {cap_mb:.0} MB kept: lower fps, max_width, before_secs or after_secs"
                ),
            ));
        }
        if self.max_mb == 0 {
            p.push(("evidence.max_mb".into(), "must be at least 1".into()));
        }
        if self.kinds.contains(&EventKind::CameraOffline) {
            p.push(("evidence.kinds".into(), "camera_offline has no picture to keep".into()));
        }
        p
    }

    /// How long the ring buffer keeps frames: both sides of the moment and the wait for a worker
    /// busy with the incident before.
    pub fn ring_secs(&self) -> f64 {
        self.before_secs + self.after_secs + 4.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, phase: Phase, severity: Severity) -> Event {
        let mut e = Event::synthetic("s", "n", 0, 1, 0);
        e.kind = kind;
        e.phase = phase;
        e.severity = severity;
        e
    }

    #[test]
    fn medium_and_above_at_the_start_of_an_incident_by_default() {
        let c = EvidenceConfig::default();
        assert!(c.wants(&ev(EventKind::RestrictedEntry, Phase::Start, Severity::Medium)));
        assert!(c.wants(&ev(EventKind::ExitWithoutCheckout, Phase::Instant, Severity::High)));
        assert!(!c.wants(&ev(EventKind::RestrictedEntry, Phase::Update, Severity::Medium)));
        assert!(!c.wants(&ev(EventKind::RestrictedEntry, Phase::End, Severity::Medium)));
        assert!(!c.wants(&ev(EventKind::Loitering, Phase::Start, Severity::Low)));
        assert!(!c.wants(&ev(EventKind::CameraOffline, Phase::Start, Severity::Critical)));
        let only = EvidenceConfig {
            kinds: vec![EventKind::ShelfSweep],
            ..c.clone()
        };
        assert!(!only.wants(&ev(EventKind::ExitWithoutCheckout, Phase::Instant, Severity::High)));
        assert!(only.wants(&ev(EventKind::ShelfSweep, Phase::Instant, Severity::High)));
        let off = EvidenceConfig { enabled: false, ..c };
        assert!(!off.wants(&ev(EventKind::ShelfSweep, Phase::Instant, Severity::High)));
    }

    #[test]
    fn checks_name_each_bad_field() {
        let bad = EvidenceConfig {
            before_secs: -1.0,
            after_secs: f64::NAN,
            fps: 0.0,
            max_width: 20,
            retention_hours: 0.0,
            max_mb: 0,
            kinds: vec![EventKind::CameraOffline],
            ..Default::default()
        };
        let fields: Vec<String> = bad.check().into_iter().map(|(f, _)| f).collect();
        for f in [
            "evidence.before_secs",
            "evidence.after_secs",
            "evidence.fps",
            "evidence.max_width",
            "evidence.retention_hours",
            "evidence.max_mb",
            "evidence.kinds",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
        }
        assert!(EvidenceConfig::default().check().is_empty());
        // Each setting within its range, together too much to hold in a camera's ring.
        let huge = EvidenceConfig {
            fps: 30.0,
            max_width: 1920,
            before_secs: 30.0,
            after_secs: 30.0,
            ..Default::default()
        };
        let p = huge.check();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].0 == "evidence.fps" && p[0].1.contains("MB"), "{p:?}");
    }
}
