//! A camera's configuration (zones, lines, rule overrides, the store's schedule) compiled for the
//! rules engine.

use std::collections::HashMap;

use crate::config::*;
use crate::event::EventKind;
use crate::zone::{CountingLine, Polygon};

use super::{CameraSpec, LineSpec, ZoneKind, ZoneSpec};

/// Why a camera's configuration does not compile: only a configuration that skipped its checks.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The schedule's problems, each with its field.
    #[error("{}", .0.iter().map(|(a, m)| format!("{a}: {m}")).collect::<Vec<_>>().join("; "))]
    Schedule(Vec<(FieldPath, String)>),
    /// The zone's name.
    #[error("zone {0:?} has fewer than 3 points")]
    Polygon(String),
}

impl NodeConfig {
    /// Compiles a (validated) camera's zones, lines and rule overrides for the rules engine.
    pub fn camera_spec(&self, cam: &CameraConfig, model: &str) -> Result<CameraSpec, SpecError> {
        let schedule = self.schedule.compile().map_err(SpecError::Schedule)?;
        let threshold = cam.score_threshold.unwrap_or(self.detector.score_threshold);
        let applies = |o: &RuleOverride, kind: EventKind, zone: Option<&str>| {
            o.kind == kind && (o.zone.is_none() || o.zone.as_deref() == zone)
        };
        // Later overrides win; a zone-specific one is listed after a camera-wide one by convention,
        // but specificity decides regardless of order.
        let pick = |kind: EventKind, zone: Option<&str>| -> Vec<&RuleOverride> {
            let mut v: Vec<&RuleOverride> = cam.rules.iter().filter(|o| applies(o, kind, zone)).collect();
            v.sort_by_key(|o| o.zone.is_some());
            v
        };
        let mut zones = Vec::new();
        for z in &cam.zones {
            let polygon = Polygon::new(z.polygon.iter().map(|p| [p[0], p[1]]).collect())
                .ok_or_else(|| SpecError::Polygon(z.name.clone()))?;
            let mut spec = ZoneSpec {
                name: z.name.clone(),
                kind: z.kind,
                polygon,
                min_confidence: z.min_confidence.unwrap_or(threshold),
                loiter_secs: (z.kind != ZoneKind::Checkout).then_some(self.rules.loitering_secs),
                crowd_min: (z.kind != ZoneKind::Checkout).then_some(self.rules.crowding_min_people),
                interaction_secs: self.rules.shelf_interaction_secs,
                severity: HashMap::new(),
                disabled: Vec::new(),
            };
            for kind in ZONE_KINDS {
                for o in pick(kind, Some(&z.name)) {
                    if let Some(en) = o.enabled {
                        spec.disabled.retain(|k| *k != kind);
                        if !en {
                            spec.disabled.push(kind);
                        } else if kind == EventKind::Loitering && spec.loiter_secs.is_none() {
                            spec.loiter_secs = Some(self.rules.loitering_secs);
                        } else if kind == EventKind::Crowding && spec.crowd_min.is_none() {
                            spec.crowd_min = Some(self.rules.crowding_min_people);
                        }
                    }
                    if let Some(sev) = o.severity {
                        spec.severity.insert(kind, sev);
                    }
                    match kind {
                        EventKind::Loitering if o.secs.is_some() => spec.loiter_secs = o.secs,
                        EventKind::ShelfInteraction => {
                            if let Some(secs) = o.secs {
                                spec.interaction_secs = secs;
                            }
                        }
                        EventKind::Crowding if o.people.is_some() => spec.crowd_min = o.people,
                        _ => {}
                    }
                }
            }
            zones.push(spec);
        }
        let lines = cam
            .lines
            .iter()
            .filter_map(|l| {
                CountingLine::new([l.from[0], l.from[1]], [l.to[0], l.to[1]], l.in_heading).map(|line| LineSpec {
                    name: l.name.clone(),
                    line,
                })
            })
            .collect();
        let mut settings = self.rules.clone();
        let mut disabled = Vec::new();
        for kind in EventKind::ALL {
            for o in pick(kind, None).into_iter().filter(|o| o.zone.is_none()) {
                if let Some(sev) = o.severity {
                    settings.severity.insert(kind, sev);
                }
                if o.enabled == Some(false) {
                    disabled.push(kind);
                } else if o.enabled == Some(true) {
                    disabled.retain(|k| *k != kind);
                }
            }
        }
        Ok(CameraSpec {
            store: self.store.clone(),
            node: self.node.clone(),
            camera: cam.name.clone(),
            model: model.to_string(),
            zones,
            lines,
            settings,
            schedule,
            disabled,
        })
    }
}
