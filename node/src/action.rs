//! Operator actions on incidents (acknowledge, resolve, false alarm, note): records of the mesh like
//! events, so every tablet of the store shows the same state and HQ's summaries can count them.

use serde::{Deserialize, Serialize};

/// Longest note kept with an action.
pub const MAX_NOTE_LEN: usize = 280;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Acknowledge,
    Resolve,
    FalseAlarm,
    Note,
    /// A manager took the incident's clip off its node (written by that node when it hands it over).
    EvidenceDownloaded,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Acknowledge => "acknowledge",
            ActionKind::Resolve => "resolve",
            ActionKind::FalseAlarm => "false_alarm",
            ActionKind::Note => "note",
            ActionKind::EvidenceDownloaded => "evidence_downloaded",
        }
    }

    /// Whether it says what state the incident is in (a note or a download does not).
    pub fn decides(self) -> bool {
        matches!(
            self,
            ActionKind::Acknowledge | ActionKind::Resolve | ActionKind::FalseAlarm
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub incident: String,
    /// When the incident started: the action belongs to that incident's summary period, and this
    /// says which without looking the incident up.
    pub incident_started_at_ms: i64,
    pub action: ActionKind,
    /// The user who acted.
    pub by: String,
    /// The node whose UI it was done on.
    pub node: String,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Action {
    /// The note cut to its limit on a character boundary.
    pub fn clamp_note(mut self) -> Self {
        if let Some(n) = &mut self.note {
            if n.len() > MAX_NOTE_LEN {
                let mut end = MAX_NOTE_LEN;
                while !n.is_char_boundary(end) {
                    end -= 1;
                }
                n.truncate(end);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_extra_fields() {
        let a = Action {
            incident: "n1/cam/1-0".into(),
            incident_started_at_ms: 5,
            action: ActionKind::FalseAlarm,
            by: "sam".into(),
            node: "n1".into(),
            at_ms: 9,
            note: Some("é".repeat(200)),
        }
        .clamp_note();
        assert!(a.note.as_ref().unwrap().len() <= MAX_NOTE_LEN);
        let js = serde_json::to_value(&a).unwrap();
        assert_eq!(js["action"], "false_alarm");
        assert_eq!(serde_json::from_value::<Action>(js.clone()).unwrap(), a);
        let mut bad = js;
        bad["photo"] = serde_json::json!("...");
        assert!(serde_json::from_value::<Action>(bad).is_err());
    }
}
