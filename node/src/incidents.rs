//! The store's incidents as the tablet UI and the alert routes see them: every event and operator
//! action of the log folded into one view per incident (its latest phase, severity, state and history).
//! Pure: fed with decrypted records, whatever their order; the same records give the same view.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::action::{Action, ActionKind};
use crate::event::{Detail, Event, EventKind, Phase, Severity};

/// Incidents kept in memory (oldest dropped first); the log keeps them all.
pub const MAX_INCIDENTS: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Open,
    Acknowledged,
    Resolved,
    FalseAlarm,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Acknowledged => "acknowledged",
            State::Resolved => "resolved",
            State::FalseAlarm => "false_alarm",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryItem {
    pub at_ms: i64,
    /// `start`, `update`, `end`, `instant`, or an action (`acknowledge`, `resolve`, ...).
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub people: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub id: String,
    pub kind: EventKind,
    pub severity: Severity,
    pub node: String,
    pub camera: String,
    pub zone: Option<String>,
    pub started_at_ms: i64,
    pub last_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// Still going on (started, not ended; instants are never ongoing).
    pub ongoing: bool,
    pub state: State,
    pub acknowledged_by: Option<String>,
    pub confidence: f32,
    /// The first record's figures (line and direction of a crossing, people of a crowd, ...).
    pub detail: Detail,
    pub history: Vec<HistoryItem>,
}

#[derive(Default)]
pub struct Book {
    incidents: BTreeMap<String, Incident>,
    /// Actions for incidents not seen yet (their events are still on their way).
    orphans: BTreeMap<String, Vec<Action>>,
    seen: HashSet<(lpmesh_mesh::record::Origin, u64)>,
    /// Per origin, seqs at or below this have expired from the log: never folded in again.
    floors: BTreeMap<lpmesh_mesh::record::Origin, u64>,
}

/// What changed, for live pushes.
#[derive(Clone, Debug)]
pub enum Change {
    /// The first record of an incident (an alert may be due).
    New(String),
    Updated(String),
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Change::New(i) | Change::Updated(i) => i,
        }
    }
}

impl Book {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, key: (lpmesh_mesh::record::Origin, u64)) -> bool {
        key.1 > self.floors.get(&key.0).copied().unwrap_or(0) && self.seen.insert(key)
    }

    /// Forgets what the log no longer holds: incidents whose last record is older than `cutoff_ms`
    /// and the records below each origin's expiry floor. Returns the incidents removed.
    pub fn expire(&mut self, floors: &BTreeMap<lpmesh_mesh::record::Origin, u64>, cutoff_ms: i64) -> usize {
        for (o, f) in floors {
            let e = self.floors.entry(*o).or_insert(0);
            *e = (*e).max(*f);
        }
        let fl = &self.floors;
        self.seen.retain(|(o, s)| *s > fl.get(o).copied().unwrap_or(0));
        let before = self.incidents.len();
        self.incidents.retain(|_, i| {
            let last = i.history.iter().map(|h| h.at_ms).max().unwrap_or(i.last_at_ms);
            last.max(i.last_at_ms) >= cutoff_ms
        });
        self.orphans.retain(|_, v| {
            v.retain(|a| a.at_ms >= cutoff_ms);
            !v.is_empty()
        });
        before - self.incidents.len()
    }

    /// Folds in an event; `None` when the record was seen already.
    pub fn event(&mut self, key: (lpmesh_mesh::record::Origin, u64), e: &Event) -> Option<Change> {
        if !self.fresh(key) {
            return None;
        }
        let item = HistoryItem {
            at_ms: e.at_ms,
            what: format!("{:?}", e.phase).to_lowercase(),
            by: None,
            note: None,
            people: e.detail.people,
        };
        let ended = (e.phase == Phase::End).then(|| e.ended_at_ms.unwrap_or(e.at_ms));
        let change = match self.incidents.get_mut(&e.incident) {
            Some(i) => {
                i.severity = i.severity.max(e.severity);
                i.last_at_ms = i.last_at_ms.max(e.at_ms);
                if ended.is_some() {
                    i.ended_at_ms = ended;
                    i.ongoing = false;
                }
                insert_sorted(&mut i.history, item);
                Change::Updated(e.incident.clone())
            }
            None => {
                let mut inc = Incident {
                    id: e.incident.clone(),
                    kind: e.kind,
                    severity: e.severity,
                    node: e.node.clone(),
                    camera: e.camera.clone(),
                    zone: e.zone.clone(),
                    started_at_ms: e.started_at_ms,
                    last_at_ms: e.at_ms,
                    ended_at_ms: ended,
                    ongoing: matches!(e.phase, Phase::Start | Phase::Update),
                    state: State::Open,
                    acknowledged_by: None,
                    confidence: e.confidence,
                    detail: e.detail.clone(),
                    history: vec![item],
                };
                for a in self.orphans.remove(&e.incident).unwrap_or_default() {
                    apply(&mut inc, &a);
                }
                self.incidents.insert(e.incident.clone(), inc);
                self.bound();
                Change::New(e.incident.clone())
            }
        };
        Some(change)
    }

    pub fn action(&mut self, key: (lpmesh_mesh::record::Origin, u64), a: &Action) -> Option<Change> {
        if !self.fresh(key) {
            return None;
        }
        match self.incidents.get_mut(&a.incident) {
            Some(i) => {
                apply(i, a);
                Some(Change::Updated(a.incident.clone()))
            }
            None => {
                let list = self.orphans.entry(a.incident.clone()).or_default();
                if list.len() < 64 {
                    list.push(a.clone());
                }
                None
            }
        }
    }

    fn bound(&mut self) {
        while self.incidents.len() > MAX_INCIDENTS {
            let oldest = self
                .incidents
                .values()
                .min_by_key(|i| (i.last_at_ms, i.id.clone()))
                .map(|i| i.id.clone());
            match oldest {
                Some(id) => {
                    self.incidents.remove(&id);
                }
                None => break,
            }
        }
        while self.orphans.len() > 1024 {
            if self.orphans.pop_first().is_none() {
                break;
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Incident> {
        self.incidents.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values()
    }

    pub fn len(&self) -> usize {
        self.incidents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty()
    }
}

fn insert_sorted(h: &mut Vec<HistoryItem>, item: HistoryItem) {
    let pos = h.partition_point(|x| (x.at_ms, &x.what) <= (item.at_ms, &item.what));
    h.insert(pos, item);
}

fn apply(i: &mut Incident, a: &Action) {
    insert_sorted(
        &mut i.history,
        HistoryItem {
            at_ms: a.at_ms,
            what: a.action.as_str().to_string(),
            by: Some(a.by.clone()),
            note: a.note.clone(),
            people: None,
        },
    );
    // The latest decisive action wins, whatever order the records arrived in.
    let last = i
        .history
        .iter()
        .rev()
        .find(|h| matches!(h.what.as_str(), "acknowledge" | "resolve" | "false_alarm"));
    if let Some(h) = last {
        i.state = match h.what.as_str() {
            "resolve" => State::Resolved,
            "false_alarm" => State::FalseAlarm,
            _ => State::Acknowledged,
        };
    }
    if a.action != ActionKind::Note && i.acknowledged_by.is_none() {
        i.acknowledged_by = Some(a.by.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Detail;
    use lpmesh_mesh::record::Origin;

    fn ev(phase: Phase, at: i64) -> Event {
        Event {
            incident: "n/c/1".into(),
            phase,
            store: "s".into(),
            node: "n".into(),
            camera: "c".into(),
            zone: Some("z".into()),
            kind: EventKind::Loitering,
            severity: Severity::Low,
            started_at_ms: 100,
            at_ms: at,
            ended_at_ms: (phase == Phase::End).then_some(at),
            track: None,
            bbox: None,
            confidence: 0.7,
            model: "m".into(),
            detail: Detail::default(),
        }
    }

    fn act(kind: ActionKind, at: i64) -> Action {
        Action {
            incident: "n/c/1".into(),
            incident_started_at_ms: 100,
            action: kind,
            by: "sam".into(),
            node: "n".into(),
            at_ms: at,
            note: None,
        }
    }

    #[test]
    fn expired_incidents_leave_and_expired_records_do_not_come_back() {
        let o = Origin([1; 32]);
        let mut b = Book::new();
        b.event((o, 1), &ev(Phase::Start, 100));
        b.action((o, 2), &act(ActionKind::Acknowledge, 200));
        let mut late = ev(Phase::Start, 5000);
        late.incident = "n/c/2".into();
        b.event((o, 3), &late);
        let floors: BTreeMap<Origin, u64> = [(o, 2)].into();
        assert_eq!(b.expire(&floors, 1000), 1);
        assert!(b.get("n/c/1").is_none() && b.get("n/c/2").is_some());
        assert!(b.event((o, 1), &ev(Phase::Start, 100)).is_none(), "below the floor");
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn folds_phases_and_actions_in_any_order() {
        let o = Origin([1; 32]);
        let mut a = Book::new();
        assert!(matches!(a.event((o, 1), &ev(Phase::Start, 100)), Some(Change::New(_))));
        assert!(
            a.event((o, 1), &ev(Phase::Start, 100)).is_none(),
            "a repeat changes nothing"
        );
        a.action((o, 2), &act(ActionKind::Acknowledge, 150));
        a.event((o, 3), &ev(Phase::End, 200));
        a.action((o, 4), &act(ActionKind::Resolve, 250));
        let i = a.get("n/c/1").unwrap();
        assert_eq!((i.state, i.ongoing, i.ended_at_ms), (State::Resolved, false, Some(200)));
        assert_eq!(i.history.len(), 4);

        // Actions first (from another node), events later: same result.
        let mut b = Book::new();
        b.action((o, 4), &act(ActionKind::Resolve, 250));
        b.action((o, 2), &act(ActionKind::Acknowledge, 150));
        b.event((o, 3), &ev(Phase::End, 200));
        b.event((o, 1), &ev(Phase::Start, 100));
        assert_eq!(b.get("n/c/1").unwrap().state, State::Resolved);
        assert_eq!(b.get("n/c/1").unwrap().history, i.history);
    }
}
